"""Folders reached through descriptors, never through a link: opened one component at
a time with ``O_NOFOLLOW``, renames between them, and the modes of the folders the
daemon makes (private where a dropper could swap a file, else like their parent).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PRIVATE_DIR = 0o755  # processing/<node>/ and below: only this daemon writes there


def open_dirs(base: Path, parts: Iterable[str], create: bool = False,
              mode: int = PRIVATE_DIR) -> int:
    """A descriptor on ``base/parts...``, neither *base* nor a component below it a link
    (folders missing are made with *mode* when *create*)."""
    fd = os.open(base, DIR_FLAGS)
    try:
        for part in parts:
            try:
                inner = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # made by another meanwhile
                    os.mkdir(part, mode, dir_fd=fd)
                inner = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def lexists(name: str, dir_fd: int) -> bool:
    """Is there anything (a link too) called *name* in the folder *dir_fd*?"""
    return os.access(name, os.F_OK, dir_fd=dir_fd, follow_symlinks=False)


def rename_at(name: str, target: str, src: int, dst: int) -> bool:
    """True when *name* is now *target*; False when it is not there to move (another node
    won), or the target folder vanished (pruned) meanwhile."""
    try:
        os.rename(name, target, src_dir_fd=src, dst_dir_fd=dst)
    except FileNotFoundError:
        # (An NFS rename that was retransmitted reports ENOENT although it was done.)
        return lexists(target, dst)
    return True


def give_back(name: str, dst: int, old: str, src: int) -> bool:
    """Put a file that changed after its checks back in inbox/ under its name, unless
    that name was taken meanwhile (then it stays claimed). True when given back."""
    try:
        os.link(name, old, src_dir_fd=dst, dst_dir_fd=src, follow_symlinks=False)
    except OSError:
        if lexists(old, src):
            return False
        try:
            os.rename(name, old, src_dir_fd=dst, dst_dir_fd=src)
        except OSError:
            return False
        return True
    os.unlink(name, dir_fd=dst)
    return True


def keep_private(folder: Path) -> None:
    """A folder of ours that no dropper may write to (processing/<node>/, where a dropper
    could swap a claimed file; the ledger's folder), readable by all."""
    with contextlib.suppress(OSError):  # not ours to change (another user made it)
        mode = stat.S_IMODE(os.stat(folder).st_mode)
        if mode & 0o022:
            _chmod(folder, mode & ~0o022)


def make_like(folder: Path, model: os.stat_result) -> None:
    """Make *folder* unless it is there, then give it the group and mode of *model*."""
    try:
        folder.mkdir()
    except FileExistsError:
        return
    like(folder, model)


def make_below(base: Path, parts: Iterable[str], model: os.stat_result) -> None:
    """Make ``base/parts...`` as far as missing, each folder made given the group and mode
    of *model*, through descriptors: a link or a file on the way is never followed nor
    replaced (OSError: ``ELOOP``, ``ENOTDIR``)."""
    fd = os.open(base, DIR_FLAGS)
    try:
        for part in parts:
            made = False
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o777, dir_fd=fd)
                made = True
            inner = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
            if made:
                _like_fd(fd, model)
    finally:
        os.close(fd)


def _like_fd(fd: int, model: os.stat_result) -> None:
    """:func:`like` for a folder open as *fd*."""
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_gid != model.st_gid:
            os.fchown(fd, -1, model.st_gid)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    want = stat.S_IMODE(model.st_mode) & 0o777
    if mode & 0o777 != want:
        try:
            os.fchmod(fd, (mode & ~0o777) | want)
        except PermissionError:  # RestrictSUIDSGID=: without the setgid bit, then
            os.fchmod(fd, want)


def like(folder: Path, model: os.stat_result) -> None:
    """Give a folder we just made the group and mode of *model*, as far as we may (made
    in a setgid folder with the unit's umask, it has them already)."""
    with contextlib.suppress(OSError):  # not in that group: the group stays ours
        if os.stat(folder).st_gid != model.st_gid:
            os.chown(folder, -1, model.st_gid)
    mode = stat.S_IMODE(os.stat(folder).st_mode)
    want = stat.S_IMODE(model.st_mode) & 0o777
    if mode & 0o777 != want:
        _chmod(folder, (mode & ~0o777) | want)


def _chmod(folder: Path, mode: int) -> None:
    """chmod, keeping the setgid bit where allowed: systemd's ``RestrictSUIDSGID=``
    refuses any mode with it, even one the folder has already (then it goes)."""
    try:
        os.chmod(folder, mode)
    except PermissionError:
        if not mode & (stat.S_ISUID | stat.S_ISGID):
            raise
        os.chmod(folder, mode & ~(stat.S_ISUID | stat.S_ISGID))
