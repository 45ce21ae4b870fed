"""The life of one claimed file: check, upload, follow the job, file it with its result.

Each step is recorded in the ledger before the next begins, so :meth:`Pipeline.resume`
can pick a file up from its ledger row after a crash: CLAIMED uploads again,
SUBMITTED follows the recorded job id (never uploading again), FINISHING files it.
A daemon that stops raises :class:`Stopping` at the next step, caught once per file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, TypeVar

from daemon import csvfile, ledger
from daemon.client import OpenConnectorsClient
from daemon.fileref import NotAFile
from daemon.filing import ERRORS_SUFFIX, RESULT_SUFFIX, Filer, Sidecar
from daemon.ledger import Ledger, Row, utcnow
from daemon.logs import get_logger
from daemon.metrics import Metrics
from daemon.normalise import UploadBody, upload_body
from daemon.parts import run_parts
from daemon.results import COMPLETE, FAILED, REJECTED, Outcome, build_result, errors_csv
from daemon.retry import (
    ApiError,
    RejectedError,
    RetryPolicy,
    Stopping,
    TransientError,
    backoff_delay,
)
from daemon.settings import Settings
from daemon.spool import Claimed, Spool, has_accepted_suffix
from daemon.tracker import Tracker
from daemon.trouble import Troubles

# Claims, small files' checks and filing run on two threads of their own. On 2,000 small
# files (bench/), two threads filed about 10% more files/s than the event loop's default
# executor with six (fewer threads contending for the GIL) and one thread about 20%
# fewer (each file's fsyncs waiting in a row). Big reads keep to the default executor.
QUICK_THREADS = 2
# A file up to this size is read for its checks in the same trip as its claim.
QUICK_EXAMINE_BYTES = 1 << 20
# A file that cannot be read for one of these is at fault itself; any other error (no
# free descriptors, no memory, I/O trouble) passes, and the read is tried again.
FILES_FAULT = frozenset({errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR})
READ_RETRY_CAP = 60.0

T = TypeVar("T")


class Slot:
    """One slot of a semaphore: held from the start or taken when first needed, and given
    back early, exactly once."""

    def __init__(self, semaphore: asyncio.Semaphore, held: bool = True) -> None:
        self._semaphore: asyncio.Semaphore | None = semaphore
        self._held = held

    async def take(self) -> None:
        """Wait for the slot, unless it is held (or was given back: never taken twice)."""
        if self._semaphore is not None and not self._held:
            await self._semaphore.acquire()
            self._held = True

    def release(self) -> None:
        if self._semaphore is not None and self._held:
            self._semaphore.release()
        self._semaphore = None


def _release(slot: Slot | None) -> None:
    if slot is not None:
        slot.release()


async def _take_slot(slot: Slot | None) -> None:
    if slot is not None:
        await slot.take()


@dataclass
class Work:
    """What we know about one claimed file; mirrors its ledger row."""
    claimed: Claimed
    received_at: str
    obj: str | None = None
    hub: str | None = None
    job_id: str | None = None
    attempts: int = 0
    submitted_at: str | None = None
    possible_duplicate: bool = False  # a job creation was retried after an attempt that
                                      # may have reached the API
    sha256: str | None = None
    inspection: csvfile.Inspection | None = None
    size: int | None = None
    unreadable: OSError | None = None  # it could not be read for its checks
    problem: str | None = None         # it never becomes a job (not a file, a bad name)
    retry_reason: str | None = None    # the last attempt may have made a job: why
    log: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.problem = self.problem or self.claimed.problem

    @property
    def examined(self) -> bool:
        """Read for its checks already (a new claim is, in the claim's trip to a thread)."""
        return (self.sha256 is not None or self.unreadable is not None
                or self.problem is not None)

    @property
    def rel(self) -> str:
        return str(self.claimed.rel)

    @property
    def rows(self) -> int | None:
        return self.inspection.rows if self.inspection else None


class Pipeline:
    def __init__(self, settings: Settings, spool: Spool, ledger: Ledger,
                 client: OpenConnectorsClient, policy: RetryPolicy, tracker: Tracker,
                 upload_slots: asyncio.Semaphore, metrics: Metrics,
                 troubles: Troubles | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.spool = spool
        self.ledger = ledger
        self.client = client
        self.policy = policy
        self.tracker = tracker
        self.upload_slots = upload_slots
        self.troubles = troubles or Troubles()
        self.stopping = False
        self.finishing: set[asyncio.Task[None]] = set()
        self.tracking: set[asyncio.Task[object]] = set()
        # Uploads whose body has gone out: the API may be acting on it, so a stop waits
        # for the answer instead of cutting them (a cut one would be sent again).
        self.answering: set[asyncio.Task[Any]] = set()
        self.counts: dict[str, int] = {COMPLETE: 0, FAILED: 0, REJECTED: 0}
        self.active_jobs: set[str] = set()   # being followed now
        self.uploads_now = 0
        self._quick = ThreadPoolExecutor(QUICK_THREADS, thread_name_prefix="bulkdrop-files")
        self.filer = Filer(spool, self.ledger.record_dest, self.quick, self._filing_trouble)

    async def quick(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a short file-system step (a claim, a small file's checks, filing) off the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._quick, fn, *args)

    def close(self) -> None:
        self._quick.shutdown(wait=False)

    async def process(self, work: Work, job_slot: Slot | None = None,
                      intake: asyncio.Semaphore | None = None, new_claim: bool = False) -> None:
        """Carry one claimed file from its upload to done/ or failed/.

        A file claimed from inbox/ holds an *intake* slot from its claim until it may
        upload, so checking it overlaps with other files' jobs and uploads while the daemon
        still claims no more than it can start on soon. Its *job_slot* is taken once the
        checks pass, when a job is about to be created: a file the checks reject does not
        wait for one.
        """
        work.log = get_logger(file=work.rel)
        held = Slot(intake) if intake is not None else None
        written: asyncio.Future[None] | None = None
        if new_claim:
            # Queued now, durable before the job id is recorded. Checking and uploading need
            # not wait for it: until a job id is recorded, a crash means uploading again
            # either way (a claimed file without a row is claimed afresh).
            written = self.ledger.add_claim(work.claimed.claim_id, work.rel,
                                            self.spool.to_stored(work.claimed.path),
                                            work.received_at, work.claimed.problem)
        try:
            try:
                outcome = await self._check(work)
                if outcome is None and await self._in_parts(work, resumed=not new_claim):
                    await _take_slot(job_slot)
                    _release(held)
                    outcome = await run_parts(self, work, self._max_rows(work))
                elif outcome is None:
                    await _take_slot(job_slot)
                    created = await self._upload(work, held)
                    if written is not None:
                        await asyncio.shield(written)
                    outcome = await self._record(work, created)
            finally:
                _release(held)
                if written is not None:
                    await asyncio.shield(written)  # whatever happened, the row is there
            if outcome is None:  # a job exists: follow it
                outcome = await self._track(work)
        except Stopping:
            return  # the ledger knows how far it got: the next start goes on from there
        if job_slot is not None:
            job_slot.release()  # the job has ended: another may start while this is filed
        await self._finish(work, outcome)

    async def _upload(self, work: Work, intake: Slot | None) -> str | Outcome:
        """Create the job, each attempt in an upload slot (the intake slot is given back
        once the first is taken); waits between attempts hold no slot."""

        @asynccontextmanager
        async def upload_slot() -> AsyncIterator[None]:
            async with self.upload_slots:
                _release(intake)
                if self.stopping:
                    raise Stopping
                yield

        created = await self.send(work, around=upload_slot)
        if work.inspection is not None and work.inspection.content is not None:
            # Not kept while the job runs (32 jobs may run for hours).
            work.inspection = dataclasses.replace(work.inspection, content=None)
        return created

    async def resume(self, row: Row, job_slot: Slot | None = None) -> None:
        path = self.spool.from_stored(row.claimed_path)
        if path is None:
            get_logger(file=row.rel_path).error(
                "recovery.foreign_path", path=row.claimed_path,
                note="the ledger names a file outside processing/: left alone")
            await self.ledger.mark_finished(row.claim_id, utcnow())
            return
        claimed = Claimed(row.claim_id, PurePosixPath(row.rel_path), path, problem=row.problem)
        work = Work(claimed, row.received_at, row.object, row.hub, row.job_id, row.attempts,
                    row.submitted_at, possible_duplicate=bool(row.possible_duplicate))
        work.log = get_logger(file=work.rel, job_id=row.job_id)
        if row.state == ledger.FINISHING and row.result_json:
            stored = await asyncio.to_thread(json.loads, row.result_json)
            errors = stored.pop("errors_all", [])
            dest = self.spool.filed_from_stored(row.dest_path) if row.dest_path else None
            work.obj = stored.get("object")
            await self._file(work, stored, errors, row.outcome == COMPLETE, dest, resumed=True)
            return
        if not await asyncio.to_thread(os.path.lexists, path):
            # Only a file removed by hand from processing/ gets here.
            work.log.error("file.vanished", path=str(path), state=row.state)
            await self.ledger.mark_finished(claimed.claim_id, utcnow())
            return
        if await self.ledger.parts(row.claim_id) or row.state != ledger.SUBMITTED \
                or not row.job_id:
            await self.process(work, job_slot)  # sent in parts, or not sent yet
            return
        try:
            if self.stopping:
                raise Stopping
            await self._inspect_quietly(work)
            outcome = await self._track(work)
        except Stopping:
            return  # followed again at the next start
        if job_slot is not None:
            job_slot.release()
        await self._finish(work, outcome)

    # -- steps ---------------------------------------------------------------------------

    def _route(self, rel: PurePosixPath) -> str | None:
        if len(rel.parts) > 1:
            return rel.parts[0]
        return self.settings.spool.default_object or None

    def examine(self, work: Work) -> None:
        """Hash the claimed file and, for a CSV, detect and validate it; never anything
        but the regular file claimed (see :class:`daemon.fileref.FileRef`).

        Blocking: it runs in a thread, for a new claim in the same trip as the claim.
        """
        if work.problem is not None:
            return  # a link, a FIFO, a bad name ...: never read
        rel = work.claimed.rel
        ref = work.claimed.ref
        try:
            if has_accepted_suffix(rel.name):
                found = csvfile.inspect(ref, self._columns(self._route(rel)))
                work.sha256, work.size, work.inspection = found.sha256, found.bytes, found
            else:
                work.sha256, work.size = csvfile.digest(ref)
        except NotAFile as exc:
            work.problem = exc.strerror
        except OSError as exc:
            work.unreadable = exc

    async def _examined(self, work: Work) -> None:
        """Examine the file; when it cannot be read for a reason that is not its own (no
        free descriptors, I/O trouble), wait and try again, never judging the file by it."""
        for attempt in itertools.count(1):
            if not work.examined:
                await asyncio.to_thread(self.examine, work)
            exc = work.unreadable
            if exc is None or exc.errno in FILES_FAULT:
                if attempt > 1:
                    self.troubles.clear("reading", work.rel)
                return
            if self.stopping:
                raise Stopping
            delay = backoff_delay(attempt, cap=READ_RETRY_CAP) + 0.1
            problem = exc.strerror or str(exc)
            work.log.warning("file.read_retry", error=problem, attempt=attempt,
                             retry_in=round(delay, 2))
            self.troubles.set("reading", work.rel, problem)
            self.metrics.io_retries.labels("reading").inc()
            work.unreadable = None
            await asyncio.sleep(delay)

    async def _check(self, work: Work) -> Outcome | None:
        """Route, read and validate the file; an Outcome when it must not become a job."""
        if self.stopping:
            raise Stopping
        await self._examined(work)
        if self.stopping:
            raise Stopping
        if work.problem is not None:
            return Outcome(REJECTED, work.problem)
        if work.unreadable is not None:
            exc = work.unreadable
            return Outcome(REJECTED, f"cannot read the file: {exc.strerror or exc}; "
                           "check its permissions and drop it again")
        rel = work.claimed.rel
        obj = self._route(rel)
        if obj is None:
            return Outcome(REJECTED, "files directly in inbox/ need an object: drop it into "
                           "inbox/<object>/ (e.g. inbox/contact/) or set [spool] default_object")
        work.obj, work.hub = obj, self.settings.hub_for(obj)
        if work.inspection is None:
            return Outcome(REJECTED, f"not a .csv, .tsv or .txt file ({rel.name!r}); "
                           "export it as CSV and drop it again")
        if work.inspection.problem:
            return Outcome(REJECTED, work.inspection.problem,
                           errors=[p.as_dict() for p in work.inspection.problems],
                           errors_total=work.inspection.problems_total)
        return None

    def _max_rows(self, work: Work) -> int:
        limit = self.settings.object_settings(work.obj).max_rows_per_job if work.obj else 0
        return limit or (1 << 62)

    async def _in_parts(self, work: Work, resumed: bool) -> bool:
        """Too many rows for one job, or already being sent in parts (a resumed file)."""
        return (self._max_rows(work) < (work.rows or 0)
                or (resumed and bool(await self.ledger.parts(work.claimed.claim_id))))

    async def send(self, work: Work, rows: range | None = None,
                   around: Callable[[], AbstractAsyncContextManager[None]] | None = None
                   ) -> str | Outcome:
        """Create one job for the file (or for *rows* of it): its id, or why not."""
        assert work.inspection is not None
        body = upload_body(work.claimed.ref, work.inspection, self._columns(work.obj), rows)
        try:
            return await self.policy.call("create_job", lambda: self._create(work, body),
                                          around=around, file=work.rel)
        except RejectedError as exc:
            return Outcome(REJECTED, f"the API refused the upload ({exc.status}): {exc.message}")
        except TransientError as exc:
            return Outcome(FAILED, f"gave up uploading after {exc.elapsed:.0f} s and "
                           f"{exc.attempts} attempt{'s' if exc.attempts > 1 else ''}: "
                           f"{exc.message}")
        except ApiError as exc:  # an answer we cannot use; the job may exist
            return Outcome(FAILED, f"upload answer unusable, not retried: {exc.message}")

    async def _record(self, work: Work, created: str | Outcome) -> Outcome | None:
        """Record the new job's id before anything else; or pass on why there is none."""
        if isinstance(created, Outcome):
            return created
        work.job_id, work.submitted_at = created, utcnow()
        # Recorded before anything else happens, and not cancellable half-way.
        await asyncio.shield(self.ledger.record_job(
            work.claimed.claim_id, created, work.submitted_at, work.obj or "", work.hub or "",
            work.attempts, work.possible_duplicate))
        work.log = work.log.bind(job_id=created)
        work.log.info("job.created", object=work.obj, hub=work.hub, attempts=work.attempts,
                      possible_duplicate=work.possible_duplicate)
        return None

    def _columns(self, obj: str | None) -> csvfile.Columns:
        if obj is None:
            return csvfile.Columns()
        return csvfile.Columns.of(self.settings.object_settings(obj))

    async def _create(self, work: Work, body: UploadBody) -> str:
        assert work.obj is not None and work.hub is not None
        work.attempts += 1  # recorded with the job id (a crash here means: upload again)
        if work.retry_reason is not None:
            # The last attempt may have made a job: this one may make a second.
            work.possible_duplicate = True
            self.metrics.create_retries.labels(work.retry_reason).inc()
            work.retry_reason = None
        meta = self.settings.object_settings(work.obj).metadata
        callback_url = self.settings.callback.public_url
        if callback_url:  # echoed in the callback: which file the job belongs to
            meta = {**(meta or {}), "callback-payload": {"bulkdrop_file": work.claimed.claim_id}}
        task = asyncio.current_task()
        assert task is not None
        self.metrics.uploads_in_flight.inc()
        self.uploads_now += 1
        started = time.monotonic()
        try:
            job = await self.client.create_job(
                work.hub, work.obj, work.claimed.rel.name, self._counted(body), metadata=meta,
                callback_url=callback_url, on_sent=lambda: self.answering.add(task))
        except TransientError as exc:
            if exc.maybe_done:
                work.retry_reason = exc.kind
            raise
        finally:
            self.answering.discard(task)
            self.metrics.uploads_in_flight.dec()
            self.uploads_now -= 1
        self.metrics.upload_seconds.observe(time.monotonic() - started)
        return job.id

    def _counted(self, body: UploadBody) -> UploadBody:
        sent = self.metrics.uploaded_bytes
        if isinstance(body, bytes):
            sent.inc(len(body))
            return body

        async def counting() -> AsyncIterator[bytes]:
            async for chunk in body():
                sent.inc(len(chunk))
                yield chunk

        return counting

    async def _track(self, work: Work) -> Outcome:
        if self.stopping:
            raise Stopping  # its job id is recorded: followed again at the next start
        assert work.job_id is not None
        return await self.follow(work, work.job_id, work.submitted_at or utcnow())

    async def follow(self, work: Work, job_id: str, submitted_at: str) -> Outcome:
        """Follow one job to its end (cancelled at shutdown: it resumes from the ledger)."""
        assert work.hub is not None
        task = asyncio.current_task()
        assert task is not None
        self.tracking.add(task)
        self.active_jobs.add(job_id)
        try:
            end = await self.tracker.follow(work.hub, job_id, submitted_at, work.log)
            self.metrics.job_seconds.observe(
                time.time() - datetime.fromisoformat(submitted_at).timestamp())
            return await self.tracker.conclude(work.hub, job_id, end)
        finally:
            self.tracking.discard(task)
            self.active_jobs.discard(job_id)

    async def _finish(self, work: Work, outcome: Outcome) -> None:
        result = build_result(
            outcome, rel=work.rel, obj=work.obj, hub=work.hub, job_id=work.job_id,
            sha256=work.sha256, size=work.size, attempts=work.attempts,
            csv_info=_csv_info(work.inspection, self._columns(work.obj)),
            received_at=work.received_at, submitted_at=work.submitted_at,
            finished_at=utcnow(),
            possible_duplicate=work.possible_duplicate or outcome.possible_duplicate)
        errors = list(outcome.errors)
        record = {**result, "errors_all": errors}
        stored = (json.dumps(record) if len(errors) < 1000
                  else await asyncio.to_thread(json.dumps, record))
        # Its own name, most often free; filing finds out and chooses another if not.
        dest = self.filer.natural(work.claimed, outcome.ok)
        await asyncio.shield(self.ledger.mark_finishing(
            work.claimed.claim_id, outcome.status, outcome.api_status, outcome.reason, stored,
            self.spool.to_stored(dest)))
        await self._file(work, result, errors, outcome.ok, dest)

    async def _file(self, work: Work, result: dict[str, Any], errors: list[Any], ok: bool,
                    dest: Path | None, resumed: bool = False) -> None:
        # Shielded and tracked: a shutdown waits for it instead of leaving half a result.
        task = asyncio.create_task(self._file_now(work, result, errors, ok, dest, resumed))
        self.finishing.add(task)
        task.add_done_callback(self.finishing.discard)
        await asyncio.shield(task)

    async def _file_now(self, work: Work, result: dict[str, Any], errors: list[Any], ok: bool,
                        dest: Path | None, resumed: bool) -> None:
        """File it (see :mod:`daemon.filing`), then record that it is finished."""
        claimed = work.claimed
        placed = await self.filer.file(claimed, ok, self._sidecars(work, result, errors),
                                       dest, resumed, work.log)
        await self.ledger.mark_finished(claimed.claim_id, result["finished_at"])
        if placed is None:
            work.log.error("file.vanished", path=str(claimed.path))
            return
        self.counts[result["status"]] = self.counts.get(result["status"], 0) + 1
        obj = work.obj or ""
        self.metrics.files_finished.labels(result["status"], obj).inc()
        if result["records"] and result["records"]["failed"]:
            self.metrics.records_failed.labels(obj).inc(result["records"]["failed"])
        work.log.info("file.finished", status=result["status"], api_status=result["api_status"],
                      reason=result["reason"], dest=self.spool.to_stored(placed))

    def _sidecars(self, work: Work, result: dict[str, Any], errors: list[Any]) -> list[Sidecar]:
        """The errors CSV (when there are errors) and the result, written in the filing
        thread. A file's own problems are all in its errors CSV, however many: when more
        were found than were kept, the file is checked again as the CSV is written."""
        out = []
        if result["errors_total"] > len(errors):
            ref, columns = work.claimed.ref, self._columns(result["object"])
            out.append(Sidecar(ERRORS_SUFFIX,
                               lambda fh: csvfile.write_problems(ref, columns, fh)))
        elif errors:
            out.append(Sidecar(ERRORS_SUFFIX, lambda fh: fh.write(errors_csv(errors))))
        out.append(Sidecar(RESULT_SUFFIX, lambda fh: _write_json(result, fh)))
        return out

    def _filing_trouble(self, key: str, problem: str | None) -> None:
        if problem is None:
            self.troubles.clear("filing", key)
        else:
            self.troubles.set("filing", key, problem)
            self.metrics.io_retries.labels("filing").inc()

    async def _inspect_quietly(self, work: Work) -> None:
        """Hash and describe a file whose job already exists (resumed after a restart)."""
        columns = self._columns(work.obj)
        try:
            found = await asyncio.to_thread(csvfile.inspect, work.claimed.ref, columns)
        except OSError:
            return
        work.sha256, work.size, work.inspection = found.sha256, found.bytes, found


def _write_json(result: dict[str, Any], fh: BinaryIO) -> None:
    fh.write((json.dumps(result, indent=2, ensure_ascii=False) + "\n").encode())


def _csv_info(found: csvfile.Inspection | None, columns: csvfile.Columns) -> dict[str, Any] | None:
    """What the file turned out to be: dialect, encoding, rows, converted or sent as is."""
    if found is None or found.dialect is None:
        return None
    return {**found.dialect.describe(), "rows": found.rows,
            "converted": not found.passes_through(columns)}
