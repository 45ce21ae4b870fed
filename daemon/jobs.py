"""A file's jobs: a plan of one or more parts; each part's job created, its id recorded,
the job followed. One path, whatever the plan.

A file with more data rows than ``objects.<name>.max_rows_per_job`` is cut into parts,
each the header plus up to that many rows, one job each; any other file is a one-part
plan: the whole file as dropped, recorded in its own ledger row as before. The cut is
recorded before the first part is sent, each job id the moment it exists (before
anything else), and each part's end once known, so a restart goes on with what is not
done and never creates a recorded job again. Parts go one after another; a part that
fails stops the rest; the file is done when every part is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from daemon import jsonfile
from daemon.admission import Ticket
from daemon.answers import Records
from daemon.checks import Checks
from daemon.client import OpenConnectorsClient
from daemon.jsonfile import JsonInspection
from daemon.ledger import Ledger, Part, utcnow
from daemon.metrics import Metrics
from daemon.normalise import UploadBody, part_spans, upload_body, upload_kind
from daemon.results import COMPLETE, FAILED, REJECTED, Outcome
from daemon.retry import ApiError, RejectedError, RetryPolicy, TooLargeError, TransientError
from daemon.settings import InstanceSettings
from daemon.tracker import Tracker
from daemon.work import Work

NOT_SENT = "NOT_SENT"
# How much bigger a file's upload can be than the file (Windows-1252 to UTF-8 triples a
# character; CRLF line ends and quotes add a little): a file this much under
# max_bytes_per_job needs no measuring.
BYTES_GROWTH = 4


@dataclass
class Following:
    """A job being followed, as the web view shows it."""
    claim_id: str
    file: str
    instance: str
    obj: str | None
    job_id: str
    submitted_at: str
    api_status: str | None = None  # the last status word polled

    def as_dict(self) -> dict[str, Any]:
        return {"claim_id": self.claim_id, "file": self.file, "instance": self.instance,
                "object": self.obj, "job_id": self.job_id, "submitted_at": self.submitted_at,
                "api_status": self.api_status}


@dataclass(frozen=True)
class Plan:
    whole: bool          # one job for the file as dropped, recorded in its own row
    parts: list[Part]


async def started(ledger: Ledger, work: Work, resumed: bool) -> bool:
    """Has a job of the file been recorded (a file resumed after a restart)?"""
    return resumed and (work.job_id is not None or any(
        p.job_id for p in await ledger.parts(work.claimed.claim_id)))


class Jobs:
    """The jobs of one connector instance (see :mod:`daemon.instances`)."""

    def __init__(self, instance: InstanceSettings, callback_url: str, ledger: Ledger,
                 client: OpenConnectorsClient, policy: RetryPolicy, tracker: Tracker,
                 checks: Checks, metrics: Metrics) -> None:
        self.instance = instance
        self.name = instance.name
        self.callback_url = callback_url
        self.ledger = ledger
        self.client = client
        self.policy = policy
        self.tracker = tracker
        self.checks = checks
        self.metrics = metrics
        # Uploads whose body has gone out: the API may be acting on it, so a stop waits
        # for the answer instead of cutting them (a cut one would be sent again).
        self.answering: set[asyncio.Task[Any]] = set()
        self.active: dict[str, Following] = {}   # jobs being followed now, by id
        self.uploads_now = 0

    async def run(self, work: Work, ticket: Ticket, resumed: bool) -> Outcome:
        """Every part's job created (unless recorded) and followed to its end."""
        plan = await self._plan(work, resumed)
        await ticket.job()
        ended: dict[int, Outcome] = {}
        for part in plan.parts:
            if part.result_json:  # ended before a restart
                ended[part.part] = _outcome(await asyncio.to_thread(json.loads,
                                                                    part.result_json))
            else:
                ticket.check()
                ended[part.part] = await self._run_part(work, ticket, plan, part)
                if not plan.whole:
                    summary = _summary(part, ended[part.part])
                    await self.ledger.finish_part(work.claimed.claim_id, part.part,
                                                  await asyncio.to_thread(json.dumps, summary))
            if ended[part.part].status != COMPLETE:
                break
        ticket.job_done()
        return self._partial(work, _settled(ended[1] if plan.whole
                                            else combine(plan.parts, ended)))

    def _partial(self, work: Work, outcome: Outcome) -> Outcome:
        """A file with some records failed goes where ``[objects.<name>] partial`` says."""
        partial = self.instance.object_settings(work.obj or "").partial
        if not (outcome.ok and outcome.records_failed) or partial == "done":
            return outcome
        return dataclasses.replace(outcome, status=FAILED, reason=(
            f"{outcome.reason} ([objects.{work.obj}] partial = \"failed\")"))

    async def _plan(self, work: Work, resumed: bool) -> Plan:
        claim_id = work.claimed.claim_id
        parts = await self.ledger.parts(claim_id) if resumed else []
        if not parts and work.job_id is None:  # a whole file's job recorded: never cut
            spans = await self._cut(work)
            if spans:
                await self.ledger.plan_parts(claim_id, spans)
                parts = await self.ledger.parts(claim_id)
        if parts:
            return Plan(False, parts)
        return Plan(True, [Part(1, 0, work.rows or 0, work.job_id, work.submitted_at, None,
                                work.possible_duplicate)])

    async def _cut(self, work: Work) -> list[tuple[int, int]]:
        """Where to cut the file into parts (none: one job takes it whole): at most
        ``max_rows_per_job`` rows and ``max_bytes_per_job`` bytes of upload each."""
        conf = self.instance.object_settings(work.obj or "")
        total, size, found = work.rows or 0, work.size or 0, work.inspection
        max_rows = conf.max_rows_per_job if conf.max_rows_per_job < total else 0
        columns = self.checks.columns(self.name, work.obj)
        ref, max_bytes = work.claimed.ref, conf.max_bytes_per_job
        measure: Callable[[], list[tuple[int, int]]]
        if isinstance(found, JsonInspection):
            lines, view = found.upload_source(ref)
            measure = partial(jsonfile.part_spans, lines, view, columns, max_rows, max_bytes)
            growth, size = 1, jsonfile.most_sent(size, columns)
        elif found is None or found.dialect is None or size <= max_bytes and (
                max_rows == 0 and found.passes_through(columns)):
            return []  # sent as dropped, and small enough
        else:
            growth = BYTES_GROWTH
            measure = partial(part_spans, ref, found.dialect, columns, max_rows, max_bytes)
        if size * growth <= max_bytes:  # however it is rendered
            return [(first, min(max_rows, total - first))
                    for first in range(0, total, max_rows)] if max_rows else []
        spans = await asyncio.to_thread(measure)
        if not spans and size > max_bytes:
            # Its rendering fits (a file as dropped can be larger: quotes, blank lines):
            # one part, so the rendering is what is sent.
            return [(0, total)]
        return spans

    async def _run_part(self, work: Work, ticket: Ticket, plan: Plan, part: Part) -> Outcome:
        job_id, submitted_at, duplicate = part.job_id, part.submitted_at, part.possible_duplicate
        if job_id is None:
            work.possible_duplicate, work.retry_reason = False, None
            rows = None if plan.whole else range(part.first_row, part.first_row + part.rows)
            created = await self._send(work, ticket, rows)
            duplicate = work.possible_duplicate
            if isinstance(created, Outcome):
                return dataclasses.replace(created, possible_duplicate=duplicate)
            job_id, submitted_at = created, utcnow()
            await self._record(work, plan, part, job_id, submitted_at, duplicate)
        if work.job_id is None or plan.whole:
            work.job_id, work.submitted_at = job_id, submitted_at
        ticket.check()  # its job id is recorded: followed again at the next start
        outcome = await self.follow(work, job_id, submitted_at or utcnow())
        return dataclasses.replace(outcome, possible_duplicate=duplicate, job_id=job_id)

    async def _record(self, work: Work, plan: Plan, part: Part, job_id: str,
                      submitted_at: str, duplicate: bool) -> None:
        """Record the new job's id before anything else, not cancellable half-way."""
        claim_id = work.claimed.claim_id
        if plan.whole:
            await asyncio.shield(self.ledger.record_job(
                claim_id, job_id, submitted_at, work.obj or "", work.hub or "", work.attempts,
                duplicate, self.name))
            work.log = work.log.bind(job_id=job_id)
            work.log.info("job.created", object=work.obj, hub=work.hub,
                          attempts=work.attempts, possible_duplicate=duplicate)
        else:
            await asyncio.shield(self.ledger.record_part_job(claim_id, part.part, job_id,
                                                             submitted_at, duplicate, self.name))
            work.log.info("job.created", job_id=job_id, part=part.part,
                          parts=len(plan.parts), object=work.obj, hub=work.hub,
                          attempts=work.attempts, possible_duplicate=duplicate)

    async def _send(self, work: Work, ticket: Ticket, rows: range | None) -> str | Outcome:
        """Create one job for the file (or for *rows* of it): its id, or why not. Each
        attempt holds an upload slot; waits between attempts hold none."""
        assert work.inspection is not None
        body = upload_body(work.claimed.ref, work.inspection,
                           self.checks.columns(self.name, work.obj), rows)
        try:
            return await self.policy.call("create_job", lambda: self._create(work, body),
                                          around=ticket.upload, file=work.rel)
        except TooLargeError as exc:
            limit = self.instance.object_settings(work.obj or "").max_bytes_per_job
            return Outcome(FAILED, f"the API refused the upload as over its size or time "
                           f"limit ({exc.status}): {exc.message}; lower [objects.{work.obj}] "
                           f"max_bytes_per_job (now {limit}) to send it in smaller parts")
        except RejectedError as exc:
            return Outcome(REJECTED, f"the API refused the upload ({exc.status}): "
                           f"{exc.message}{self._mistyped(work)}")
        except TransientError as exc:
            return Outcome(FAILED, f"gave up uploading after {exc.elapsed:.0f} s and "
                           f"{exc.attempts} attempt{'s' if exc.attempts > 1 else ''}: "
                           f"{exc.message}")
        except ApiError as exc:  # an answer we cannot use; the job may exist
            return Outcome(FAILED, f"upload answer unusable, not retried: {exc.message}")
        finally:
            if work.inspection.content is not None and rows is None:
                # Not kept while the job runs (32 jobs may run for hours).
                work.inspection = dataclasses.replace(work.inspection, content=None)

    def _mistyped(self, work: Work) -> str:
        """A hint when the object the API refused looks like a mistyped instance name."""
        settings = self.checks.settings
        if not settings.instance_folders or not work.obj or work.rel_path.parts[0] != work.obj:
            return ""
        close = difflib.get_close_matches(work.obj, list(settings.instances), n=1)
        if not close:
            return ""
        return (f" (inbox/{work.obj}/ was taken as an object of instance {self.name}; did "
                f"you mean instance {close[0]!r}? its files go in inbox/{close[0]}/<object>/)")

    async def _create(self, work: Work, body: UploadBody) -> str:
        assert work.obj is not None and work.hub is not None
        work.attempts += 1  # recorded with the job id (a crash here means: upload again)
        if work.retry_reason is not None:
            # The last attempt may have made a job: this one may make a second.
            work.possible_duplicate = True
            self.metrics.create_retries.labels(self.name, work.retry_reason).inc()
            work.retry_reason = None
        assert work.inspection is not None
        meta, content_type = upload_kind(work.inspection,
                                         self.instance.object_settings(work.obj).metadata)
        callback_url = self.callback_url
        if callback_url:  # echoed in the callback: which file the job belongs to
            meta = {**(meta or {}), "callback-payload": {"bulkdrop_file": work.claimed.claim_id}}
        task = asyncio.current_task()
        assert task is not None
        self.metrics.uploads_in_flight.labels(self.name).inc()
        self.uploads_now += 1
        started = time.monotonic()
        try:
            job = await self.client.create_job(
                work.hub, work.obj, work.claimed.rel.name, self._counted(body), metadata=meta,
                callback_url=callback_url, on_sent=lambda: self.answering.add(task),
                content_type=content_type)
        except TransientError as exc:
            if exc.maybe_done:
                work.retry_reason = exc.kind
            raise
        finally:
            self.answering.discard(task)
            self.metrics.uploads_in_flight.labels(self.name).dec()
            self.uploads_now -= 1
        self.metrics.upload_seconds.observe(time.monotonic() - started)
        return job.id

    def _counted(self, body: UploadBody) -> UploadBody:
        sent = self.metrics.uploaded_bytes.labels(self.name)
        if isinstance(body, bytes):
            sent.inc(len(body))
            return body

        async def counting() -> AsyncIterator[bytes]:
            async for chunk in body():
                sent.inc(len(chunk))
                yield chunk

        return counting

    async def follow(self, work: Work, job_id: str, submitted_at: str) -> Outcome:
        """Follow one job to its end (cancelled at shutdown: it resumes from the ledger)."""
        assert work.hub is not None
        following = self.active[job_id] = Following(
            work.claimed.claim_id, work.rel, self.name, work.obj, job_id, submitted_at)
        try:
            end = await self.tracker.follow(work.hub, job_id, submitted_at, work.log,
                                            on_status=partial(setattr, following, "api_status"))
            self.metrics.job_seconds.observe(
                time.time() - datetime.fromisoformat(submitted_at).timestamp())
            return await self.tracker.conclude(work.hub, job_id, end)
        finally:
            self.active.pop(job_id, None)


def _settled(outcome: Outcome) -> Outcome:
    """A file whose every record failed is FAILED, whatever its jobs said."""
    counted = Records(outcome.records_total, outcome.records_failed)
    if not (outcome.ok and counted.all_failed):
        return outcome
    return dataclasses.replace(outcome, status=FAILED, reason=(
        f"{outcome.reason}: all {counted.total} records failed"))


def _rows(part: Part) -> list[int]:
    return [part.first_row + 1, part.first_row + part.rows]


def _summary(part: Part, outcome: Outcome) -> dict[str, Any]:
    """A part's end as the ledger keeps it and the result lists it."""
    return {"part": part.part, "rows": _rows(part), "job_id": outcome.job_id,
            "status": outcome.status, "api_status": outcome.api_status,
            "records": {"total": outcome.records_total, "failed": outcome.records_failed,
                        "succeeded": Records(outcome.records_total,
                                             outcome.records_failed).succeeded},
            "reason": outcome.reason, "possible_duplicate": outcome.possible_duplicate,
            "errors": list(outcome.errors)}


def _outcome(summary: dict[str, Any]) -> Outcome:
    records = summary["records"]
    return Outcome(summary["status"], summary["reason"], summary["api_status"],
                   records["total"], records["failed"], summary["errors"],
                   possible_duplicate=bool(summary.get("possible_duplicate")),
                   job_id=summary["job_id"])


def combine(parts: list[Part], ended: dict[int, Outcome]) -> Outcome:
    """One outcome for the file from its parts' outcomes."""
    summaries = {n: _summary(next(p for p in parts if p.part == n), o) for n, o in ended.items()}
    jobs = [({k: v for k, v in summaries[p.part].items() if k != "errors"}
             if p.part in summaries else
             {"part": p.part, "rows": _rows(p), "job_id": None, "status": NOT_SENT})
            for p in parts]
    errors = [{**e, "part": s["part"]} if isinstance(e, dict) else {"part": s["part"], "error": e}
              for s in summaries.values() for e in s["errors"]]
    totals = [o.records_total for o in ended.values()]
    total = sum(t for t in totals if t is not None) if None not in totals else None
    failed = sum(o.records_failed or 0 for o in ended.values())
    duplicate = any(o.possible_duplicate for o in ended.values())
    bad = next((n for n, o in ended.items() if o.status != COMPLETE), None)
    if bad is None and len(ended) == len(parts):
        reason = (f"{len(parts)} jobs completed: {total if total is not None else '?'} records"
                  + (f", {failed} failed" if failed else ""))
        last = ended[parts[-1].part]
        return Outcome(COMPLETE, reason, last.api_status, total, failed, errors, jobs=jobs,
                       possible_duplicate=duplicate)
    assert bad is not None
    first, last_row = summaries[bad]["rows"]
    reason = (f"part {bad} of {len(parts)} (rows {first}-{last_row}): "
              f"{ended[bad].reason}")
    unsent = [j["part"] for j in jobs if j["status"] == NOT_SENT]
    if unsent:
        reason += f"; part{'s' if len(unsent) > 1 else ''} {', '.join(map(str, unsent))} not sent"
    return Outcome(FAILED, reason, ended[bad].api_status, total, failed, errors, jobs=jobs,
                   possible_duplicate=duplicate)
