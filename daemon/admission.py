"""How files come in: claimed from inbox/ only as fast as job and upload slots allow,
each with a ticket that holds its slots and gives each back exactly once.

Every connector instance has an :class:`Admission` of its own (files that go to no
instance have one too, to be rejected): the claimer hands each settled file to its
instance's queue without waiting, so an instance that cannot go on (its credentials
refused, its API down) holds up only its own files. Three kinds of slot each:

- *intake* (twice ``workers.uploads``, never more than ``workers.max_active_jobs``): a
  file claimed from inbox/ holds one from its claim until its first upload attempt
  begins, so checking it overlaps other files' jobs while a node never holds more files
  than it can start on soon (daemons sharing a spool split the work);
- *job* (``workers.max_active_jobs``): taken just before a file's first job is created
  (a file resumed at start takes it first of all), given back when its last job ends;
- *upload* (``workers.uploads``): held for one upload attempt, never while waiting to
  try again.

A stop makes every ticket raise :class:`~daemon.retry.Stopping` at its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from daemon.ledger import utcnow
from daemon.logs import get_logger
from daemon.retry import Stopping
from daemon.spool import FileChanged, Spool, SpoolError
from daemon.trouble import Troubles
from daemon.watcher import Watcher
from daemon.work import Work

# A file up to this size is read for its checks in the same trip as its claim.
QUICK_EXAMINE_BYTES = 1 << 20
# Settled files an instance's queue holds, waiting for a claim slot; more are left in
# inbox/ and offered again by a rescan, asked for once the queue is half empty (an
# instance that cannot go on does not fill memory with a backlog's names).
WAITING_FILES = 10_000

log = get_logger()


class Admission:
    def __init__(self, uploads: int, max_active_jobs: int) -> None:
        self.jobs = asyncio.Semaphore(max_active_jobs)
        self.uploads = asyncio.Semaphore(uploads)
        # Claimed and not yet uploading: two per upload slot, one being checked while one
        # waits, so a claim's few ms of checks never leave a free job slot idle; never
        # more than the job slots, so a node does not hold files it cannot start soon.
        self.intake = asyncio.Semaphore(min(2 * uploads, max_active_jobs))
        self.stopping = False
        self.waiting: asyncio.Queue[Path] = asyncio.Queue(WAITING_FILES)
        self.turned_away = False  # files were left in inbox/ for want of room in `waiting`

    async def claim_ticket(self) -> Ticket:
        """A ticket for the next file to claim, once an intake slot is free."""
        await self.intake.acquire()
        return Ticket(self, intake=True)

    def resume_ticket(self) -> Ticket:
        """A ticket for a file found at start (it takes its job slot before anything)."""
        return Ticket(self, intake=False)


class Claimer:
    """Hands each settled file to its instance's queue; claims from each queue as that
    instance's tickets allow and hands the file on with its ticket; reads a small one for
    its checks in the same trip to a thread as its claim."""

    def __init__(self, lanes: Mapping[str | None, Admission],
                 lane_of: Callable[[Path], str | None], watcher: Watcher, spool: Spool,
                 examine: Callable[[Work], None], quick: Callable[..., Awaitable[Any]],
                 spawn: Callable[[Coroutine[Any, Any, Any], str], object],
                 carry: Callable[[Work, Ticket], Awaitable[None]],
                 troubles: Troubles) -> None:
        self.lanes = lanes  # by instance; None: files that go to none (to be rejected)
        self.lane_of = lane_of
        self.watcher = watcher
        self.spool = spool
        self.examine = examine
        self.quick = quick
        self.spawn = spawn
        self.carry = carry  # the rest of the file's life
        self.troubles = troubles

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._hand_on())
            for name, admission in self.lanes.items():
                group.create_task(self._claim_for(name, admission))

    async def _hand_on(self) -> None:
        while True:
            path = await self.watcher.out.get()
            lane = self.lanes[self.lane_of(path)]
            try:
                lane.waiting.put_nowait(path)
            except asyncio.QueueFull:
                self.watcher.release(path)  # offered again by a rescan
                lane.turned_away = True

    async def _claim_for(self, instance: str | None, admission: Admission) -> None:
        try:
            while True:
                ticket = await admission.claim_ticket()
                try:
                    path = await admission.waiting.get()
                except BaseException:
                    ticket.close()
                    raise
                if admission.turned_away and admission.waiting.qsize() <= WAITING_FILES // 2:
                    admission.turned_away = False
                    self.watcher.rescan_soon()  # for the files turned away
                self.spawn(self._take(path, ticket, instance), path.name)
        finally:
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:  # the watcher may offer them again
                    self.watcher.release(admission.waiting.get_nowait())

    async def _take(self, path: Path, ticket: Ticket, instance: str | None) -> None:
        try:
            work = await self._claim(path, instance)
        except BaseException:
            ticket.close()
            raise
        if work is None:
            ticket.close()  # another node took it, it vanished, or it changed
            return
        log.info("file.claimed", file=work.rel, claim_id=work.claimed.claim_id,
                 instance=instance)
        await self.carry(work, ticket)

    async def _claim(self, path: Path, instance: str | None) -> Work | None:
        expect = self.watcher.signature(path)
        try:
            work = await self.quick(self._claim_and_examine, path, expect, instance)
        except FileChanged:
            self.watcher.recheck(path)  # still being written: let it settle again
            return None
        except (OSError, SpoolError) as exc:
            # Left in inbox/: the next scan offers it again. Shown in /readyz until then.
            problem = getattr(exc, "strerror", None) or str(exc)
            if self.troubles.set("unclaimable", str(path), problem):
                log.error("file.claim_failed", file=shown(path), error=problem,
                          note="left in inbox/ and tried again at each rescan; the daemon "
                               "needs write access to its folder (droppers: umask 002)")
            return None
        finally:
            self.watcher.release(path)
        if self.troubles.clear("unclaimable", str(path)):
            log.info("file.claimable_again", file=shown(path))
        return work

    def _claim_and_examine(self, path: Path, expect: tuple[int, int] | None,
                           instance: str | None) -> Work | None:
        claimed = self.spool.claim(path, expect)
        if claimed is None:
            return None
        work = Work(claimed, utcnow(), instance)
        if expect is not None and expect[0] <= QUICK_EXAMINE_BYTES:
            self.examine(work)  # a bigger file is read on the default executor
        return work


def shown(path: Path) -> str:
    """A path for a log line, bytes that are not UTF-8 shown as ``\\xff``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class Ticket:
    """One file's hold on the daemon's capacity, from its claim to its filing."""

    def __init__(self, admission: Admission, intake: bool) -> None:
        self._admission = admission
        self._intake = intake
        self._job = False

    def check(self) -> None:
        """Raise :class:`Stopping` once the daemon stops: the ledger knows how far it got."""
        if self._admission.stopping:
            raise Stopping

    async def job(self) -> None:
        """Hold a job slot (waiting for one unless held already)."""
        if not self._job:
            self.check()
            await self._admission.jobs.acquire()
            self._job = True

    def job_done(self) -> None:
        """The file's last job has ended: another may start while this one is filed."""
        if self._job:
            self._job = False
            self._admission.jobs.release()

    @asynccontextmanager
    async def upload(self) -> AsyncIterator[None]:
        """An upload slot for one attempt; the first gives the intake slot back."""
        async with self._admission.uploads:
            self._give_intake()
            self.check()
            yield

    def _give_intake(self) -> None:
        if self._intake:
            self._intake = False
            self._admission.intake.release()

    def close(self) -> None:
        """Give back whatever is still held."""
        self._give_intake()
        self.job_done()
