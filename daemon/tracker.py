"""Follows created jobs to a terminal status: polling with backoff, early wake-ups, timeout."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from daemon.answers import ERRORS_LIKELY, read_status, records
from daemon.client import MAX_ERROR_PAGES, OpenConnectorsClient
from daemon.results import COMPLETE, FAILED, Outcome
from daemon.retry import ApiError, AuthError, RejectedError, RetryPolicy


@dataclass(frozen=True)
class JobEnd:
    status: str | None        # the API's last status word, verbatim
    ok: bool
    body: dict[str, Any]      # the last status response
    reason: str | None = None  # why it ended badly, when the API did not say


class Tracker:
    def __init__(self, client: OpenConnectorsClient, policy: RetryPolicy, *,
                 poll_interval: float, poll_max_interval: float, job_timeout: float) -> None:
        self.client = client
        self.policy = policy
        self.poll_interval = poll_interval
        self.poll_max_interval = poll_max_interval
        self.job_timeout = job_timeout
        self._wake: dict[str, asyncio.Event] = {}
        self._following: set[asyncio.Task[object]] = set()  # the tasks following a job

    def wake(self, job_id: str) -> bool:
        """Check *job_id* now (a callback said it changed); False if we do not follow it."""
        event = self._wake.get(job_id)
        if event is not None:
            event.set()
        return event is not None

    def cancel_all(self) -> None:
        """A stop: every job being followed is followed again from the ledger next time."""
        for task in self._following:
            task.cancel()

    async def follow(self, hub: str, job_id: str, submitted_at: str, log: Any,
                     on_status: Callable[[str | None], object] = lambda word: None) -> JobEnd:
        """Poll until the job ends or its time is up; poll errors never end it early.
        *on_status* is told each status word polled."""
        task = asyncio.current_task()
        assert task is not None
        self._following.add(task)
        try:
            return await self._follow(hub, job_id, submitted_at, log, on_status)
        finally:
            self._following.discard(task)

    async def _follow(self, hub: str, job_id: str, submitted_at: str, log: Any,
                      on_status: Callable[[str | None], object]) -> JobEnd:
        started = datetime.fromisoformat(submitted_at).timestamp()
        event = self._wake.setdefault(job_id, asyncio.Event())
        delay = self.poll_interval
        last: dict[str, Any] = {}
        unknown: set[str | None] = set()
        # The first poll is due poll_interval after the job was created, not after its
        # id was recorded; a job resumed after a restart is checked at once.
        first_due: float | None = started + delay
        try:
            while True:
                now = time.time()
                left = started + self.job_timeout - now
                if left <= 0:
                    return await self._timed_out(hub, job_id, last, log)
                due = now + delay if first_due is None else first_due
                first_due = None
                wait = min(due - now, delay, left)
                if wait > 0 and not event.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await event.wait()
                event.clear()
                delay = min(delay * 1.5, self.poll_max_interval)
                try:
                    body = await self.client.job_status(hub, job_id)
                except RejectedError as exc:
                    if exc.status == 404:
                        return JobEnd(None, False, last,
                                      f"the API no longer knows job {job_id}: {exc.message}")
                    log.warning("job.poll_failed", error=exc.message, status=exc.status,
                                retry_in=round(delay, 2))
                    continue
                except AuthError as exc:
                    await self.policy.gate.failed(exc)  # one line per attempt, not per job
                    continue
                except ApiError as exc:
                    log.warning("job.poll_failed", error=exc.message, retry_in=round(delay, 2))
                    continue
                self.policy.gate.ok()
                last = body
                status = read_status(body)
                log.debug("job.status", api_status=status.word)
                on_status(status.word)
                if status.ended:
                    return JobEnd(status.word, status.ended_well, body)
                if not status.known and status.word not in unknown:
                    unknown.add(status.word)  # once per word and job
                    log.warning("job.unknown_status", api_status=status.word,
                                note="not a word on record: taken as still running, "
                                     "followed until job_timeout_seconds")
        finally:
            self._wake.pop(job_id, None)

    async def _timed_out(self, hub: str, job_id: str, last: dict[str, Any], log: Any) -> JobEnd:
        word = read_status(last).word
        reason = (f"job {job_id} not finished after {self.job_timeout:g} s "
                  f"(last status {word or 'unknown'})")
        try:
            await self.client.cancel_job(hub, job_id)
            reason += "; asked the API to cancel it"
        except ApiError as exc:
            log.warning("job.cancel_failed", error=exc.message)
        return JobEnd(word, False, last, reason)

    async def errors(self, hub: str, job_id: str) -> list[Any]:
        """Every error record of the job, following the paging token."""
        records: list[Any] = []
        token: str | None = None
        for _ in range(MAX_ERROR_PAGES):
            page, token = await self.policy.call(
                "errors", partial(self.client.job_errors_page, hub, job_id, token))
            records.extend(page)
            if not token or not page:
                break
        return records

    async def conclude(self, hub: str, job_id: str, end: JobEnd) -> Outcome:
        """What the job's end means for its file. Its error records are read whenever
        there may be some: records failed, an ERROR or ABORTED end, or no failed count."""
        status = read_status(end.body)
        errors: list[Any] = []
        read, note = None, ""
        if end.reason is None and (status.upper in ERRORS_LIKELY or status.failed is None
                                   or status.failed > 0):
            try:
                errors = await self.errors(hub, job_id)
                read = len(errors)
            except ApiError as exc:
                note = f"; its error records could not be read: {exc.message}"
        counted = records(status.count, status.failed, read)
        total = "?" if counted.total is None else counted.total
        if not end.ok:
            reason = end.reason or f"job {job_id} ended {end.status}" + (
                f": {status.message}" if status.message else "")
            if counted.failed:
                reason += f" ({counted.failed} of {total} records failed)"
            return Outcome(FAILED, reason + note, end.status, counted.total, counted.failed,
                           errors)
        reason = f"job {job_id} completed: {total} records" + (
            f", {counted.failed} failed" if counted.failed else "")
        return Outcome(COMPLETE, reason + note, end.status, counted.total, counted.failed,
                       errors)
