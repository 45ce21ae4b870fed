"""Simulator state: jobs, their lazily computed status, counters and background tasks."""

from __future__ import annotations

import asyncio
import builtins
import random
import time
from collections import Counter, deque
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import structlog

from daemon.sim.callbacks import post_callback
from daemon.sim.config import SimConfig, public_config
from daemon.sim.upload import Upload

log = structlog.get_logger("daemon.sim")

FIRST_JOB_ID = 1001
BAD_ENDINGS = {
    "sim-error": "ERROR",
    "sim-aborted": "ABORTED",
    "sim-cancelled": "CANCELLED",
    "sim-never": "NEVER",
}
# A file named with this runs under a status word on no list, then ends well.
UNKNOWN_MARKER, UNKNOWN_WORD = "sim-unknown", "VENDOR_PROCESSING"
# What a job that ended badly says, and under which key: ABORTED gives its reason in
# "error" only (as on record), the others in "message" too.
_FAILURE_TEXT = {
    "ERROR": ("The vendor rejected the bulk job (simulated)", ("message", "error")),
    "ABORTED": ("The platform aborted the bulk job (simulated)", ("error",)),
    "CANCELLED": ("The bulk job was cancelled", ("message",)),
}
PLAIN_ERROR_CODE = 74234


@dataclass
class Job:
    id: str
    hub: str
    object: str
    name: str | None  # the `path` query, e.g. "/a.csv"
    filename: str | None  # the multipart filename of the `file` part
    metadata: dict[str, Any] | None
    sha256: str
    bytes: int
    records_count: int
    failed_records: list[dict[str, Any]]
    failed_count: int
    callback_url: str | None
    outcome: str | None  # forced ending: ERROR/ABORTED/CANCELLED/NEVER, None = success
    job_seconds: float  # snapshot of config.job_seconds at creation
    created_at: datetime
    created_monotonic: float
    body: builtins.bytes | None = None  # kept when config.keep_bodies and <= 16 MiB
    status: str | None = None  # final status once terminal
    finished_at: datetime | None = None
    reported: bool = False  # a client has been told the terminal status
    callback_sent: bool = False
    space: str = ""  # whose job: the digest of the Element token that made it
    content_type: str = ""  # the file part's


class Simulator:
    """Everything the simulator knows; `create_app` serves one of these."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.jobs: dict[str, Job] = {}
        self.jobs_by_sha256: dict[str, list[str]] = {}
        self._next_id = FIRST_JOB_ID
        self._rng = random.Random(self.config.seed)
        self._rng_seed = self.config.seed
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.uploads_in_flight = 0
        self.unfinished_jobs = 0
        # Notifications received at /_sim/webhooks, the latest 1,000.
        self.webhooks: deque[dict[str, Any]] = deque(maxlen=1000)
        self.reset_counters()

    def reset_counters(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        # When each API request arrived (monotonic seconds), the latest 100,000, and the
        # job space (Element token digest, see gate.space_of) of each.
        self.request_times: deque[float] = deque(maxlen=100_000)
        self.request_spaces: deque[str] = deque(maxlen=100_000)
        self.responses: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()
        self.creates_attempted = 0
        self.callbacks_sent = 0
        self.callbacks_failed = 0
        self.retry_after_sent = 0
        self.client_disconnects = 0
        self.max_concurrent_uploads = self.uploads_in_flight
        self.max_unfinished_jobs = self.unfinished_jobs

    def rng(self) -> random.Random:
        # Reseed when the seed was changed live, so a PATCHed seed replays from the start.
        if self.config.seed != self._rng_seed:
            self._rng = random.Random(self.config.seed)
            self._rng_seed = self.config.seed
        return self._rng

    # -- uploads ----------------------------------------------------------------------

    def upload_started(self) -> None:
        self.creates_attempted += 1
        self.uploads_in_flight += 1
        self.max_concurrent_uploads = max(self.max_concurrent_uploads, self.uploads_in_flight)

    def upload_ended(self) -> None:
        self.uploads_in_flight -= 1

    def add_job(
        self,
        upload: Upload,
        *,
        hub: str,
        object_name: str,
        name: str | None,
        callback_url: str | None,
        space: str = "",
    ) -> Job:
        outcome: str | None = self.config.job_outcome
        marked = f"{name or ''} {upload.filename or ''}"
        for marker, ending in BAD_ENDINGS.items():
            if marker in marked:
                outcome = ending
        job = Job(
            id=str(self._next_id),
            hub=hub,
            object=object_name,
            name=name,
            filename=upload.filename,
            metadata=upload.metadata,
            sha256=upload.sha256,
            bytes=upload.bytes,
            records_count=upload.records_count,
            failed_records=upload.failed_records,
            failed_count=upload.failed_count,
            callback_url=callback_url,
            outcome=outcome,
            job_seconds=self.config.job_seconds,
            created_at=datetime.now(UTC),
            created_monotonic=time.monotonic(),
            body=upload.body,
            space=space,
            content_type=upload.content_type,
        )
        self._next_id += 1
        self.jobs[job.id] = job
        self.jobs_by_sha256.setdefault(job.sha256, []).append(job.id)
        self.unfinished_jobs += 1
        self.max_unfinished_jobs = max(self.max_unfinished_jobs, self.unfinished_jobs)
        log.info(
            "sim.job_created",
            job_id=job.id,
            object=job.object,
            file=job.name or job.filename,
            bytes=job.bytes,
            records=job.records_count,
            failed=job.failed_count,
        )
        if job.callback_url and outcome != "NEVER":
            self.spawn(self._finish_later(job))
        return job

    async def _finish_later(self, job: Job) -> None:
        # Status is computed lazily; this timer only makes sure a job nobody polls still
        # ends, so its callback goes out. Loop because a sleep may wake a hair early.
        while not self.is_terminal(job):
            remaining = job.created_monotonic + job.job_seconds - time.monotonic()
            await asyncio.sleep(max(remaining, 0.001))

    # -- status -----------------------------------------------------------------------

    def status_of(self, job: Job) -> str:
        """The job's status now, derived from the time elapsed since creation."""
        if job.status is not None:
            return job.status
        elapsed = time.monotonic() - job.created_monotonic
        if elapsed < job.job_seconds / 3:
            return "CREATED"
        if job.outcome == "NEVER" or elapsed < job.job_seconds:
            return UNKNOWN_WORD if UNKNOWN_MARKER in f"{job.name} {job.filename}" else "RUNNING"
        end = job.created_at + timedelta(seconds=job.job_seconds)
        self._finish(job, job.outcome or self.config.complete_word, end)
        assert job.status is not None
        return job.status

    def is_terminal(self, job: Job) -> bool:
        return self.status_of(job) not in ("CREATED", "RUNNING", UNKNOWN_WORD)

    def cancel(self, job: Job) -> None:
        if not self.is_terminal(job):
            self._finish(job, "CANCELLED", datetime.now(UTC))

    def _finish(self, job: Job, status: str, at: datetime) -> None:
        job.status = status
        job.finished_at = at
        log.info("sim.job_finished", job_id=job.id, status=status)
        if job.callback_url and not job.callback_sent:
            job.callback_sent = True
            self.spawn(self._send_callback(job, job.callback_url))

    def mark_reported(self, job: Job) -> None:
        """A client was just told the job's status; terminal means done for the counters."""
        if job.status is not None and not job.reported:
            job.reported = True
            self.unfinished_jobs -= 1

    def status_body(self, job: Job) -> dict[str, Any]:
        """The status body in the configured shape (``status_shape``)."""
        if self.config.status_shape == "v3":
            return self._v3_status(job)
        status = self.status_of(job)
        started = job.created_at + timedelta(seconds=job.job_seconds / 3)
        body: dict[str, Any] = {
            "id": job.id,
            "status": status,
            "object_name": job.object,
            "bulk_start_time": None if status == "CREATED" else _iso(started),
            "bulk_finish_time": _iso(job.finished_at) if job.finished_at else None,
        }
        if job.status is not None:
            body["recordsCount"] = job.records_count
            if status != "ERROR":  # an ERROR job gives no failed count: its errors tell
                body["recordsFailedCount"] = job.failed_count
            if status in _FAILURE_TEXT:
                text, keys = _FAILURE_TEXT[status]
                body.update(dict.fromkeys(keys, text))
        return body

    def _v3_status(self, job: Job) -> dict[str, Any]:
        status = self.status_of(job)
        body: dict[str, Any] = {
            "id": job.id,
            "jobStatus": "CANCELED" if status == "CANCELLED" else status,
            "objectName": job.object,
            "jobDirection": "UPLOAD",
            "fileFormat": "CSV",
            "createdDate": int(job.created_at.timestamp() * 1000),
        }
        if job.status is not None:
            body["recordCount"] = job.records_count
            if status != "ERROR":
                body["errorCount"] = job.failed_count
            if status in _FAILURE_TEXT:
                body["statusMessage"] = _FAILURE_TEXT[status][0]
        return body

    def error_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """One failed record in the configured shape (``error_shape``)."""
        if self.config.error_shape == "plain":
            return {**record["record"], "status": f"{PLAIN_ERROR_CODE}: {record['message']}"}
        return {**record, "recordNumber": record["recordNumber"] - 1 + self.config.row_base}

    def list_entry(self, job: Job) -> dict[str, Any]:
        body = self.status_body(job)
        body["id"] = int(job.id)
        body["job_direction"] = "UPLOAD"
        body["job_status"] = body.get("status", body.get("jobStatus"))
        body["createdDate"] = _iso(job.created_at)
        return body

    # -- callbacks and background tasks -----------------------------------------------

    async def _send_callback(self, job: Job, url: str) -> None:
        payload: dict[str, Any] = {
            "id": job.id,
            "status": job.status,
            "recordsCount": job.records_count,
            "recordsFailedCount": job.failed_count,
            "object_name": job.object,
        }
        if job.metadata and "callback-payload" in job.metadata:
            payload["callback-payload"] = job.metadata["callback-payload"]
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        ok = await post_callback(self._session, url, payload, self.config.signature_key, job.id)
        if ok:
            self.callbacks_sent += 1
        else:
            self.callbacks_failed += 1

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("sim.task_failed", error=repr(exc))

    async def aclose(self) -> None:
        """Cancel pending callbacks and timers, close the callback HTTP session."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def snapshot(self) -> dict[str, Any]:
        """Config (minus secrets) and counters, for GET /_sim/state."""
        return {
            "config": public_config(self.config),
            "jobs": len(self.jobs),
            "unfinished_jobs": self.unfinished_jobs,
            "uploads_in_flight": self.uploads_in_flight,
            "max_concurrent_uploads": self.max_concurrent_uploads,
            "max_unfinished_jobs": self.max_unfinished_jobs,
            "creates_attempted": self.creates_attempted,
            "duplicate_uploads": sum(len(ids) - 1 for ids in self.jobs_by_sha256.values()),
            "callbacks_sent": self.callbacks_sent,
            "callbacks_failed": self.callbacks_failed,
            "client_disconnects": self.client_disconnects,
            "requests": [
                {"method": m, "route": r, "count": n} for (m, r), n in sorted(self.requests.items())
            ],
            "responses": {str(code): n for code, n in sorted(self.responses.items())},
            "faults": dict(self.faults),
        }


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds")
