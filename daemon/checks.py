"""Checks of one claimed file: route it, read it (never anything but the regular file
claimed), validate it. An :class:`~daemon.results.Outcome` when it must not become a
job, None when it may.

Reading a file can fail for a reason that is not the file's own (no free descriptors,
I/O trouble): then the read waits and is tried again, shown in ``/readyz``, and never
becomes the file's verdict.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
from pathlib import Path, PurePosixPath
from typing import Any

from daemon import csvfile, csvsplit, jsonfile, rawfile
from daemon.admission import Ticket
from daemon.fileref import FileRef, NotAFile
from daemon.logs import get_logger
from daemon.metrics import Metrics
from daemon.results import REJECTED, Outcome
from daemon.retry import backoff_delay
from daemon.settings import Route, Settings
from daemon.spool import has_accepted_suffix, is_json_name
from daemon.trouble import Troubles
from daemon.work import Inspection, Work

# A file that cannot be read for one of these is at fault itself; any other error (no
# free descriptors, no memory, I/O trouble) passes, and the read is tried again.
FILES_FAULT = frozenset({errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR})
READ_RETRY_CAP = 60.0


class Checks:
    def __init__(self, settings: Settings, troubles: Troubles, metrics: Metrics,
                 processing: Path) -> None:
        self.settings = settings
        self.troubles = troubles
        self.metrics = metrics
        self.processing = processing  # processing/<node>/: an array's copy as JSON lines

    def copy_of(self, work: Work) -> Path | None:
        """Where a JSON array is copied as JSON lines while it is checked (the upload reads
        the copy; it goes once the file's jobs have ended, or at the next start)."""
        if not is_json_name(work.claimed.rel.name):
            return None
        return self.processing / f".{work.claimed.claim_id}.upload.jsonl.tmp"

    def route(self, rel: PurePosixPath) -> Route:
        """The instance and object a file is for (see :meth:`Settings.route`)."""
        return self.settings.route(rel)

    def columns(self, instance: str | None, obj: str | None) -> csvfile.Columns:
        """What the object's settings do to a file's columns, at that instance."""
        found = self.settings.instances.get(instance) if instance is not None else None
        if obj is None or found is None:
            return csvfile.Columns()
        return csvfile.Columns.of(found.object_settings(obj))

    def examine(self, work: Work) -> None:
        """Hash the claimed file and, for a CSV or JSON file, read and validate it; never
        anything but the regular file claimed (see :class:`daemon.fileref.FileRef`).

        Blocking: it runs in a thread, for a new claim in the same trip as the claim.
        """
        if work.problem is not None:
            return  # a link, a FIFO, a bad name ...: never read
        rel = work.claimed.rel
        ref = work.claimed.ref
        try:
            if has_accepted_suffix(rel.name):
                route = self.route(rel)
                found = inspect_file(ref, rel.name, self.columns(route.instance, route.obj),
                                     self.copy_of(work))
                work.sha256, work.size, work.inspection = found.sha256, found.bytes, found
            else:
                work.sha256, work.size = rawfile.digest(ref)
        except NotAFile as exc:
            work.problem = exc.strerror
        except OSError as exc:
            work.unreadable = exc
        except MemoryError:
            raise  # not the file's verdict
        except Exception as exc:  # noqa: BLE001 - a file the checks cannot read is rejected
            # A fault of the checks', found by this file: it is rejected, saying so, rather
            # than failing again at every start.
            (work.log or get_logger(file=work.rel)).error("file.check_failed",
                                                         error=repr(exc), exc_info=exc)
            work.problem = (f"bulkdrop could not check it ({type(exc).__name__}: {exc}); "
                            "this is a fault in bulkdrop: please report it with the file")

    async def check(self, work: Work, ticket: Ticket) -> Outcome | None:
        """Route, read and validate the file; an Outcome when it must not become a job."""
        ticket.check()
        await self._examined(work, ticket)
        ticket.check()
        if work.problem is not None:
            return Outcome(REJECTED, work.problem)
        if work.unreadable is not None:
            exc = work.unreadable
            return Outcome(REJECTED, f"cannot read the file: {exc.strerror or exc}; "
                           "check its permissions and drop it again")
        rel = work.claimed.rel
        route = self.route(rel)
        if route.instance is None or route.obj is None:
            return Outcome(REJECTED, route.problem or "no route")
        # A file resumed after a restart stays at its instance while that is configured
        # (a single-instance ledger's files finish under "default"); only its object is
        # taken from its path.
        if work.instance not in self.settings.instances:
            work.instance = route.instance
        assert work.instance is not None
        work.obj = route.obj
        work.hub = self.settings.instances[work.instance].hub_for(route.obj)
        if work.inspection is None:
            return Outcome(REJECTED, f"not a CSV or JSON file by its name ({rel.name!r}: "
                           "names end .csv, .tsv, .txt, .json, .jsonl or .ndjson); export "
                           "it as CSV or JSON and drop it again")
        if work.inspection.problem:
            return Outcome(REJECTED, work.inspection.problem,
                           errors=[p.as_dict() for p in work.inspection.problems],
                           errors_total=work.inspection.problems_total)
        return None

    async def describe(self, work: Work) -> None:
        """Hash and describe a file whose job already exists (resumed after a restart):
        for its result only, never a verdict. A file sent in parts has its route from
        its path (its ledger row holds the first part's only when sent whole)."""
        if work.obj is None:
            work.obj = self.route(work.claimed.rel).obj
        if work.hub is None and work.obj:
            work.hub = self.settings.instance_or_default(work.instance).hub_for(work.obj)
        try:
            found = await asyncio.to_thread(inspect_file, work.claimed.ref, work.claimed.rel.name,
                                            self.columns(work.instance, work.obj),
                                            self.copy_of(work))
        except OSError:
            return
        work.sha256, work.size, work.inspection = found.sha256, found.bytes, found

    async def _examined(self, work: Work, ticket: Ticket) -> None:
        """Examine the file; when it cannot be read for a reason that is not its own,
        wait and try again, never judging the file by it."""
        for attempt in itertools.count(1):
            if not work.examined:
                await asyncio.to_thread(self.examine, work)
            exc = work.unreadable
            if exc is None or exc.errno in FILES_FAULT:
                if attempt > 1:
                    self.troubles.clear("reading", work.rel)
                return
            ticket.check()
            delay = backoff_delay(attempt, cap=READ_RETRY_CAP) + 0.1
            problem = exc.strerror or str(exc)
            work.log.warning("file.read_retry", error=problem, attempt=attempt,
                             retry_in=round(delay, 2))
            self.troubles.set("reading", work.rel, problem)
            self.metrics.io_retries.labels("reading").inc()
            work.unreadable = None
            await asyncio.sleep(delay)


def inspect_file(ref: FileRef, name: str, columns: csvfile.Columns,
                 copy_to: Path | None = None) -> Inspection:
    """Read and check the file as what its name says it is: JSON (an array copied to
    *copy_to* as JSON lines), else CSV."""
    if is_json_name(name):
        return jsonfile.inspect(ref, columns, copy_to=copy_to)
    return csvsplit.inspect(ref, columns)


def file_info(found: Inspection | None, columns: csvfile.Columns
              ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """What the file turned out to be, for its result's ``csv`` or ``json``: dialect and
    encoding, or form; objects or rows; converted or sent as dropped."""
    if isinstance(found, jsonfile.JsonInspection):
        return None, (found.describe(columns) if found.form is not None else None)
    if found is None or found.dialect is None:
        return None, None
    return {**found.dialect.describe(), "rows": found.rows,
            "converted": not found.passes_through(columns)}, None
