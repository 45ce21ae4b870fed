"""Opening a dropped file safely: never through a link, only a regular file, the very
inode that was claimed.

A dropper may swap a name for a symbolic link, a FIFO or another file at any moment, so
nothing is judged by its name: every read opens with ``O_NOFOLLOW | O_NONBLOCK`` (a link
is refused, a FIFO never blocks) and checks the descriptor actually read with ``fstat``.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

# What a thing in inbox/ is, when it is not a regular file: said in its result.
_KINDS = {
    stat.S_IFLNK: ("a symbolic link: bulkdrop does not follow links; "
                   "copy or move the file itself into inbox/"),
    stat.S_IFIFO: ("a named pipe (FIFO): bulkdrop reads only regular files; "
                   "write the data to a file and drop that"),
    stat.S_IFSOCK: "a socket: bulkdrop reads only regular files; drop a file",
    stat.S_IFCHR: "a device: bulkdrop reads only regular files; drop a file",
    stat.S_IFBLK: "a device: bulkdrop reads only regular files; drop a file",
    stat.S_IFDIR: ("a folder named like a file: bulkdrop takes files, not folders; "
                   "move the files inside it into inbox/<object>/"),
}


class NotAFile(OSError):
    """The name is not (or no longer) the regular file that was claimed; the message says
    what it is, for the file's result."""


def kind_problem(mode: int) -> str | None:
    """Why something of this ``st_mode`` never becomes a job; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file: drop a file")


def links_problem(st: os.stat_result) -> str | None:
    """A file with other names elsewhere may be one the dropper could not read itself
    (where the kernel lets anyone link any file: see :func:`hard_links_protected`)."""
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        return (f"a file with {st.st_nlink} hard links, on a system that lets anyone link "
                "files they cannot read: copy the file into inbox/ instead of linking it")
    return None


def hard_links_protected(setting: str = "/proc/sys/fs/protected_hardlinks") -> bool:
    """Linux's ``fs.protected_hardlinks = 1`` (every major distribution's default): a
    user may hard-link only files they own or may read and write. Then a file linked
    into inbox/ is one the dropper could read anyway, and is taken like any other."""
    try:
        with open(setting) as fh:
            return fh.read().strip() == "1"
    except OSError:
        return False


@dataclass(frozen=True)
class FileRef:
    """A file to read: its path, and (once known) the identity it must still have.

    ``follow`` is for files a person names on the command line (``bulkdrop validate``):
    there a link is what they asked for (but still only a regular file is read: a FIFO
    named by mistake must not hang the command).
    """
    path: Path
    ident: tuple[int, int] | None = None   # (st_dev, st_ino) when claimed
    follow: bool = False

    def opener(self, path: str, flags: int) -> int:
        """For ``open(..., opener=)``: the descriptor, checked, or :class:`NotAFile`."""
        try:
            fd = os.open(path, flags | (_FLAGS & ~os.O_NOFOLLOW if self.follow else _FLAGS))
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NotAFile(errno.ELOOP, _KINDS[stat.S_IFLNK], path) from None
            if exc.errno == errno.ENXIO:  # a socket
                raise NotAFile(errno.ENXIO, _KINDS[stat.S_IFSOCK], path) from None
            raise
        try:
            st = os.fstat(fd)
            problem = kind_problem(st.st_mode)
            if problem is not None:
                raise NotAFile(errno.EINVAL, problem, path)
            if self.ident is not None and (st.st_dev, st.st_ino) != self.ident:
                raise NotAFile(errno.ESTALE, "the file was replaced after it was claimed; "
                               "drop it again", path)
            # O_NONBLOCK stays: it changes nothing for a regular file.
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open(self, mode: str = "rb", **kwargs: Any) -> Any:
        """``open()`` through :meth:`opener`; text modes take ``encoding=`` etc."""
        return open(self.path, mode, opener=self.opener, **kwargs)  # noqa: SIM115

    def open_binary(self, buffering: int = -1) -> BinaryIO:
        handle: BinaryIO = self.open("rb", buffering=buffering)
        return handle


def as_ref(source: Path | FileRef) -> FileRef:
    """A path named by a person (followed like any program would), or a claimed file."""
    return source if isinstance(source, FileRef) else FileRef(source, follow=True)
