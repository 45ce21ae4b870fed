"""Placing a finished file: ``done/`` or ``failed/`` under a free name for the file and
every sidecar it may get, its result beside it, nothing of anyone's ever overwritten.
Synchronous file-system work, run in a thread by :mod:`daemon.filing`.

The sidecars (the errors CSV, the result) are first written in full to
``processing/<node>/``, which only this daemon writes, then hard-linked into place:
``link()`` never replaces a name, so a name someone took meanwhile is found, not
overwritten, and a sidecar appears whole or not at all. The file itself is hard-linked
too, then its claimed name removed. Where links are refused (a filesystem without them,
``fs.protected_hardlinks`` for a file the daemon does not own) it is check-then-rename.
The result comes last: whoever sees it finds the file and the errors CSV there.

Every step is repeatable, so a filing cut short (crash, full disk) is simply done again
from the ledger, which holds the destination before anything moves. The destination's
folders are opened without following links, like the claim's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from daemon.folders import lexists, open_dirs
from daemon.spool import NAME_MAX, Claimed, Spool

# Every name a filed file may get beside it; a name is free only when all are.
SIDECARS = (".result.json", ".errors.csv", ".failed.csv", ".failed.jsonl")
RESULT_SUFFIX, ERRORS_SUFFIX = SIDECARS[0], SIDECARS[1]
FILED_NAME_MAX = NAME_MAX - max(len(s.encode()) for s in SIDECARS)
# link() refused for this file or on this filesystem: fall back to check-then-rename.
_LINK_REFUSED = (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EMLINK, errno.EOPNOTSUPP)
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

Content = bytes | Callable[[BinaryIO], object]


class Skip(Exception):  # noqa: N818 - an instruction, like Stopping
    """Raised by a sidecar's writer: this sidecar is left out, the filing goes on."""


@dataclass(frozen=True)
class Sidecar:
    suffix: str
    content: Content   # the bytes, or a writer that streams them into a file
    heavy: bool = False  # its writer reads the whole file again


def fit(name: str) -> str:
    """*name* if it leaves room for every sidecar within NAME_MAX; else its stem cut and
    marked with a hash of the whole name (``long…name~1a2b3c4d.csv``), the same each
    time. The result keeps the name as dropped."""
    if len(name.encode()) <= FILED_NAME_MAX:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode()) > 16:
        stem, dot, ext = name, "", ""
    mark = "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    room = FILED_NAME_MAX - len(f"{mark}{dot}{ext}".encode())
    short = stem.encode()[:room].decode("utf-8", "ignore")
    return f"{short}{mark}{dot}{ext}"


def suffixed_names(name: str) -> Iterator[str]:
    """``a.csv``, ``a-1.csv``, ``a-2.csv`` ...: the names tried so nothing is overwritten
    (each fitted, so the file and its sidecars fit a file name)."""
    yield fit(name)
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    for n in itertools.count(1):
        yield fit(f"{stem}-{n}{'.' + ext if ext else ''}")


def sidecar(dest: Path, suffix: str) -> Path:
    return dest.with_name(dest.name + suffix)


class Placing:
    """The file-system half of filing one claimed file. Synchronous: run it in a thread."""

    def __init__(self, spool: Spool, claimed: Claimed, ok: bool,
                 sidecars: Sequence[Sidecar], folder: PurePosixPath | None = None) -> None:
        self.spool = spool
        self.claimed = claimed
        self.base = spool.done if ok else spool.failed
        # Below base: the path it was dropped in (and, laid out by day, its day first).
        self.folder = claimed.rel.parent if folder is None else folder
        self.sidecars = sidecars
        self.tmps = {sc.suffix: spool.processing / f".{claimed.claim_id}{sc.suffix}.tmp"
                     for sc in sidecars}
        self.prepared = False

    @property
    def heavy(self) -> bool:
        """Writing its sidecars reads the whole file again (a long trip to a thread)."""
        return any(sc.heavy for sc in self.sidecars)

    def natural(self) -> Path:
        """The file's own name under done/ or failed/ (fitted): where it goes unless that
        is taken. Computed without touching the disk; :meth:`place` finds out."""
        return self.base / self.folder / fit(self.claimed.rel.name)

    def claimed_exists(self) -> bool:
        return os.path.lexists(self.claimed.path)

    def prepare(self) -> None:
        """Write every sidecar in full under processing/<node>/, ready to be linked. Done
        again after a restart, unless the file has already left processing/ (then what
        was written before stays: it is what was, or is being, published)."""
        if not self.claimed_exists():
            return
        for sc in self.sidecars:
            tmp = self.tmps[sc.suffix]
            fd = _create(tmp)
            try:
                if isinstance(sc.content, bytes):
                    _write_all(fd, sc.content)  # no buffered file object to set up
                else:
                    with open(fd, "wb", closefd=False) as fh:
                        sc.content(fh)
                os.fsync(fd)
            except Skip:
                tmp.unlink()  # an extra the file can go without: not published
            finally:
                os.close(fd)

    def prepare_and_place(self, dest: Path, resumed: bool) -> bool:
        """Both, in one trip to a thread (most files take their own name at once)."""
        if not self.prepared:
            self.prepare()
            self.prepared = True
        return self.place(dest, resumed)

    def choose(self) -> Path | None:
        """The first free name (a.csv, a-1.csv ...); None when the file is gone from
        processing/ (removed by hand). A name is free when neither it nor any sidecar
        name exists, or what is there is this very file (an earlier filing cut short)."""
        if not self.claimed_exists():
            return None
        folder = open_dirs(self.base, self.folder.parts, create=True, mode=0o777)
        try:
            for name in suffixed_names(self.claimed.rel.name):
                if self._free(name, folder):
                    return self.base / self.folder / name
        finally:
            os.close(folder)
        raise AssertionError("unreachable")

    def place(self, dest: Path, resumed: bool) -> bool:
        """Put the file at *dest* and its sidecars beside it; False if *dest* is taken.

        Repeatable: True when it is all there already. A file gone from processing/ is
        only taken to be at *dest* when *resumed*, i.e. filed there by a run cut short
        after the move; otherwise it was removed by hand (the caller checks).
        """
        name = dest.name
        folder = open_dirs(self.base, self.folder.parts, create=True, mode=0o777)
        try:
            if len(name.encode()) > FILED_NAME_MAX:  # chosen by an older release: too long
                self._take_back(name, folder)
                return False
            if self.claimed_exists():
                if not self._free(name, folder) or self._put_data(name, folder) == "taken":
                    return False
            elif not (resumed and lexists(name, folder)):
                return False  # removed by hand; else filed here by a run cut short
            published: list[str] = []
            for sc in self.sidecars:
                tmp = self.tmps[sc.suffix]
                if not tmp.exists():
                    continue  # published and tidied by a run cut short just before the end
                got = _publish(tmp, name + sc.suffix, folder)
                if got == "taken":  # someone took the name since _free(): start over
                    for done in published:
                        os.unlink(done, dir_fd=folder)
                    self._take_back(name, folder)
                    return False
                if got == "new":
                    published.append(name + sc.suffix)
        finally:
            os.close(folder)
        self.claimed.path.unlink(missing_ok=True)
        for tmp in self.tmps.values():
            tmp.unlink(missing_ok=True)
        _prune_empty(self.claimed.path.parent, self.spool.processing)
        return True

    # -- steps ----------------------------------------------------------------------

    def _free(self, name: str, folder: int) -> bool:
        """Nothing at *name* or its sidecar names, but this file and what it publishes."""
        if lexists(name, folder) and not self._is_ours(name, folder):
            return False
        for suffix in SIDECARS:
            there = name + suffix
            if lexists(there, folder):
                tmp = self.tmps.get(suffix)
                if tmp is None or not tmp.exists() or not _same_content(there, folder, tmp):
                    return False
        return True

    def _is_ours(self, name: str, folder: int) -> bool:
        try:
            there = os.stat(name, dir_fd=folder, follow_symlinks=False)
            here = os.lstat(self.claimed.path)
        except FileNotFoundError:
            return False
        return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)

    def _put_data(self, name: str, folder: int) -> str:
        """The file to *name*: 'new', 'there' (an earlier attempt put it) or 'taken'."""
        src = self.claimed.path
        try:
            os.link(src, name, dst_dir_fd=folder, follow_symlinks=False)
            return "new"
        except FileExistsError:
            return "there" if self._is_ours(name, folder) else "taken"
        except OSError as exc:
            if exc.errno not in _LINK_REFUSED:
                raise  # ENOENT too: our folder or the file vanished meanwhile; try again
        if lexists(name, folder):
            return "there" if self._is_ours(name, folder) else "taken"
        os.rename(src, name, dst_dir_fd=folder)
        return "new"

    def _take_back(self, name: str, folder: int) -> None:
        """Undo putting the file at *name*: drop the extra link, or move it back."""
        if not self._is_ours(name, folder) and (
                self.claimed_exists() or not lexists(name, folder)):
            return  # not ours; else moved there (no links) by us: the ledger says so
        if self.claimed_exists():
            os.unlink(name, dir_fd=folder)
        else:
            os.rename(name, self.claimed.path, src_dir_fd=folder)


def _create(tmp: Path) -> int:
    """A new file at *tmp*, opened for writing; one left there before is removed first
    (never rewritten in place: it may be linked already)."""
    try:
        return os.open(tmp, _NEW, 0o666)
    except FileExistsError:
        tmp.unlink()
        return os.open(tmp, _NEW, 0o666)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _publish(tmp: Path, name: str, folder: int) -> str:
    """Link a written sidecar into place: 'new', 'same' (an identical one is there: ours,
    from an attempt cut short), or 'taken'."""
    try:
        os.link(tmp, name, dst_dir_fd=folder)
        return "new"
    except FileExistsError:
        return "same" if _same_content(name, folder, tmp) else "taken"
    except OSError as exc:
        if exc.errno not in _LINK_REFUSED:
            raise
    if lexists(name, folder):
        return "same" if _same_content(name, folder, tmp) else "taken"
    os.rename(tmp, name, dst_dir_fd=folder)
    return "new"


def _same_content(name: str, folder: int, tmp: Path) -> bool:
    """Is the regular file *name* (never followed if a link) byte for byte *tmp*?"""
    try:
        fd = os.open(name, _READ, dir_fd=folder)
    except OSError:
        return False
    with open(fd, "rb") as there, open(tmp, "rb") as ours:
        st, mine = os.fstat(there.fileno()), os.fstat(ours.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size != mine.st_size:
            return False
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            return True
        while block := ours.read(1 << 16):
            if there.read(len(block)) != block:
                return False
    return True


def _prune_empty(folder: Path, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def stale_temporaries(spool: Spool, keep: set[str]) -> list[Path]:
    """Sidecars left in processing/<node>/ by a crash, for claims no longer unfinished."""
    found = []
    with contextlib.suppress(FileNotFoundError), os.scandir(spool.processing) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".tmp") \
                    and entry.name[1:21] not in keep:
                found.append(Path(entry.path))
    return found
