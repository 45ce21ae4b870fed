"""Fixtures for the simulator's tests: a bare simulator (it overrides the daemon tests'
``sim``), that simulator served on 127.0.0.1, and an HTTP session to reach it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from daemon.sim import SimConfig, SimServer, Simulator


@pytest.fixture
def sim() -> Simulator:
    return Simulator(SimConfig(job_seconds=0.1, seed=7))


@pytest.fixture
async def server(sim: Simulator) -> AsyncIterator[SimServer]:
    async with SimServer(sim, host="127.0.0.1", port=0) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session
