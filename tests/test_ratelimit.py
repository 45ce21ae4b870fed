"""The API's request rate, kept: no sliding second holds more than ``requests_per_second``
requests, under concurrent uploads and polls, measured where they arrive (the
simulator records each request's time)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from daemon.ratelimit import RateLimit, busiest_second
from daemon.sim import SimServer
from tests.helpers import contacts_csv, drop, finished, wait_for


def test_the_busiest_second_of_a_list_of_times() -> None:
    assert busiest_second([]) == 0
    assert busiest_second([0.0, 0.5, 0.99, 1.0, 1.5]) == 3     # [0, 1) holds three
    assert busiest_second([5.0, 0.2, 0.1, 1.15]) == 2
    assert busiest_second([0.0] * 4) == 4


async def test_concurrent_requests_are_spaced_to_the_limit() -> None:
    limit = RateLimit(50)
    sent: list[float] = []

    async def one() -> None:
        async with limit.request():
            sent.append(time.monotonic())

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(120)))
    assert len(sent) == 120 and busiest_second(sent) <= 50
    assert time.monotonic() - started >= 2.0   # 50 at once, 50 a second later, 20 after
    unlimited = RateLimit(0)
    started = time.monotonic()
    for _ in range(1000):
        async with unlimited.request():
            pass
    assert time.monotonic() - started < 0.5


async def test_a_request_counts_from_its_answer_or_half_a_second_after_it_left() -> None:
    """Each goes once the one two before it was answered a second ago, or, still
    unanswered, left 1.5 s ago: by then it surely arrived."""
    limit = RateLimit(2)
    went: list[float] = []
    answered = asyncio.Event()

    async def one(hold: float | None) -> None:
        async with limit.request():
            went.append(time.monotonic())
            if hold is None:
                await answered.wait()
            else:
                await asyncio.sleep(hold)

    started = time.monotonic()
    slow = asyncio.create_task(one(None))     # a long upload: no answer for a while
    await asyncio.gather(one(0.3), one(0.0), one(0.0))
    # the third waited for the first to be 0.5 s on its way, plus a second; the fourth
    # for the second's answer (0.3 s after it left) plus a second
    assert went[2] - started >= 1.5 and went[3] - started >= 1.3
    answered.set()
    await slow


async def test_the_daemon_keeps_to_requests_per_second(make_settings, run_daemon,
                                                       sim: SimServer,
                                                       spool_root: Path) -> None:
    await run_daemon(make_settings(api__requests_per_second=8))
    for i in range(12):
        drop(spool_root, f"contact/r{i}.csv", contacts_csv(2, tag=str(i)))
    await wait_for(lambda: len(finished(spool_root)) == 12, timeout=60, what="12 filed")
    times = list(sim.sim.request_times)
    assert len(times) >= 24                      # a create and a poll at least, each
    assert busiest_second(times) <= 8
    assert times[-1] - times[0] >= (len(times) - 8) / 8 - 0.5
