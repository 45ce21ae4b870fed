"""When the tracker polls: the first poll is due poll_interval after the job was created."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from daemon.client import OpenConnectorsClient
from daemon.logs import get_logger
from daemon.retry import RetryPolicy
from daemon.settings import Secret
from daemon.sim import SimConfig, SimServer, Simulator
from daemon.tracker import Tracker


@pytest.fixture
async def client() -> AsyncIterator[OpenConnectorsClient]:
    async with SimServer(Simulator(SimConfig(job_seconds=0.0))) as server:
        api = OpenConnectorsClient(server.base_url, user_secret=Secret("u"),
                                   organization_secret=Secret(""), element_token=Secret("e"))
        try:
            yield api
        finally:
            await api.close()


def _tracker(client: OpenConnectorsClient, interval: float) -> Tracker:
    return Tracker(client, RetryPolicy(60), poll_interval=interval,
                   poll_max_interval=interval * 2, job_timeout=3600)


async def _follow(tracker: Tracker, client: OpenConnectorsClient, created_ago: float) -> float:
    """Seconds until the tracker saw the end of a job created *created_ago* seconds ago."""
    job = await client.create_job("marketing", "contact", "a.csv", b"email\r\na@b.example\r\n")
    created = (datetime.now(UTC) - timedelta(seconds=created_ago)).isoformat()
    started = time.monotonic()
    end = await asyncio.wait_for(tracker.follow("marketing", job.id, created, get_logger()), 30)
    assert end.ok and end.status == "COMPLETED"
    return time.monotonic() - started


async def test_a_new_job_is_not_polled_before_the_interval(client: OpenConnectorsClient) -> None:
    assert await _follow(_tracker(client, 0.5), client, created_ago=0.0) >= 0.45


async def test_the_interval_counts_from_the_jobs_creation(client: OpenConnectorsClient) -> None:
    # Created 4.5 s ago (its id took that long to record): polled in about 0.5 s, not 5 s.
    assert await _follow(_tracker(client, 5.0), client, created_ago=4.5) < 4.0


async def test_a_job_resumed_after_a_restart_is_polled_at_once(
        client: OpenConnectorsClient) -> None:
    assert await _follow(_tracker(client, 30.0), client, created_ago=40.0) < 10.0
