"""The simulator's faults over real HTTP: rate limits, 5xx, dropped connections,
scripted create faults, slow answers, clients that vanish, and the counters that show
how many requests were in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import pytest

from daemon.sim import SimServer, Simulator
from tests.sim.helpers import assert_error_body, to_csv, upload, wait_for


async def test_rate_limit_with_both_retry_after_forms(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.config.rate_limit_rate = 1.0
    sim.config.retry_after_rate = 1.0
    sim.config.retry_after_seconds = 2
    seen = []
    for _ in range(2):
        status, body, response = await upload(http, server)
        assert status == 429
        assert_error_body(body)
        seen.append(response.headers["Retry-After"])
    assert seen[0] == "2"
    wait = parsedate_to_datetime(seen[1]).timestamp() - time.time()
    assert 1 <= wait <= 4
    assert sim.jobs == {} and sim.creates_attempted == 2
    assert sim.responses[429] == 2
    assert sim.requests[("POST", "bulk_create")] == 2


async def test_error_rate_answers_5xx(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.config.error_rate = 1.0
    for _ in range(5):
        status, body, _ = await upload(http, server)
        assert status in (500, 502, 503)
        assert_error_body(body)
    assert sim.jobs == {}
    sim.config.error_rate = 0.0
    status, _, _ = await upload(http, server)
    assert status == 200


@pytest.mark.parametrize("size", [100, 2_000_000])
async def test_dropped_connection_makes_no_job(
    size: int, sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.config.drop_rate = 1.0
    content = to_csv([["Email"]] + [["x@y.z"]] * (size // 7))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(content), 65536):
            yield content[start : start + 65536]

    with pytest.raises(aiohttp.ClientConnectionError):
        await upload(http, server, chunks())
    assert sim.jobs == {} and sim.faults["drop"] == 1
    sim.config.drop_rate = 0.0
    status, _, _ = await upload(http, server)
    assert status == 200


async def test_scripted_create_faults_come_in_order(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    """503/429/drop make no job; lost/504 make the job and hide it; then all is well."""
    sim.config.create_faults = ["503", "429", "drop", "lost", "504"]
    sim.config.retry_after_seconds = 7
    for code in (503, 429):
        status, body, response = await upload(http, server)
        assert status == code and response.headers["Retry-After"] == "7"
    assert sim.jobs == {}
    with pytest.raises(aiohttp.ClientConnectionError):
        await upload(http, server)
    assert sim.jobs == {}
    with pytest.raises(aiohttp.ClientConnectionError):
        await upload(http, server)
    assert list(sim.jobs) == ["1001"], "the job was made, its answer lost"
    status, body, _ = await upload(http, server)
    assert status == 504 and list(sim.jobs) == ["1001", "1002"]
    status, body, _ = await upload(http, server)
    assert status == 200 and body["id"] == "1003" and sim.config.create_faults == []
    assert {k: v for k, v in sim.faults.items() if k.startswith("scripted")} == {
        f"scripted {f}": 1 for f in ("503", "429", "drop", "lost", "504")}


async def test_create_delay_answers_after_the_job_is_made(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.config.create_delay_seconds = 0.5
    started = time.monotonic()
    answer = asyncio.create_task(upload(http, server))
    await wait_for(lambda: _async(bool(sim.jobs)))
    assert not answer.done(), "the job exists before the answer"
    status, body, _ = await answer
    assert status == 200 and time.monotonic() - started >= 0.5


async def _async(value: Any) -> Any:
    return value


async def test_client_vanishing_mid_upload_makes_no_job(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sent = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        yield b"Email\r\n"
        while True:
            yield b"a@b.c\r\n" * 1000
            sent.set()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(upload(http, server, endless()))
    await asyncio.wait_for(sent.wait(), timeout=5)
    await wait_for(lambda: _true(sim.uploads_in_flight == 1))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: _true(sim.client_disconnects == 1))
    assert sim.uploads_in_flight == 0 and sim.jobs == {}


async def _true(value: bool) -> bool:
    return value


async def test_concurrency_counters(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.config.latency_seconds = 0.1
    results = await asyncio.gather(*(upload(http, server, name=f"{i}.csv") for i in range(3)))
    assert [status for status, _, _ in results] == [200, 200, 200]
    assert sim.max_concurrent_uploads == 3 and sim.uploads_in_flight == 0
    assert sim.max_unfinished_jobs == 3
    sim.reset_counters()
    assert sim.max_concurrent_uploads == 0 and sim.max_unfinished_jobs == 3
    assert sim.creates_attempted == 0 and not sim.requests
