"""The life of one claimed file, as a straight line: checks, then its jobs, then filing.

Each step is recorded in the ledger before the next begins, so :meth:`Pipeline.resume`
picks a file up from its ledger row after a crash: a file with no job recorded is
checked and sent again, one with a job recorded is only followed (never sent again),
one that was being filed is filed. A stop is :class:`~daemon.retry.Stopping`, raised
by the file's ticket at its next step and caught here, once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath

from daemon import ledger
from daemon.admission import Ticket
from daemon.checks import Checks
from daemon.filing import Filer
from daemon.instances import Instance
from daemon.jobs import started
from daemon.ledger import Ledger, Row, utcnow
from daemon.logs import get_logger
from daemon.results import FAILED, Outcome
from daemon.retry import Stopping
from daemon.settings import DEFAULT_INSTANCE
from daemon.spool import Claimed, Spool
from daemon.work import Work


class Pipeline:
    def __init__(self, spool: Spool, ledger: Ledger, checks: Checks,
                 instances: Mapping[str, Instance], filer: Filer,
                 resume_ticket: Callable[[str | None], Ticket]) -> None:
        self.spool = spool
        self.ledger = ledger
        self.checks = checks
        self.instances = instances
        self.filer = filer
        self.resume_ticket = resume_ticket  # a ticket of the file's instance

    async def process(self, work: Work, ticket: Ticket, new_claim: bool = False) -> None:
        """Carry one claimed file to done/ or failed/. Its *ticket* holds its slots until
        its jobs have ended (see :mod:`daemon.admission`); filing needs none."""
        work.log = work.log or get_logger(file=work.rel, instance=work.instance)
        written = None
        if new_claim:
            # Queued now, ahead of anything else about the file; nothing needs to wait
            # for it: until a job id is recorded a crash means sending again either way.
            written = self.ledger.add_claim(work.claimed.claim_id, work.rel,
                                            self.spool.to_stored(work.claimed.path),
                                            work.received_at, work.claimed.problem,
                                            work.instance or "")
        try:
            try:
                if not new_claim:
                    await ticket.job()  # a file found at start: recovery keeps the limit
                outcome = await self._outcome(work, ticket, resumed=not new_claim)
            finally:
                ticket.close()
                if written is not None:
                    await asyncio.shield(written)  # whatever happened, the row is there
        except Stopping:
            return  # the ledger knows how far it got: the next start goes on from there
        if (copy := work.upload_copy) is not None:  # its jobs have ended
            await asyncio.to_thread(copy.unlink, missing_ok=True)
        await self.filer.finish(work, outcome)

    async def _outcome(self, work: Work, ticket: Ticket, resumed: bool) -> Outcome:
        if await started(self.ledger, work, resumed):
            await self.checks.describe(work)  # for the result: its job exists, no verdict
            instance = self.instances.get(work.instance or "")
            if instance is None:
                return Outcome(FAILED, _unfollowable(work.instance))
            return await instance.jobs.run(work, ticket, resumed)
        outcome = await self.checks.check(work, ticket)
        if outcome is not None:
            return outcome
        assert work.instance is not None  # a file that passes its checks has one
        return await self.instances[work.instance].jobs.run(work, ticket, resumed)

    @staticmethod
    def instance_of(row: Row) -> str | None:
        """The instance of a file a run left: as recorded; a single-instance ledger's rows
        (NULL) are [api]'s, "default"; "" is a file that went to none."""
        if row.instance is None:
            return DEFAULT_INSTANCE
        return row.instance or None

    async def resume(self, row: Row) -> None:
        """Go on with a file a run left unfinished, from its ledger row."""
        instance = self.instance_of(row)
        ticket = self.resume_ticket(instance)
        path = self.spool.from_stored(row.claimed_path)
        log = get_logger(file=row.rel_path, instance=instance, job_id=row.job_id)
        if path is None:
            ticket.close()
            log.error("recovery.foreign_path", path=row.claimed_path,
                      note="the ledger names a file outside processing/: left alone")
            await self.ledger.mark_finished(row.claim_id, utcnow())
            return
        work = Work.resumed(row, Claimed(row.claim_id, PurePosixPath(row.rel_path), path,
                                         problem=row.problem), instance)
        work.log = log
        if row.state == ledger.FINISHING and row.result_json:
            ticket.close()
            await self.filer.refile(work, row)
        elif not await asyncio.to_thread(os.path.lexists, path):
            ticket.close()  # only a file removed by hand from processing/ gets here
            log.error("file.vanished", path=str(path), state=row.state)
            await self.ledger.mark_finished(row.claim_id, utcnow())
        else:
            await self.process(work, ticket)


def _unfollowable(instance: str | None) -> str:
    """Why a file whose job was made at an instance no longer configured fails."""
    if instance == DEFAULT_INSTANCE:
        made = ("its job was made with [api]'s credentials (before [instances] were set up), "
                "and [api] is no instance now (it has no element_token)")
        fix = "put [api] element_token back until such files are finished"
    else:
        made = f"its job was made at connector instance {instance!r}, no longer configured"
        fix = f"configure [instances.{instance}] again"
    return (f"{made}, so the job cannot be followed: {fix}, or check the job there and "
            "drop the file again if it did not complete")
