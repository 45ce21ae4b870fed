"""The kernel's word that something changed in inbox/: inotify on inbox/ and every folder
below it, its descriptor read by the event loop only when the kernel has something to
say. Nothing wakes while nothing happens, and a file renamed in is seen at once.

watchfiles looks at what its watcher gathered once every ``step`` (a sleep in a loop):
it either wakes many times a second with nothing to do, or sees a file a step late. It
stays the watcher where inotify is not to be had (not Linux, ``force_polling`` for a
network filesystem, no inotify instance left).

As with any event source here, events only wake the watcher: the rescans are the truth,
so an overflowed queue, a folder the daemon may not read or the limit of watches
delays a file until the next rescan and never loses it. Folders are watched without
following links (``IN_DONT_FOLLOW | IN_ONLYDIR``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

from daemon.logs import get_logger

try:
    from inotify_simple import INotify
    from inotify_simple import flags as f
except ImportError:  # not Linux: watchfiles watches
    INotify = None

log = get_logger()


class Unavailable(Exception):
    """No inotify here: watchfiles watches instead."""


class InboxEvents:
    """Paths below inbox/ that something happened to, in batches (:meth:`batches`);
    ``None`` in a batch asks for a rescan (events were lost, or a watch could not be
    set)."""

    def __init__(self, inbox: Path) -> None:
        self.inbox = inbox
        if INotify is None:
            raise Unavailable("no inotify_simple (not Linux)")
        # A file renamed in, made, closed after writing, or given an old mtime (touch -d);
        # a folder made or moved in (watched in turn, and rescanned: a folder moved in
        # brings files no event names); a folder moved away or removed.
        self.mask = (f.MOVED_TO | f.CREATE | f.CLOSE_WRITE | f.ATTRIB | f.MOVE_SELF
                     | f.DELETE_SELF | f.ONLYDIR | f.DONT_FOLLOW | f.EXCL_UNLINK)
        try:
            self.inotify = INotify(nonblocking=True)
        except OSError as exc:  # ENOSYS, EMFILE (no instance left) ...
            raise Unavailable(exc.strerror or str(exc)) from None
        self.folders: dict[int, Path] = {}   # watch descriptor -> folder
        self.ready: asyncio.Queue[list[Path | None] | None] = asyncio.Queue()  # None: stop
        self.limit_logged = False
        self.adding: set[asyncio.Task[None]] = set()  # watches for folders just come

    def stop(self) -> None:
        """End :meth:`batches` (from the event loop)."""
        self.ready.put_nowait(None)

    async def batches(self) -> AsyncIterator[list[Path | None]]:
        """Every folder watched (a walk, in a thread), then each batch as it comes, until
        :meth:`stop`; the inotify instance is closed at the end. The first batch is empty:
        every folder is watched from then on."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self.watch_tree, self.inbox)
            loop.add_reader(self.inotify.fileno(), self._readable)
            try:
                yield []
                while (batch := await self.ready.get()) is not None:
                    yield batch
            finally:
                loop.remove_reader(self.inotify.fileno())
        finally:
            for task in self.adding:
                task.cancel()
            await asyncio.gather(*self.adding, return_exceptions=True)
            with contextlib.suppress(OSError):
                self.inotify.close()

    def watch_tree(self, top: Path) -> bool:
        """Watch *top* and every folder below it; False if some could not be (they are
        rescanned instead). Folders are never entered through a link."""
        complete = True
        stack = [top]
        while stack:
            folder = stack.pop()
            if not self._watch(folder):
                complete = False
                continue
            try:
                with os.scandir(folder) as entries:
                    stack.extend(Path(e.path) for e in entries
                                 if e.is_dir(follow_symlinks=False))
            except OSError:
                complete = False  # unreadable: the rescans say so
        return complete

    def _watch(self, folder: Path) -> bool:
        try:
            wd = self.inotify.add_watch(folder, self.mask)
        except OSError as exc:
            if exc.errno == errno.ENOSPC and not self.limit_logged:
                self.limit_logged = True
                log.warning("watcher.inotify_limit", folder=str(folder),
                            note="no inotify watch left (fs.inotify.max_user_watches): "
                                 "folders past it are seen at each rescan")
            return False
        self.folders[wd] = folder
        return True

    def _readable(self) -> None:
        """The kernel has events: read them all, now (never blocks: non-blocking fd).
        A read that fails asks for a rescan instead (a callback's exception would reach
        no one)."""
        try:
            events = self.inotify.read(timeout=0)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EINTR):
                log.warning("watcher.inotify_read_failed", error=exc.strerror or str(exc))
                self.ready.put_nowait([None])
            return
        batch: list[Path | None] = []
        new_folders: list[Path] = []
        for event in events:
            if event.mask & f.Q_OVERFLOW:
                batch.append(None)
                continue
            folder = self.folders.get(event.wd)
            if event.mask & f.IGNORED:
                self.folders.pop(event.wd, None)
                continue
            if folder is None:
                continue
            if event.mask & (f.MOVE_SELF | f.DELETE_SELF):
                # Moved away, its watch would name paths that are not there.
                self.folders.pop(event.wd, None)
                with contextlib.suppress(OSError):
                    self.inotify.rm_watch(event.wd)
                continue
            path = folder / event.name
            if event.mask & f.ISDIR and event.mask & (f.CREATE | f.MOVED_TO):
                new_folders.append(path)
            batch.append(path)
        if new_folders:
            task = asyncio.get_running_loop().create_task(self._watch_new(new_folders))
            self.adding.add(task)
            task.add_done_callback(self.adding.discard)
        if batch:
            self.ready.put_nowait(batch)

    async def _watch_new(self, folders: list[Path]) -> None:
        """Watch folders just made or moved in, then ask for a rescan: what came into them
        before their watch was set has no event."""
        for folder in folders:
            await asyncio.to_thread(self.watch_tree, folder)
        self.ready.put_nowait([None])
