"""The daemon's health endpoints over real HTTP."""

from __future__ import annotations

import aiohttp

from daemon.sim import SimServer
from tests.helpers import free_port


async def test_healthz_and_readyz_follow_the_api(make_settings, run_daemon,
                                                 sim: SimServer) -> None:
    port = free_port()
    daemon = await run_daemon(make_settings(http__listen=f"127.0.0.1:{port}"))
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/healthz") as resp:
            assert resp.status == 200
        async with session.get(base + "/readyz") as resp:
            assert resp.status == 200, await resp.text()
        sim.sim.config.auth_broken = True
        for api in daemon.readiness.instances.values():
            api.ttl = 0  # ask the API at every request
        async with session.get(base + "/readyz") as resp:
            assert resp.status == 503
            assert "401" in str((await resp.json())["problems"])
