"""How files come in: claimed from inbox/ only as fast as job and upload slots allow,
each with a ticket that holds its slots and gives each back exactly once.

Three kinds of slot:

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
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
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

    async def claim_ticket(self) -> Ticket:
        """A ticket for the next file to claim, once an intake slot is free."""
        await self.intake.acquire()
        return Ticket(self, intake=True)

    def resume_ticket(self) -> Ticket:
        """A ticket for a file found at start (it takes its job slot before anything)."""
        return Ticket(self, intake=False)


class Claimer:
    """Claims settled files as tickets allow and hands each on with its ticket; reads a
    small one for its checks in the same trip to a thread as its claim."""

    def __init__(self, admission: Admission, watcher: Watcher, spool: Spool,
                 examine: Callable[[Work], None], quick: Callable[..., Awaitable[Any]],
                 spawn: Callable[[Coroutine[Any, Any, Any], str], object],
                 carry: Callable[[Work, Ticket], Awaitable[None]],
                 troubles: Troubles) -> None:
        self.admission = admission
        self.watcher = watcher
        self.spool = spool
        self.examine = examine
        self.quick = quick
        self.spawn = spawn
        self.carry = carry  # the rest of the file's life
        self.troubles = troubles

    async def run(self) -> None:
        while True:
            ticket = await self.admission.claim_ticket()
            try:
                path = await self.watcher.out.get()
            except BaseException:
                ticket.close()
                raise
            self.spawn(self._take(path, ticket), path.name)

    async def _take(self, path: Path, ticket: Ticket) -> None:
        try:
            work = await self._claim(path)
        except BaseException:
            ticket.close()
            raise
        if work is None:
            ticket.close()  # another node took it, it vanished, or it changed
            return
        log.info("file.claimed", file=work.rel, claim_id=work.claimed.claim_id)
        await self.carry(work, ticket)

    async def _claim(self, path: Path) -> Work | None:
        expect = self.watcher.signature(path)
        try:
            work = await self.quick(self._claim_and_examine, path, expect)
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

    def _claim_and_examine(self, path: Path, expect: tuple[int, int] | None) -> Work | None:
        claimed = self.spool.claim(path, expect)
        if claimed is None:
            return None
        work = Work(claimed, utcnow())
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
