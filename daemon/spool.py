"""The spool on disk: layout, ignore rules, routing, claim by rename, finish without overwrite.

Everything here is synchronous file-system work; the daemon calls it through
``asyncio.to_thread`` so renames and fsyncs never stall the event loop.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")
ACCEPTED_SUFFIXES = (".csv", ".tsv", ".txt")
CLAIM_SEP = "__"
RESULT_SUFFIX = ".result.json"
ERRORS_SUFFIX = ".errors.csv"


class SpoolError(Exception):
    """The spool cannot be used (missing permission, not a directory ...)."""


def is_ignored_name(name: str) -> bool:
    """Names a user's tools use while writing: hidden, editor backups, partial downloads."""
    lowered = name.lower()
    return name.startswith((".", "~")) or lowered.endswith(IGNORED_SUFFIXES)


def has_accepted_suffix(name: str) -> bool:
    return name.lower().endswith(ACCEPTED_SUFFIXES)


def new_claim_id() -> str:
    """Sortable by claim time, unique across nodes sharing a spool."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Claimed:
    claim_id: str
    rel: PurePosixPath      # path below inbox/ as dropped, e.g. contact/a.csv
    path: Path              # where it lies now, below processing/<node>/


class Spool:
    def __init__(self, root: Path, node_id: str) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.processing = root / "processing" / node_id
        self.done = root / "done"
        self.failed = root / "failed"

    def ensure_layout(self) -> None:
        for folder in (self.inbox, self.processing, self.done, self.failed):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SpoolError(f"cannot create {folder}: {exc.strerror}") from exc
            if not os.access(folder, os.W_OK | os.X_OK):
                raise SpoolError(f"cannot write to {folder}: permission denied")

    def rel_to_inbox(self, path: Path) -> PurePosixPath:
        return PurePosixPath(path.relative_to(self.inbox).as_posix())

    def iter_inbox(self) -> Iterator[Path]:
        """Files below inbox/, lazily, skipping ignored names and hidden folders."""
        stack = [self.inbox]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if is_ignored_name(entry.name):
                            continue
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            yield Path(entry.path)
            except FileNotFoundError:
                continue

    def claim(self, path: Path) -> Claimed | None:
        """Move *path* into processing/<node>/ atomically; None if another node won it."""
        rel = self.rel_to_inbox(path)
        claim_id = new_claim_id()
        target = self.processing / rel.parent / f"{claim_id}{CLAIM_SEP}{rel.name}"
        for _ in range(5):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(path, target)
                return Claimed(claim_id, rel, target)
            except (FileNotFoundError, FileExistsError):
                # Gone: another node claimed it. Or our target folder was being pruned
                # by a finishing file just then: try again.
                if not path.exists():
                    return None
        raise SpoolError(f"cannot claim {path}: {target.parent} keeps vanishing")

    def claimed_from_path(self, path: Path) -> Claimed | None:
        """Rebuild a claim from a name in processing/ (recovery without a ledger row)."""
        claim_id, sep, name = path.name.partition(CLAIM_SEP)
        if not sep or not name:
            return None
        rel_dir = PurePosixPath(path.parent.relative_to(self.processing).as_posix())
        return Claimed(claim_id, rel_dir / name, path)

    def list_processing(self) -> list[Path]:
        return [Path(folder) / name for folder, _dirs, files in os.walk(self.processing)
                for name in files if not is_ignored_name(name)]

    def place(self, claimed: Claimed, ok: bool) -> Path:
        """Link the claimed file under done/ or failed/ at the first free name.

        Never overwrites. Safe to repeat after a crash: a destination that already is
        this very file (same inode) is reused, so a file is never filed twice.
        """
        base = (self.done if ok else self.failed) / claimed.rel.parent
        base.mkdir(parents=True, exist_ok=True)
        stem, dot, ext = claimed.rel.name.rpartition(".")
        if not dot or not stem:
            stem, ext = claimed.rel.name, ""
        n = 0
        while True:
            name = claimed.rel.name if n == 0 else f"{stem}-{n}{'.' + ext if ext else ''}"
            candidate = base / name
            n += 1
            if candidate.exists():
                if os.path.samefile(candidate, claimed.path):
                    return candidate
                continue
            if _sidecar(candidate, RESULT_SUFFIX).exists():
                continue
            try:
                os.link(claimed.path, candidate)
                return candidate
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise
            # A filesystem without hard links: check, then rename (a small race remains).
            if not candidate.exists():
                os.rename(claimed.path, candidate)
                return candidate

    def complete(self, claimed: Claimed, dest: Path, result: dict[str, Any],
                 errors_csv: bytes | None) -> None:
        """Write the result (and errors CSV) beside *dest*, then drop the claimed name."""
        data = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
        write_atomic(_sidecar(dest, RESULT_SUFFIX), data.encode())
        if errors_csv is not None:
            write_atomic(_sidecar(dest, ERRORS_SUFFIX), errors_csv)
        claimed.path.unlink(missing_ok=True)
        _prune_empty(claimed.path.parent, self.processing)


def _sidecar(dest: Path, suffix: str) -> Path:
    return dest.with_name(dest.name + suffix)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden temporary name, fsync, then rename into place.

    The temporary name is fixed, so a write cut short by a crash leaves nothing behind
    once the restarted daemon writes the same result again.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _prune_empty(folder: Path, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
