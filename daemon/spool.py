"""The spool on disk: layout, ignore rules, routing, and the claim.

A claim moves whatever a name in ``inbox/`` holds into ``processing/<node>/`` with one
rename, through directory descriptors opened with ``O_NOFOLLOW`` so that no component of
the path can be a link, and then identifies what it moved from the descriptor it opened:
a regular file (its device and inode are kept, and every later read checks them), or
something that is never read (a link, a FIFO, a socket, a device, a folder named like a
file), filed as rejected.

``processing/<node>/`` is writable by this daemon only: once claimed, a file cannot be
swapped by a dropper. Everything here is synchronous file-system work, run in threads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from daemon.fileref import FileRef, kind_problem, links_problem
from daemon.folders import (
    give_back,
    keep_private,
    lexists,
    make_below,
    make_like,
    open_dirs,
    rename_at,
)

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")
CSV_SUFFIXES = (".csv", ".tsv", ".txt")
JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")
ACCEPTED_SUFFIXES = CSV_SUFFIXES + JSON_SUFFIXES
CLAIM_SEP = "__"
NAME_MAX = 255
_CLAIM_NAME = re.compile(r"^[0-9a-f]{20}__.")


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


def is_json_name(name: str) -> bool:
    """A JSON file (JSON lines or an array), by its name; any other accepted one is CSV."""
    return name.lower().endswith(JSON_SUFFIXES)


def is_claim_name(name: str) -> bool:
    """``<claim id>__<name>``: something claimed, not a folder of the route."""
    return bool(_CLAIM_NAME.match(name))


def safe_name(name: str) -> tuple[str, str | None]:
    """*name* as UTF-8 text: itself, or, when its bytes are not UTF-8, each bad byte as
    ``%XX`` (``bad\\xff.csv`` -> ``bad%FF.csv``) and the problem to report."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return name, None
    raw = os.fsencode(name)
    safe = []
    while raw:
        try:
            safe.append(raw.decode("utf-8"))
            break
        except UnicodeDecodeError as exc:
            safe.append(raw[:exc.start].decode("utf-8"))
            safe.append("".join(f"%{b:02X}" for b in raw[exc.start:exc.end]))
            raw = raw[exc.end:]
    shown = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(safe), (f"the name \"{shown}\" is not UTF-8 text, which the API and "
                           "result files need: rename the file and drop it again")


def _safe_rel(rel: PurePosixPath) -> tuple[PurePosixPath, str | None]:
    parts, problem = [], None
    for part in rel.parts:
        safe, bad = safe_name(part)
        parts.append(safe)
        problem = problem or bad
    return PurePosixPath(*parts), problem


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
    rel: PurePosixPath      # path below inbox/ as dropped (UTF-8), e.g. contact/a.csv
    path: Path              # where it lies now, below processing/<node>/
    ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the regular file claimed
    problem: str | None = None  # why it never becomes a job, whatever it holds

    @property
    def ref(self) -> FileRef:
        """How to read it: never through a link, only the inode that was claimed."""
        return FileRef(self.path, self.ident)


class Spool:
    def __init__(self, root: Path, node_id: str) -> None:
        self.root = root
        self._root_slash = str(root).rstrip("/") + "/"
        self.inbox = root / "inbox"
        self.processing = root / "processing" / node_id
        self.done = root / "done"
        self.failed = root / "failed"
        # Without fs.protected_hardlinks, a file with other links is refused at its claim.
        self.refuse_hard_links = False

    def ensure_layout(self, folders: Iterable[str] = ()) -> list[tuple[Path, str]]:
        """Make the folders the daemon needs, and each of *folders* below inbox/
        (``<object>``, ``<instance>/<object>``) with the group and mode of ``inbox/`` (so
        droppers rarely make folders themselves, with a umask that would lock the daemon
        out). Returns those it cannot make or write to, each with why (made by someone
        else, a link or a file in the way), which a person must fix."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            root = os.stat(self.root)
        except OSError as exc:
            raise SpoolError(f"cannot create {self.root}: {exc.strerror}") from exc
        for folder in (self.inbox, self.processing.parent, self.processing, self.done,
                       self.failed):
            try:  # the spool's group and mode, as people made the root
                make_like(folder, root)
            except OSError as exc:
                raise SpoolError(f"cannot create {folder}: {exc.strerror}") from exc
            if folder.is_symlink():
                raise SpoolError(f"{folder} is a symbolic link: bulkdrop follows no links "
                                 "below the spool root; make it a folder (or link the root)")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise SpoolError(f"cannot write to {folder}: permission denied")
        keep_private(self.processing)
        return self._object_folders(folders)

    def _object_folders(self, folders: Iterable[str]) -> list[tuple[Path, str]]:
        inbox = os.stat(self.inbox)
        locked = []
        for name in folders:
            folder = self.inbox / name
            try:  # inbox/ is droppers' ground: never through a link
                make_below(self.inbox, PurePosixPath(name).parts, inbox)
            except OSError as exc:
                why = ("a file or a link is in the way" if exc.errno in (errno.ELOOP,
                       errno.ENOTDIR) else exc.strerror)
                locked.append((folder, f"cannot make it: {why}"))
                continue
            if not os.access(folder, os.W_OK | os.X_OK):
                locked.append((folder, "not writable by the daemon"))
        return locked

    def rel_to_inbox(self, path: Path) -> PurePosixPath:
        return PurePosixPath(path.relative_to(self.inbox).as_posix())

    def iter_inbox(self, unreadable: Callable[[Path, OSError], None] | None = None
                   ) -> Iterator[tuple[Path, os.stat_result]]:
        """Everything below inbox/ the daemon must take, with its ``lstat``, lazily.

        Regular files, and what is never read but must not stay unaccounted (links,
        FIFOs, sockets, devices, folders named like files); other folders are walked.
        Ignored names are skipped. A folder that cannot be listed is told to
        *unreadable* and skipped.
        """
        stack = [self.inbox]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if is_ignored_name(entry.name):
                            continue
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue  # gone meanwhile
                        if stat.S_ISDIR(st.st_mode) and not has_accepted_suffix(entry.name):
                            stack.append(Path(entry.path))
                        else:
                            yield Path(entry.path), st
            except FileNotFoundError:
                continue
            except OSError as exc:
                if unreadable is not None:
                    unreadable(folder, exc)

    def claim(self, path: Path, expect: tuple[int, int] | None = None) -> Claimed | None:
        """Move *path* into processing/<node>/ atomically; None if another node won it
        (or it is gone, or reached through a link).

        With *expect* (size, mtime_ns), a file that changed since it was judged settled
        is not claimed: :class:`FileChanged` says to wait for it to settle again.
        """
        rel = self.rel_to_inbox(path)
        safe, problem = _safe_rel(rel)
        try:
            src = open_dirs(self.inbox, rel.parent.parts)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                return None  # gone, or a link in the path: the link itself is claimed
            raise
        try:
            return self._claim_in(src, rel.name, safe, problem, expect)
        finally:
            os.close(src)

    def _claim_in(self, src: int, name: str, safe: PurePosixPath, problem: str | None,
                  expect: tuple[int, int] | None) -> Claimed | None:
        try:
            before = os.stat(name, dir_fd=src, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if expect is not None and stat.S_ISREG(before.st_mode) and _signature(before) != expect:
            raise FileChanged(name)
        claim_id = new_claim_id()
        target = _claim_name(claim_id, safe.name)
        for _ in range(5):
            dst = open_dirs(self.processing, safe.parent.parts, create=True)
            try:
                if rename_at(name, target, src, dst):
                    return self._identify(claim_id, safe, target, dst, problem, src, name,
                                          expect)
                if not lexists(name, src):
                    return None  # another node claimed it
            finally:
                os.close(dst)
            # Our target folder was pruned by a finishing file just then: make it again.
        raise SpoolError(f"cannot claim {name}: {self.processing / safe.parent} keeps vanishing")

    def _identify(self, claim_id: str, rel: PurePosixPath, name: str, dst: int,
                  problem: str | None, src: int, old: str,
                  expect: tuple[int, int] | None) -> Claimed:
        """What the rename moved, judged by the descriptor opened on it (never by name)."""
        path = self.processing / rel.parent / name
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dst)
        except OSError:
            # A link (ELOOP), a socket (ENXIO), or a file it may not read: judged by lstat,
            # and later opened (with the same care) only if it is a regular file.
            st = os.stat(name, dir_fd=dst, follow_symlinks=False)
            return Claimed(claim_id, rel, path, None,
                           problem or kind_problem(st.st_mode) or self._links(st))
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            return Claimed(claim_id, rel, path, None, problem or kind_problem(st.st_mode))
        if expect is not None and _signature(st) != expect and give_back(name, dst, old, src):
            raise FileChanged(old)  # it changed between the check and the rename
        return Claimed(claim_id, rel, path, (st.st_dev, st.st_ino),
                       problem or self._links(st))

    def _links(self, st: os.stat_result) -> str | None:
        return links_problem(st) if self.refuse_hard_links else None

    def to_stored(self, path: Path) -> str:
        """A path below the spool root as kept in the ledger (the root may move)."""
        text, root = str(path), self._root_slash
        if text.startswith(root):  # the usual case, without pathlib's parsing
            return text[len(root):]
        return path.relative_to(self.root).as_posix()

    def from_stored(self, stored: str) -> Path | None:
        """The claimed path a ledger row names; None unless it is below our processing/
        (a ledger is never trusted to point the daemon at another file)."""
        path = self.root / stored
        if ".." in PurePosixPath(stored).parts or self.processing not in path.parents:
            return None
        return path

    def filed_from_stored(self, stored: str) -> Path | None:
        """A destination a ledger row names; None unless it is below done/ or failed/."""
        path = self.root / stored
        if ".." in PurePosixPath(stored).parts or not (
                self.done in path.parents or self.failed in path.parents):
            return None
        return path

    def claimed_from_path(self, path: Path) -> Claimed | None:
        """Rebuild a claim from a name in processing/ (recovery without a ledger row)."""
        claim_id, sep, name = path.name.partition(CLAIM_SEP)
        if not sep or not name:
            return None
        rel_dir = PurePosixPath(path.parent.relative_to(self.processing).as_posix())
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        problem = kind_problem(st.st_mode) or self._links(st)
        ident = (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None
        return Claimed(claim_id, rel_dir / name, path, ident, problem)

    def other_nodes_with_files(self) -> list[str]:
        """Nodes other than ours whose processing/ folder still holds files."""
        found = []
        for folder in self.processing.parent.iterdir():
            if folder == self.processing or not folder.is_dir():
                continue
            with contextlib.suppress(OSError):
                if any(files for _dir, _sub, files in os.walk(folder)):
                    found.append(folder.name)
        return sorted(found)

    def list_processing(self) -> list[Path]:
        """Everything claimed into processing/<node>/ (files, links, folders named like
        files), and whatever else lies there but our own temporary files."""
        found, stack = [], [self.processing]
        while stack:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if is_claim_name(entry.name):
                        found.append(Path(entry.path))
                    elif is_ignored_name(entry.name):
                        continue
                    elif entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    else:
                        found.append(Path(entry.path))
        return found


def _signature(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns
