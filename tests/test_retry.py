"""The retry policy and the auth gate, driven by scripted request outcomes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate

import pytest

from daemon.retry import (
    AuthError,
    RejectedError,
    RetryPolicy,
    TransientError,
    backoff_delay,
    parse_retry_after,
)
from tests.helpers import wait_for


def scripted(*outcomes: object) -> Callable[[], Awaitable[str]]:
    """An operation that raises or returns the next outcome on each call."""
    queue = list(outcomes)

    async def op() -> str:
        outcome = queue.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return str(outcome)

    return op


def fast_policy(deadline: float = 30) -> RetryPolicy:
    return RetryPolicy(deadline, base=0.01, cap=0.05)


async def test_transient_errors_are_retried_until_success() -> None:
    op = scripted(TransientError("503", 503), TransientError("reset"), "ok")
    assert await fast_policy().call("t", op) == "ok"


async def test_transient_errors_give_up_at_the_deadline_with_the_last_error() -> None:
    policy = fast_policy(deadline=0.2)

    async def always() -> str:
        raise TransientError("HTTP 502: bad gateway", 502)

    started = time.monotonic()
    with pytest.raises(TransientError, match="bad gateway"):
        await policy.call("t", always)
    assert time.monotonic() - started < 1.0


async def test_retry_after_longer_than_the_deadline_waits_until_it_for_a_last_attempt() -> None:
    op = scripted(TransientError("429", 429, retry_after=3600), "ok")
    started = time.monotonic()
    assert await fast_policy(deadline=0.5).call("t", op) == "ok"
    assert 0.45 <= time.monotonic() - started < 2.0


async def test_the_deadline_means_the_deadline() -> None:
    """The policy retries until the deadline has passed (the last wait cut to it, one
    last attempt) and says how long it really tried, however the backoff falls."""
    policy = RetryPolicy(1.0, base=0.4, cap=0.8)
    attempts = 0

    async def always() -> str:
        nonlocal attempts
        attempts += 1
        raise TransientError("HTTP 503: busy", 503)

    started = time.monotonic()
    with pytest.raises(TransientError) as raised:
        await policy.call("t", always)
    took = time.monotonic() - started
    assert 1.0 <= took < 2.0
    assert raised.value.attempts == attempts >= 2
    assert 1.0 <= raised.value.elapsed <= took


async def test_rejection_is_final() -> None:
    with pytest.raises(RejectedError):
        await fast_policy().call("t", scripted(RejectedError("nope", 400), "unused"))


async def test_auth_refusal_pauses_everyone_and_one_success_reopens() -> None:
    policy = RetryPolicy(30, base=0.2, cap=0.2)  # each probe waits 0.1 to 0.3 s
    a = scripted(AuthError("401", 401), AuthError("401", 401), "a")
    b_calls = 0

    async def b() -> str:
        nonlocal b_calls
        b_calls += 1
        return "b"

    first = asyncio.create_task(policy.call("a", a))
    await wait_for(lambda: not policy.gate.is_open, what="the gate to close")
    second = asyncio.create_task(policy.call("b", b))
    await asyncio.sleep(0.005)
    assert b_calls == 0, "waits while the gate is closed"
    assert await first == "a" and await second == "b"
    assert policy.gate.is_open and policy.gate.failures == 0


@pytest.mark.parametrize("after", [RejectedError("no such object", 404),
                                   TransientError("giving up", 503)])
async def test_prober_leaving_without_success_does_not_lock_others_out(after: Exception) -> None:
    policy = RetryPolicy(0.0, base=0.2, cap=0.2)  # deadline 0: the 503 is final at once
    first = asyncio.create_task(policy.call("a", scripted(AuthError("401", 401), after)))
    await wait_for(lambda: not policy.gate.is_open, what="the gate to close")
    waiting = asyncio.create_task(policy.call("b", scripted("b")))
    with pytest.raises(type(after)):
        await first
    assert await asyncio.wait_for(waiting, 2) == "b"


async def test_cancelled_prober_reopens_the_gate() -> None:
    policy = RetryPolicy(30, base=10, cap=10)  # the prober sleeps long
    first = asyncio.create_task(policy.call("a", scripted(AuthError("401", 401), "a")))
    await wait_for(lambda: not policy.gate.is_open, what="the gate to close")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert policy.gate.is_open


def test_retry_after_in_seconds_and_as_a_date() -> None:
    assert parse_retry_after("7") == 7.0
    now = time.time()
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, 1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_backoff_is_full_jitter_below_the_cap() -> None:
    delays = [backoff_delay(n, base=1, cap=8) for n in range(10) for _ in range(50)]
    assert min(delays) >= 0 and max(delays) <= 8
    assert max(backoff_delay(0, base=1, cap=8) for _ in range(200)) <= 1
