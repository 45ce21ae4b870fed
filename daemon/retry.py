"""The one retry policy for every request to Open Connectors.

Outcomes are types, decided in one place (:func:`daemon.client.classify`):
``TransientError`` is retried with full-jitter exponential backoff (honouring
``Retry-After``) until the deadline; ``AuthError`` waits on the shared
:class:`AuthGate` and never counts against the deadline; ``RejectedError`` is final.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from daemon.logs import get_logger

T = TypeVar("T")
log = get_logger()


class ApiError(Exception):
    """An answer or failure from the API; ``str()`` is safe to log and to show users."""

    def __init__(self, message: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


class TransientError(ApiError):
    """Connection error, timeout, 429 or 5xx: worth trying again.

    ``maybe_done``: the request may have reached the API and been acted on (a timeout, a
    connection lost after connecting, a 5xx but 503): repeating a job creation after
    such an error may create a second job. When the policy gives up it sets ``attempts``
    and ``elapsed`` (seconds since the first attempt).
    """

    def __init__(self, message: str, status: int | None = None,
                 retry_after: float | None = None, maybe_done: bool = False) -> None:
        super().__init__(message, status, retry_after)
        self.maybe_done = maybe_done
        self.attempts = 1
        self.elapsed = 0.0

    @property
    def kind(self) -> str:
        """For metrics: ``connection``, ``timeout``, ``429`` or ``5xx``."""
        if self.status is None:
            return "timeout" if "timed out" in self.message else "connection"
        return "429" if self.status == 429 else "5xx"


class Stopping(Exception):  # noqa: N818 - an outcome, like arq's Retry
    """The daemon is stopping: no new attempt starts. What was done is in the ledger."""


class AuthError(ApiError):
    """401/403: the credentials, not the file. Pauses all uploads."""


class RejectedError(ApiError):
    """Any other 4xx: the API will not take this request as it is."""


class TooLargeError(RejectedError):
    """A 429 that is no rate limit: the upload was over the API's size or time limit
    (6 GB, 3,600 s). The same upload would get the same answer."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), 1e9)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, base: float = 1.0, cap: float = 60.0,
                  rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return (rng or random).uniform(0, min(cap, base * 2 ** attempt))


class AuthGate:
    """Closed while the API refuses our credentials; every request waits at it.

    The first request to see a 401/403 closes the gate and becomes the prober: it
    retries with backoff (one log line per attempt) while the others wait. The first
    success opens the gate again for everyone.
    """

    def __init__(self, base: float = 1.0, cap: float = 60.0, instance: str | None = None) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._probing = asyncio.Lock()
        self.base, self.cap = base, cap
        self.failures = 0
        self.refusal: str | None = None  # the API's last word on our credentials, while shut
        self.log = log.bind(instance=instance) if instance else log

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def wait_open(self) -> None:
        await self._open.wait()

    def reopen(self) -> None:
        """Open the gate without claiming the credentials work; the next 401 closes it."""
        self._open.set()

    def ok(self) -> None:
        if not self._open.is_set():
            self.log.info("auth.restored", failed_attempts=self.failures)
        self.failures = 0
        self.refusal = None
        self._open.set()

    async def failed(self, error: AuthError) -> bool:
        """Called by a request that got 401/403; returns when it may try again.

        True when the caller is the prober: it must try again without waiting at the
        gate, which stays closed until a request succeeds.
        """
        if self._probing.locked():
            await self._open.wait()
            return False
        async with self._probing:
            self._open.clear()
            self.refusal = f"HTTP {error.status}: {error.message}"
            delay = backoff_delay(self.failures, self.base, self.cap) + self.base / 2
            self.failures += 1
            self.log.warning("auth.refused", status=error.status, error=error.message,
                             attempt=self.failures, retry_in=round(delay, 2),
                             note="uploads and polls of this instance wait until the API "
                                  "takes its credentials again")
            try:
                await asyncio.sleep(delay)
            except BaseException:
                self.reopen()  # cancelled: do not leave the others waiting for good
                raise
        return True


class RetryPolicy:
    def __init__(self, deadline_seconds: float, gate: AuthGate | None = None,
                 base: float = 1.0, cap: float = 60.0, instance: str | None = None) -> None:
        self.deadline_seconds = deadline_seconds
        self.gate = gate or AuthGate(base, cap, instance)
        self.log = log.bind(instance=instance) if instance else log
        self.base, self.cap = base, cap
        self.on_retry: Callable[[str], None] = lambda reason: None

    async def call(self, what: str, op: Callable[[], Awaitable[T]],
                   deadline_seconds: float | None = None,
                   around: Callable[[], AbstractAsyncContextManager[object]] | None = None,
                   **log_context: Any) -> T:
        """Run *op* until it succeeds, is rejected, or transient errors outlast the deadline.

        Retries go on until the deadline has passed: the last wait is cut to it and one
        last attempt made. Each attempt runs inside *around* (an upload slot, say), and
        the waits between attempts outside it, so a backoff never holds what others need.
        """
        limit = self.deadline_seconds if deadline_seconds is None else deadline_seconds
        started = time.monotonic()
        give_up_at = started + limit
        attempt = 0
        probing = False  # we closed the gate: retry past it, and never leave it closed
        try:
            while True:
                if not probing:
                    await self.gate.wait_open()
                try:
                    if around is None:
                        result = await op()
                    else:
                        async with around():
                            result = await op()
                except AuthError as exc:
                    self.on_retry("auth")
                    probing = await self.gate.failed(exc)
                    continue
                except TransientError as exc:
                    # Says nothing about the credentials: a prober stays the prober.
                    attempt += 1
                    now = time.monotonic()
                    left = give_up_at - now
                    if left <= 0:
                        exc.attempts, exc.elapsed = attempt, now - started
                        raise
                    delay = backoff_delay(attempt - 1, self.base, self.cap)
                    if exc.retry_after is not None:
                        delay = max(delay, exc.retry_after)
                    delay = min(delay, left)
                    self.on_retry(exc.kind if exc.kind != "timeout" else "connection")
                    self.log.info("api.retry", request=what, error=exc.message, attempt=attempt,
                             retry_in=round(delay, 2), seconds_left=round(left), **log_context)
                    await asyncio.sleep(delay)
                    continue
                except ApiError:
                    self.gate.ok()  # any answer but 401/403 means the credentials work
                    raise
                self.gate.ok()
                return result
        finally:
            if probing:
                # Leaving without a verdict (gave up, cancelled): let a waiter probe next.
                self.gate.reopen()
