"""The API client against the simulator: long uploads, stalled uploads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from daemon.client import OpenConnectorsClient
from daemon.retry import TransientError
from daemon.settings import Secret
from daemon.sim import SimServer

ROWS = [b"email,name\r\n"] + [b"u%d@example.com,U\r\n" % i for i in range(8)]


def _client(sim: SimServer, timeout: float) -> OpenConnectorsClient:
    return OpenConnectorsClient(sim.base_url, user_secret=Secret("u"),
                                organization_secret=Secret(""), element_token=Secret("e"),
                                timeout_seconds=timeout)


async def test_an_upload_longer_than_the_timeout_succeeds_while_it_progresses(
        sim: SimServer) -> None:
    async def slow() -> AsyncIterator[bytes]:   # 9 chunks over about 2.7 s
        for row in ROWS:
            await asyncio.sleep(0.3)
            yield row

    client = _client(sim, timeout=1.0)
    try:
        job = await client.create_job("marketing", "contact", "slow.csv", slow)
    finally:
        await client.close()
    assert sim.sim.jobs[job.id].records_count == 8


async def test_an_upload_that_stalls_fails_as_transient(sim: SimServer) -> None:
    async def stalls() -> AsyncIterator[bytes]:
        yield ROWS[0]
        await asyncio.sleep(30)   # never resumes within the test
        yield ROWS[1]

    client = _client(sim, timeout=0.5)
    try:
        with pytest.raises(TransientError, match="no progress for 0.5 s"):
            await asyncio.wait_for(client.create_job("marketing", "contact", "stall.csv",
                                                     stalls), 20)
    finally:
        await client.close()
    assert sim.sim.jobs == {}
