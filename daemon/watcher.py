"""Finds complete files in inbox/: a start-up scan, the kernel's events (inotify; else
watchfiles), periodic rescans.

Events only wake us; the scans make sure a missed or overflowed event delays a file
and never loses it, and when events fail altogether (a name that is not UTF-8 makes
watchfiles raise) the watcher starts again and rescans meanwhile. A file is handed on
once it has settled: its mtime is at least ``settle_seconds`` old, or (clock skew,
coarse mtimes) its size and mtime have not changed for that long while we watched.
What is not a regular file (a link, a FIFO, a folder named like a file) is handed on
the same way, to be filed as rejected without ever being opened.

Each rescan also surveys inbox/ as it is (how many wait, since when, which folders
cannot be read) for the metrics and ``/readyz``, apart from the walk that hands files
on, which waits whenever the claimer is full.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import watchfiles

from daemon.inboxevents import InboxEvents, Unavailable
from daemon.logs import describe_error, get_logger
from daemon.spool import Spool, has_accepted_suffix, is_ignored_name
from daemon.trouble import Troubles

log = get_logger()
WATCH_RETRY_CAP = 30.0  # seconds between restarts of a failing event watcher, at most
WATCH_READY_WAIT = 5.0  # the first scan waits this long at most for inbox/ to be watched


class Watcher:
    def __init__(self, spool: Spool, out: asyncio.Queue[Path], *, settle_seconds: float,
                 rescan_seconds: float, force_polling: bool,
                 troubles: Troubles | None = None) -> None:
        self.spool = spool
        self.out = out
        self.settle = settle_seconds
        self.rescan = rescan_seconds
        self.force_polling = force_polling
        self.troubles = troubles or Troubles()
        self._handed: dict[Path, tuple[int, int]] = {}  # in `out` or being claimed
        self._pending: dict[Path, tuple[int, int, float]] = {}  # size, mtime_ns, since
        self._settling = asyncio.Event()  # something is pending: the settle loop ticks
        self._offering: asyncio.Task[None] | None = None
        self._walk_again = False  # a scan was asked for while a walk was under way
        self._watching = asyncio.Event()  # inbox/ is watched: events will come
        self._kick = asyncio.Event()     # a folder appeared: scan now
        self._stop = asyncio.Event()
        self.scans = 0
        # Told (files waiting, the oldest one's arrival time or None) after each survey.
        self.on_scan: Callable[[int, float | None], None] = lambda waiting, oldest: None

    def release(self, path: Path) -> None:
        """The claimer is done with *path* (claimed or vanished): see it afresh next time."""
        self._handed.pop(path, None)

    def signature(self, path: Path) -> tuple[int, int] | None:
        """(size, mtime_ns) of *path* when it was judged settled."""
        return self._handed.get(path)

    def rescan_soon(self) -> None:
        """Rescan inbox/ now, not at the next ``rescan_seconds``."""
        self._kick.set()

    def recheck(self, path: Path) -> None:
        """*path* changed after it was handed on: watch it settle again."""
        self._handed.pop(path, None)
        self._pending[path] = (-1, -1, time.monotonic())
        self._settling.set()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        # watchfiles sets the stop event it is given when it is cancelled: it gets one of
        # its own, or a crash elsewhere in here would pass for a requested stop.
        events_stop = asyncio.Event()
        bridge = asyncio.ensure_future(stop.wait())
        bridge.add_done_callback(lambda _: events_stop.set())
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch(stop, events_stop))
                tg.create_task(self._settle_loop(stop))
                tg.create_task(self._rescan_loop(stop))
        finally:
            bridge.cancel()
            if self._offering is not None:
                self._offering.cancel()
                await asyncio.gather(self._offering, return_exceptions=True)

    async def scan(self) -> None:
        """Survey inbox/ (metrics, unreadable folders), and hand on what is settled: the
        handing-on walk goes on in the background, waiting when the claimer is full."""
        # First: with a backlog, the survey's walk of every file would otherwise come
        # before the first file is offered (100,000 files: a second or more).
        if self._offering is None or self._offering.done():
            self._offering = asyncio.create_task(self._offer_walk(), name="offering")
            self._offering.add_done_callback(_surface)
        else:  # the walk under way may be past where a new file lands: one more after it
            self._walk_again = True
        unreadable: dict[Path, OSError] = {}
        waiting, oldest = await asyncio.to_thread(self._survey, unreadable)
        self.on_scan(waiting, oldest)
        self._note_unreadable(unreadable)
        self.scans += 1

    def _survey(self, unreadable: dict[Path, OSError]) -> tuple[int, float | None]:
        waiting, oldest = 0, None
        for _path, st in self.spool.iter_inbox(unreadable.__setitem__):
            waiting += 1
            # ctime: when it arrived (a rename sets it), not when an export was written.
            oldest = st.st_ctime if oldest is None else min(oldest, st.st_ctime)
        return waiting, oldest

    def _note_unreadable(self, now: dict[Path, OSError]) -> None:
        seen = {str(p) for p in now}
        for key in self.troubles.keys("unreadable_dir"):
            if key not in seen:
                self.troubles.clear("unreadable_dir", key)
                log.info("spool.readable_again", path=key)
        for path, exc in now.items():
            if self.troubles.set("unreadable_dir", str(path), exc.strerror or str(exc)):
                log.error("spool.unreadable_dir", path=str(path), error=exc.strerror,
                          note="skipped: files in it are not taken until the daemon's user "
                               "can read it")
        for key in self.troubles.keys("unclaimable"):
            if not os.path.lexists(key):
                self.troubles.clear("unclaimable", key)

    async def _offer_walk(self) -> None:
        """Walk inbox/ handing files on; again while scans were asked for meanwhile."""
        loop = asyncio.get_running_loop()
        while True:
            self._walk_again = False
            offered = await asyncio.to_thread(self._walk, loop)
            log.debug("scan.done", offered=offered, pending=len(self._pending))
            if not self._walk_again:
                return

    def _walk(self, loop: asyncio.AbstractEventLoop) -> int:
        offered = 0
        for path, st in self.spool.iter_inbox():
            if self._stop.is_set():
                break
            if path in self._handed:
                continue
            asyncio.run_coroutine_threadsafe(self._offer(path, st, time.time()), loop).result()
            offered += 1
        return offered

    async def _offer(self, path: Path, st: os.stat_result, stat_at: float) -> None:
        """Hand *path* on if the stat taken at *stat_at* (wall clock) shows it settled."""
        if path in self._handed:
            return
        signature = (st.st_size, st.st_mtime_ns)
        previous = self._pending.get(path)
        since = previous[2] if previous and previous[:2] == signature else time.monotonic()
        if self._settled(st, since, stat_at):
            self._pending.pop(path, None)
            self._handed[path] = signature
            await self._put(path)
        else:
            self._pending[path] = (*signature, since)
            self._settling.set()

    async def _put(self, path: Path) -> None:
        """Wait for room in the queue, unless we are stopping."""
        if self.out.full():
            await first_of(self.out.put(path), self._stop.wait())
        else:
            self.out.put_nowait(path)

    def _settled(self, st: os.stat_result, since: float, stat_at: float) -> bool:
        # Age as of the stat, not as of now: waiting for room in the queue must not
        # make a file that was still growing look settled.
        age = stat_at - st.st_mtime_ns / 1e9
        return age >= self.settle or time.monotonic() - since >= self.settle

    async def _settle_loop(self, stop: asyncio.Event) -> None:
        tick = min(max(self.settle / 4, 0.05), 0.5)
        while not stop.is_set():
            if not self._pending:  # nothing to look at: asleep until something is
                self._settling.clear()
                await first_of(stop.wait(), self._settling.wait())
                continue
            await self._offer_all(list(self._pending), forget_missing=True)
            await _wait(stop, tick)

    async def _rescan_loop(self, stop: asyncio.Event) -> None:
        # The first scan once inbox/ is watched: a file that lands between a walk and its
        # folder's watch would wait for the next rescan. (Not for ever: a slow start of
        # the watches asks for another scan once they are in place.)
        await first_of(self._watching.wait(), stop.wait(), limit=WATCH_READY_WAIT)
        await self.scan()
        while not await _wait(stop, self.rescan, self._kick):
            self._kick.clear()
            await self.scan()

    async def _watch(self, stop: asyncio.Event, events_stop: asyncio.Event) -> None:
        """Events from the kernel (inotify), else from watchfiles; when they fail
        (watchfiles raises on a name that is not UTF-8, and on trouble of its own), rescan
        and watch again after a pause."""
        failures = 0
        kernel = not self.force_polling and sys.platform == "linux"
        while not stop.is_set():
            try:
                if kernel:
                    try:
                        await self._kernel_events(stop)
                        continue
                    except Unavailable as exc:
                        kernel = False
                        log.warning("watcher.no_inotify", error=str(exc),
                                    note="watching with watchfiles instead")
                self._watching.set()  # (watchfiles says nothing of when it watches)
                async for changes in watchfiles.awatch(
                        self.spool.inbox, stop_event=events_stop, watch_filter=None, debounce=100,
                        step=50, force_polling=self.force_polling or None, poll_delay_ms=200,
                        ignore_permission_denied=True):
                    failures = 0
                    await self._on_changes(path for change, path in changes
                                           if change != watchfiles.Change.deleted)
            except Exception as exc:  # noqa: BLE001 - events only wake us; scans are the truth
                failures += 1
                delay = min(WATCH_RETRY_CAP, 0.25 * 2 ** failures)
                log.warning("watcher.error", error=describe_error(exc), attempt=failures,
                            retry_in=delay, note="rescanning; events are watched again soon")
                self._kick.set()
                await _wait(stop, delay)

    async def _kernel_events(self, stop: asyncio.Event) -> None:
        events = InboxEvents(self.spool.inbox)
        stopping = asyncio.ensure_future(stop.wait())
        stopping.add_done_callback(lambda _: events.stop())
        try:
            async for batch in events.batches():
                if not self._watching.is_set():
                    self._watching.set()
                    if self._offering is not None:  # a scan did not wait for the watches
                        self._kick.set()
                if None in batch:
                    self._kick.set()  # events were lost, or a folder is not watched
                await self._on_changes(str(p) for p in batch if p is not None)
        finally:
            stopping.cancel()

    async def _on_changes(self, paths: Iterable[str]) -> None:
        wanted = []
        for raw in set(paths):
            path = Path(raw)
            try:
                rel = path.relative_to(self.spool.inbox)
            except ValueError:
                continue
            if not rel.parts or any(is_ignored_name(part) for part in rel.parts):
                continue
            if any(has_accepted_suffix(part) for part in rel.parts[:-1]):
                continue  # inside a folder named like a file: that folder is taken whole
            wanted.append(path)
        await self._offer_all(wanted, forget_missing=False)

    async def _offer_all(self, paths: list[Path], forget_missing: bool) -> None:
        """Stat *paths* in a thread (network mounts can be slow), then offer each."""
        stat_at = time.time()
        stats = await asyncio.to_thread(_stat_all, paths)
        for path, st in zip(paths, stats, strict=True):
            if st is None:
                if forget_missing:
                    self._pending.pop(path, None)
            elif stat.S_ISDIR(st.st_mode) and not has_accepted_suffix(path.name):
                self._kick.set()  # a folder moved in brings files no event will name
            else:
                await self._offer(path, st, stat_at)


def _surface(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("watcher.scan_failed", error=repr(exc), exc_info=exc)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path, follow_symlinks=False)
    except OSError:
        return None


def _stat_all(paths: list[Path]) -> list[os.stat_result | None]:
    return [_stat(p) for p in paths]


async def first_of(*aws: Awaitable[object], limit: float | None = None) -> None:
    """Wait until the first of *aws* is done (or *limit* seconds), cancelling the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _wait(stop: asyncio.Event, seconds: float, kick: asyncio.Event | None = None) -> bool:
    """Sleep up to *seconds* or until *kick*; True as soon as *stop* is set."""
    if kick is None:
        await first_of(stop.wait(), limit=seconds)
    else:
        await first_of(stop.wait(), kick.wait(), limit=seconds)
    return stop.is_set()
