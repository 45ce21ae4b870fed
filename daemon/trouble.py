"""What the daemon is riding out right now that is not a file's fault: a folder it cannot
read, files it cannot claim, filing or ledger writes that fail and are being retried.

Each trouble is set where it is seen and cleared where it ends; ``/readyz`` lists them
(so does ``bulkdrop status``, which asks ``/readyz``), metrics count them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# kind -> how a line about it starts, with {n} things in trouble
KINDS = {
    "unreadable_dir": "{n} folder(s) in inbox/ cannot be read",
    "unclaimable": "{n} file(s) in inbox/ cannot be claimed",
    "reading": "{n} claimed file(s) cannot be read for a reason not theirs, retrying",
    "filing": "{n} file(s) cannot be filed to done/ or failed/, retrying",
    "ledger": "the ledger cannot be written, retrying",
    "watcher": "file-system events fail, rescanning instead",
}


@dataclass
class Trouble:
    message: str
    since: float


class Troubles:
    def __init__(self) -> None:
        self._now: dict[str, dict[str, Trouble]] = {kind: {} for kind in KINDS}

    def set(self, kind: str, key: str, message: str) -> bool:
        """Note a trouble (or its latest message); True when it is new."""
        known = self._now[kind].get(key)
        if known is None:
            self._now[kind][key] = Trouble(message, time.time())
            return True
        known.message = message
        return False

    def clear(self, kind: str, key: str) -> bool:
        """The trouble is over; True when there was one."""
        return self._now[kind].pop(key, None) is not None

    def keys(self, kind: str) -> list[str]:
        return list(self._now[kind])

    def count(self, kind: str) -> int:
        return len(self._now[kind])

    def lines(self, examples: int = 3) -> list[str]:
        """One line per kind of trouble, naming a few of those in it and why."""
        out = []
        for kind, intro in KINDS.items():
            now = self._now[kind]
            if not now:
                continue
            shown = sorted(now.items(), key=lambda item: item[1].since)[:examples]
            detail = "; ".join(f"{key}: {t.message}" if key else t.message for key, t in shown)
            more = f" (and {len(now) - examples} more)" if len(now) > examples else ""
            out.append(f"{intro.format(n=len(now))}: {detail}{more}")
        return out
