"""Steering and running the simulator: its /_sim control routes, its app served without
SimServer, its command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from daemon.sim import SimServer, Simulator, create_app
from daemon.sim import cli as sim_cli
from tests.sim.helpers import get_json, status_until_terminal, to_csv, upload

REPO_ROOT = Path(__file__).resolve().parents[2]


# -- control routes -----------------------------------------------------------------------


async def test_control_state_and_patch(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.config.user_secret = "top-secret-value"
    url = f"{server.root_url}/_sim"
    async with http.patch(f"{url}/config", json={"error_rate": 0.25, "job_seconds": 2}) as resp:
        assert resp.status == 200
        assert (await resp.json())["error_rate"] == 0.25
    assert sim.config.error_rate == 0.25 and sim.config.job_seconds == 2.0
    for patch, word in (
        ({"bogus": 1}, "bogus"),
        ({"drop_rate": "x"}, "drop_rate"),
        ({"drop_rate": 2.0}, "drop_rate"),
        ({"create_faults": ["boom"]}, "create_faults"),
        ({"create_delay_seconds": -1}, "create_delay_seconds"),
        ([1], "object"),
    ):
        async with http.patch(f"{url}/config", json=patch) as resp:
            assert resp.status == 400
            assert word in (await resp.json())["message"]
    assert sim.config.drop_rate == 0.0
    async with http.get(f"{url}/state") as resp:
        text = await resp.text()
    state = json.loads(text)
    assert "top-secret-value" not in text
    assert state["config"]["user_secret_set"] is True
    assert state["config"]["error_rate"] == 0.25
    assert "requests" in state and "max_concurrent_uploads" in state


async def test_the_answer_shapes_switch_at_run_time(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    """One finished job, read in each shape as /_sim/config switches them; and the size
    limit refusing an upload with 429, making no job."""
    rows = [["email", "name"], ["ok@example.com", "A"], ["broken", "B"]]
    _, created, _ = await upload(http, server, to_csv(rows), name="shapes.csv")
    _, classic = await status_until_terminal(http, server, created["id"])
    assert classic["recordsCount"] == 2 and classic["recordsFailedCount"] == 1
    job_url = f"{server.base_url}/hubs/marketing/bulk/{created['id']}"
    _, numbered, _ = await get_json(http, f"{job_url}/errors")
    assert numbered == [{"recordNumber": 2, "message": "Invalid email address 'broken'",
                         "record": {"email": "broken", "name": "B"}}]
    async with http.patch(f"{server.root_url}/_sim/config",
                          json={"status_shape": "v3", "error_shape": "plain",
                                "max_upload_bytes": 100}) as resp:
        assert resp.status == 200
    _, v3, _ = await get_json(http, f"{job_url}/status")
    assert "status" not in v3 and v3["jobStatus"] == "COMPLETED"
    assert (v3["recordCount"], v3["errorCount"]) == (2, 1)
    assert isinstance(v3["createdDate"], int)
    _, plain, _ = await get_json(http, f"{job_url}/errors")
    assert plain == [{"email": "broken", "name": "B",
                      "status": "74234: Invalid email address 'broken'"}]
    status, refused, _ = await upload(http, server, to_csv(rows * 20), name="wide.csv")
    assert status == 429 and "too large" in refused["message"]
    assert len(sim.jobs) == 1
    async with http.patch(f"{server.root_url}/_sim/config",
                          json={"status_shape": "v2"}) as resp:
        assert resp.status == 400 and "status_shape" in (await resp.json())["message"]


async def test_each_element_token_sees_only_its_own_jobs(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    """Two connector instances of one account: each token its own job space."""
    other = {"Authorization": "User u-secret, Element another-instance"}
    _, mine, _ = await upload(http, server, name="mine.csv")
    _, theirs, _ = await upload(http, server, name="theirs.csv", headers=other)
    bulk = f"{server.base_url}/hubs/marketing/bulk"
    status, _, _ = await get_json(http, f"{bulk}/{mine['id']}/status")
    assert status == 200
    async with http.get(f"{bulk}/{theirs['id']}/status", headers=other) as resp:
        assert resp.status == 200
    status, body, _ = await get_json(http, f"{bulk}/{theirs['id']}/status")
    assert status == 404 and theirs["id"] in body["message"]
    _, listed, _ = await get_json(http, f"{bulk}/jobs")
    assert [job["id"] for job in listed] == [int(mine["id"])]
    assert "another-instance" not in str(sim.jobs[theirs["id"]])


async def test_create_app_serves_without_simserver(http: aiohttp.ClientSession) -> None:
    runner = web.AppRunner(create_app(Simulator()))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/elements/api-v2/hubs/crm/objects"
        status, _, _ = await get_json(http, url)
        assert status == 200
    finally:
        await runner.cleanup()


# -- command line -------------------------------------------------------------------------


def test_cli_arguments_build_config() -> None:
    parser = argparse.ArgumentParser()
    sim_cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--job-seconds",
            "0.5",
            "--error-rate",
            "0.1",
            "--seed",
            "3",
            "--complete-word",
            "COMPLETE",
            "--objects",
            "contact, lead",
            "--status-shape",
            "v3",
            "--error-shape",
            "plain",
            "--max-upload-bytes",
            "5000",
            "--row-base",
            "0",
        ]
    )
    assert (args.host, args.port) == ("127.0.0.1", 8471)
    config = sim_cli.config_from_args(args)
    assert config.job_seconds == 0.5 and config.error_rate == 0.1 and config.seed == 3
    assert config.complete_word == "COMPLETE" and config.objects == ["contact", "lead"]
    assert (config.status_shape, config.error_shape) == ("v3", "plain")
    assert config.max_upload_bytes == 5000 and config.row_base == 0


async def test_cli_serves_until_sigterm(http: aiohttp.ClientSession) -> None:
    code = (
        "import argparse, sys; from daemon.sim import cli; p = argparse.ArgumentParser(); "
        "cli.add_arguments(p); sys.exit(cli.run(p.parse_args(sys.argv[1:])))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=20)).decode()
        assert line.startswith("Open Connectors simulator at http://127.0.0.1:")
        base_url = line.split(" at ", 1)[1].strip()
        status, _, _ = await get_json(http, f"{base_url}/hubs/marketing/objects")
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
