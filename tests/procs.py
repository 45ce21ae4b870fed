"""Real daemon subprocesses for tests: config on disk, logs to a file, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

SECRET_ENV = {"BULKDROP_API_USER_SECRET": "proc-user", "BULKDROP_API_ELEMENT_TOKEN": "proc-el"}


def write_config(path: Path, base_url: str, root: Path, node: str = "n1",
                 **sections: dict[str, Any]) -> Path:
    """A TOML config with fast intervals for tests; *sections* override or add keys."""
    values: dict[str, dict[str, Any]] = {
        "api": {"base_url": base_url, "request_timeout_seconds": 10},
        "spool": {"root": str(root), "node_id": node, "settle_seconds": 0.1,
                  "rescan_seconds": 1.0},
        "workers": {"uploads": 4, "max_active_jobs": 8, "poll_interval_seconds": 0.05,
                    "poll_max_interval_seconds": 0.2, "shutdown_grace_seconds": 10},
        "http": {"listen": ""},
    }
    for name, table in sections.items():
        values.setdefault(name, {}).update(table)
    lines = []
    for name, table in values.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


UNPRIVILEGED = Path(__file__).with_name("unprivileged.py")


class DaemonProc:
    """``python -m daemon run --config ...`` with stderr (JSON logs) in a file; as user
    *uid* (groups *gids*) when given, through ``tests/unprivileged.py``."""

    def __init__(self, config: Path, log_path: Path, uid: int | None = None,
                 gids: tuple[int, ...] = (), preexec: Callable[[], None] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.uid, self.gids = uid, gids
        self.preexec = preexec
        self.extra_env = env or {}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> DaemonProc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BULKDROP_")}
        env.update(SECRET_ENV)
        env.update(self.extra_env)
        command = [sys.executable, "-m", "daemon"]
        if self.uid is not None:
            gids = ",".join(str(g) for g in self.gids or (self.uid,))
            command = [sys.executable, str(UNPRIVILEGED), str(self.uid), gids]
        log = self.log_path.open("ab")  # noqa: ASYNC230 - a local file, opened once
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *command, "run", "--config", str(self.config),
                env=env, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
                preexec_fn=self.preexec)
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def peak_rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as fh:
            return int(next(line.split()[1] for line in fh if line.startswith("VmHWM:")))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        if self.running:
            self.signal(signal.SIGKILL)
            await self.wait()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "<not json>", "line": line})
        return out

    def seen(self, event: str) -> int:
        return sum(1 for e in self.events() if e.get("event") == event)


@asynccontextmanager
async def daemons() -> AsyncIterator[list[DaemonProc]]:
    """Collects started daemons and kills any still running when the test ends."""
    started: list[DaemonProc] = []
    try:
        yield started
    except BaseException:
        for d in started:  # what the daemons said, to see why
            print(f"--- last lines of {d.log_path.name} ---")
            print("\n".join(d.log_path.read_text().splitlines()[-40:]))
        raise
    finally:
        for d in started:
            await d.kill()


def recorded_job_ids(db: Path) -> dict[str, list[str]]:
    """rel_path -> every job id the ledger recorded for it (in order)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.OperationalError:
        return {}  # not made yet
    try:
        rows = conn.execute(
            "SELECT f.rel_path, e.detail FROM events e JOIN files f USING (claim_id)"
            " WHERE e.state = 'SUBMITTED' ORDER BY e.seq").fetchall()
    except sqlite3.OperationalError:
        return {}  # its tables not made yet: the daemon is starting
    finally:
        conn.close()
    out: dict[str, list[str]] = {}
    for rel, job_id in rows:
        out.setdefault(rel, []).append(job_id)
    return out
