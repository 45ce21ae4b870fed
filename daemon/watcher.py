"""Finds complete files in inbox/: a start-up scan, watchfiles events, periodic rescans.

Events only wake us; the scans make sure a missed or overflowed event delays a file
and never loses it. A file is handed on once it has settled: its mtime is at least
``settle_seconds`` old, or (clock skew, coarse mtimes) its size and mtime have not
changed for that long while we watched.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import watchfiles

from daemon.logs import get_logger
from daemon.spool import Spool, is_ignored_name

log = get_logger()


class Watcher:
    def __init__(self, spool: Spool, out: asyncio.Queue[Path], *, settle_seconds: float,
                 rescan_seconds: float, force_polling: bool) -> None:
        self.spool = spool
        self.out = out
        self.settle = settle_seconds
        self.rescan = rescan_seconds
        self.force_polling = force_polling
        self._handed: dict[Path, tuple[int, int]] = {}  # in `out` or being claimed
        self._pending: dict[Path, tuple[int, int, float]] = {}  # size, mtime_ns, since
        self._scanning = asyncio.Lock()
        self._kick = asyncio.Event()     # a folder appeared: scan now
        self._stop = asyncio.Event()
        self.scans = 0
        # Told (files waiting, oldest mtime or None) after each full scan (in its thread).
        self.on_scan: Callable[[int, float | None], None] = lambda waiting, oldest: None

    def release(self, path: Path) -> None:
        """The claimer is done with *path* (claimed or vanished): see it afresh next time."""
        self._handed.pop(path, None)

    def signature(self, path: Path) -> tuple[int, int] | None:
        """(size, mtime_ns) of *path* when it was judged settled."""
        return self._handed.get(path)

    def recheck(self, path: Path) -> None:
        """*path* changed after it was handed on: watch it settle again."""
        self._handed.pop(path, None)
        self._pending[path] = (-1, -1, time.monotonic())

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch(stop))
            tg.create_task(self._settle_loop(stop))
            tg.create_task(self._rescan_loop(stop))

    async def scan(self) -> None:
        """Offer every file in inbox/; the walk runs in a thread and waits when we are full."""
        if self._scanning.locked():
            return
        async with self._scanning:
            loop = asyncio.get_running_loop()
            offered = await asyncio.to_thread(self._walk, loop)
            self.scans += 1
            log.debug("scan.done", offered=offered, pending=len(self._pending))

    def _walk(self, loop: asyncio.AbstractEventLoop) -> int:
        offered = 0
        oldest: float | None = None
        for path in self.spool.iter_inbox():
            if self._stop.is_set():
                break
            if path in self._handed:
                continue
            stat_at = time.time()
            st = _stat(path)
            if st is None:
                continue
            oldest = st.st_mtime if oldest is None else min(oldest, st.st_mtime)
            asyncio.run_coroutine_threadsafe(self._offer(path, st, stat_at), loop).result()
            offered += 1
        self.on_scan(offered, oldest)
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

    async def _put(self, path: Path) -> None:
        """Wait for room in the queue, unless we are stopping."""
        if self.out.full():
            await _first(self.out.put(path), self._stop.wait())
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
            if self._pending:
                paths = list(self._pending)
                await self._offer_all(paths, forget_missing=True)
            await _wait(stop, tick)

    async def _rescan_loop(self, stop: asyncio.Event) -> None:
        await self.scan()
        while not await _wait(stop, self.rescan, self._kick):
            self._kick.clear()
            await self.scan()

    async def _watch(self, stop: asyncio.Event) -> None:
        async for changes in watchfiles.awatch(
                self.spool.inbox, stop_event=stop, watch_filter=None, debounce=100, step=50,
                force_polling=self.force_polling or None, poll_delay_ms=200,
                ignore_permission_denied=True):
            await self._on_changes(path for change, path in changes
                                   if change != watchfiles.Change.deleted)

    async def _on_changes(self, paths: Iterable[str]) -> None:
        wanted = []
        for raw in set(paths):
            path = Path(raw)
            try:
                rel = path.relative_to(self.spool.inbox)
            except ValueError:
                continue
            if rel.parts and not any(is_ignored_name(part) for part in rel.parts):
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
            elif stat.S_ISDIR(st.st_mode):
                self._kick.set()  # a folder moved in brings files no event will name
            else:
                await self._offer(path, st, stat_at)


def _stat(path: Path) -> os.stat_result | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) else None


def _stat_all(paths: list[Path]) -> list[os.stat_result | None]:
    return [_stat(p) for p in paths]


async def _first(*aws: Awaitable[object], limit: float | None = None) -> None:
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
        await _first(stop.wait(), limit=seconds)
    else:
        await _first(stop.wait(), kick.wait(), limit=seconds)
    return stop.is_set()
