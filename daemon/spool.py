"""The spool on disk: layout, ignore rules, routing, claim by rename, finish without overwrite.

Everything here is synchronous file-system work; the daemon calls it through
``asyncio.to_thread`` so renames and fsyncs never stall the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import secrets
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")
ACCEPTED_SUFFIXES = (".csv", ".tsv", ".txt")
CLAIM_SEP = "__"
RESULT_SUFFIX = ".result.json"
ERRORS_SUFFIX = ".errors.csv"
NAME_MAX = 255


class SpoolError(Exception):
    """The spool cannot be used (missing permission, not a directory ...)."""


class FileChanged(Exception):
    """The file changed after it was judged complete: it is still being written."""


def is_ignored_name(name: str) -> bool:
    """Names a user's tools use while writing: hidden, editor backups, partial downloads."""
    lowered = name.lower()
    return name.startswith((".", "~")) or lowered.endswith(IGNORED_SUFFIXES)


def has_accepted_suffix(name: str) -> bool:
    return name.lower().endswith(ACCEPTED_SUFFIXES)


def _claim_name(claim_id: str, name: str) -> str:
    """``<claim id>__<name>``, shortened to fit a 255-byte file name if need be."""
    full = f"{claim_id}{CLAIM_SEP}{name}"
    if len(full.encode()) <= NAME_MAX:
        return full
    stem, dot, ext = name.rpartition(".")
    keep = NAME_MAX - len(f"{claim_id}{CLAIM_SEP}{dot}{ext}".encode())
    short = (stem or name).encode()[:max(keep, 1)].decode("utf-8", "ignore")
    return f"{claim_id}{CLAIM_SEP}{short}{dot}{ext}"


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
        self._root_slash = str(root).rstrip("/") + "/"
        self.inbox = root / "inbox"
        self.processing = root / "processing" / node_id
        self.done = root / "done"
        self.failed = root / "failed"

    def ensure_layout(self, objects: Iterable[str] = ()) -> list[Path]:
        """Make the folders the daemon needs, and ``inbox/<object>/`` for each of *objects*
        with the group and mode of ``inbox/`` (so droppers rarely make folders themselves,
        with a umask that would lock the daemon out). Returns the object folders it cannot
        write to (made by someone else), which a person must fix."""
        for folder in (self.inbox, self.processing, self.done, self.failed):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SpoolError(f"cannot create {folder}: {exc.strerror}") from exc
            if not os.access(folder, os.W_OK | os.X_OK):
                raise SpoolError(f"cannot write to {folder}: permission denied")
        inbox = os.stat(self.inbox)
        locked = []
        for name in objects:
            folder = self.inbox / name
            try:
                folder.mkdir()
            except FileExistsError:
                pass
            except OSError as exc:
                raise SpoolError(f"cannot create {folder}: {exc.strerror}") from exc
            else:
                _like(folder, inbox)
            if not os.access(folder, os.W_OK | os.X_OK):
                locked.append(folder)
        return locked

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

    def claim(self, path: Path, expect: tuple[int, int] | None = None) -> Claimed | None:
        """Move *path* into processing/<node>/ atomically; None if another node won it.

        With *expect* (size, mtime_ns), a file that changed since it was judged settled
        is not claimed: :class:`FileChanged` says to wait for it to settle again.
        """
        rel = self.rel_to_inbox(path)
        if expect is not None:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return None
            if (st.st_size, st.st_mtime_ns) != expect:
                raise FileChanged(str(path))
        claim_id = new_claim_id()
        target = self.processing / rel.parent / _claim_name(claim_id, rel.name)
        for _ in range(5):
            try:
                os.rename(path, target)  # the folder is usually there: made only when not
                return Claimed(claim_id, rel, target)
            except (FileNotFoundError, FileExistsError):
                # Gone: another node claimed it. Or our target folder is missing, or was
                # being pruned by a finishing file just then: make it and try again. (An
                # NFS rename that was retransmitted reports ENOENT although it was done.)
                if target.exists():
                    return Claimed(claim_id, rel, target)
                if not path.exists():
                    return None
                target.parent.mkdir(parents=True, exist_ok=True)
        raise SpoolError(f"cannot claim {path}: {target.parent} keeps vanishing")

    def to_stored(self, path: Path) -> str:
        """A path below the spool root as kept in the ledger (the root may move)."""
        text, root = str(path), self._root_slash
        if text.startswith(root):  # the usual case, without pathlib's parsing
            return text[len(root):]
        return path.relative_to(self.root).as_posix()

    def from_stored(self, stored: str) -> Path:
        return self.root / stored  # absolute values from older ledgers stay absolute

    def claimed_from_path(self, path: Path) -> Claimed | None:
        """Rebuild a claim from a name in processing/ (recovery without a ledger row)."""
        claim_id, sep, name = path.name.partition(CLAIM_SEP)
        if not sep or not name:
            return None
        rel_dir = PurePosixPath(path.parent.relative_to(self.processing).as_posix())
        return Claimed(claim_id, rel_dir / name, path)

    def other_nodes_with_files(self) -> list[str]:
        """Nodes other than ours whose processing/ folder still holds files."""
        found = []
        for folder in self.processing.parent.iterdir():
            if folder == self.processing or not folder.is_dir():
                continue
            if any(files for _dir, _sub, files in os.walk(folder)):
                found.append(folder.name)
        return sorted(found)

    def list_processing(self) -> list[Path]:
        return [Path(folder) / name for folder, _dirs, files in os.walk(self.processing)
                for name in files if not is_ignored_name(name)]

    def choose_dest(self, claimed: Claimed, ok: bool) -> Path:
        """The first free name for the file under done/ or failed/ (a.csv, a-1.csv ...).

        A name is free when neither it nor its result file exists; a name that already
        is this very file (same inode, an earlier interrupted filing) is reused.
        """
        base = (self.done if ok else self.failed) / claimed.rel.parent
        base.mkdir(parents=True, exist_ok=True)
        for name in suffixed_names(claimed.rel.name):
            candidate = base / name
            if candidate.exists():
                if _same(candidate, claimed.path):
                    return candidate
                continue
            if not _sidecar(candidate, RESULT_SUFFIX).exists():
                return candidate
        raise AssertionError("unreachable")

    def natural_dest(self, claimed: Claimed, ok: bool) -> Path:
        """The file's own name under done/ or failed/: where it goes unless that is taken.

        Computed without touching the disk; :meth:`move_to` finds out whether it is free.
        """
        return (self.done if ok else self.failed) / claimed.rel

    def move_to(self, claimed: Claimed, dest: Path, resumed: bool = False) -> bool:
        """Put the claimed file at *dest* without overwriting; False if *dest* is taken.

        *dest* is taken when another file is there, or when another file's result is
        beside it. Repeatable: True when the file is already there. A file gone from
        processing/ is only taken to be at *dest* when *resumed*, i.e. filed there by a
        run cut short after the move; otherwise it was removed by hand (the caller
        checks). A hard link makes the no-overwrite check atomic; where links are
        refused (``fs.protected_hardlinks`` for files the daemon does not own,
        filesystems without links) it is check-then-rename.
        """
        if _sidecar(dest, RESULT_SUFFIX).exists() and not _same(dest, claimed.path):
            # Another file's result; or ours, when a restart repeats a finished filing.
            return resumed and not claimed.path.exists() and dest.exists()
        try:
            try:
                os.link(claimed.path, dest)
            except FileNotFoundError:
                if not claimed.path.exists():
                    return resumed and dest.exists()
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.link(claimed.path, dest)
            return True
        except FileExistsError:
            return _same(dest, claimed.path)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EXDEV,
                                 errno.EMLINK, errno.EOPNOTSUPP):
                raise
        if not claimed.path.exists():
            return resumed and dest.exists()
        if dest.exists():
            return _same(dest, claimed.path)
        os.rename(claimed.path, dest)
        return True

    def complete(self, claimed: Claimed, dest: Path, result: dict[str, Any],
                 errors_csv: bytes | None) -> None:
        """Write the errors CSV (if any) and then the result beside *dest*, then drop the
        claimed name. The result comes last: whoever sees it finds the errors CSV there."""
        if errors_csv is not None:
            write_atomic(_sidecar(dest, ERRORS_SUFFIX), errors_csv)
        data = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
        write_atomic(_sidecar(dest, RESULT_SUFFIX), data.encode())
        claimed.path.unlink(missing_ok=True)
        _prune_empty(claimed.path.parent, self.processing)


def suffixed_names(name: str) -> Iterator[str]:
    """``a.csv``, ``a-1.csv``, ``a-2.csv`` ...: the names tried so nothing is overwritten."""
    yield name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    for n in itertools.count(1):
        yield f"{stem}-{n}{'.' + ext if ext else ''}"


def _like(folder: Path, model: os.stat_result) -> None:
    """Give a folder we just made the group and mode of *model*, as far as we may."""
    with contextlib.suppress(OSError):  # not in that group: the group stays ours
        if os.stat(folder).st_gid != model.st_gid:
            os.chown(folder, -1, model.st_gid)
    os.chmod(folder, stat.S_IMODE(model.st_mode))


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except FileNotFoundError:
        return False


def _sidecar(dest: Path, suffix: str) -> Path:
    return dest.with_name(dest.name + suffix)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden temporary name, fsync, then rename into place.

    The temporary name is fixed, so a write cut short by a crash leaves nothing behind
    once the restarted daemon writes the same result again.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _prune_empty(folder: Path, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
