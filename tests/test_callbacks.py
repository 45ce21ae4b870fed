"""The daemon's HTTP surface against a running daemon and simulator: signed completion
callbacks, readiness that follows the API, and Prometheus metrics that move."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import sqlite3
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.settings import Settings
from daemon.sim import SimServer
from tests.helpers import contacts_csv, drop, free_port, result_of, wait_for

KEY = "callback-key-0f3"


def _sign(body: bytes, key: str = KEY) -> str:
    return "sha256=" + base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256)
                                        .digest()).decode()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def callback_settings(make_settings, port: int) -> Settings:
    return make_settings(http__listen=f"127.0.0.1:{port}",
                         callback__public_url=f"http://127.0.0.1:{port}/callbacks/bulk",
                         callback__signature_key=KEY,
                         workers__poll_interval_seconds=60,
                         workers__poll_max_interval_seconds=60)


async def test_signed_callback_finishes_the_file_within_a_second(
        callback_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    sim.sim.config.signature_key = KEY
    sim.sim.config.job_seconds = 0.3
    await run_daemon(callback_settings)      # polls only every 60 s
    drop(spool_root, "contact/called.csv", contacts_csv(3))
    done = spool_root / "done" / "contact" / "called.csv"
    await wait_for(lambda: done.with_name("called.csv.result.json").exists(), timeout=10,
                   what="the callback to finish it")
    job = next(iter(sim.sim.jobs.values()))
    assert job.finished_at is not None and sim.sim.callbacks_sent == 1
    filed = datetime.fromisoformat(result_of(done)["finished_at"])
    assert (filed - job.finished_at).total_seconds() < 1.0
    assert job.metadata is not None and "bulkdrop_file" in job.metadata["callback-payload"]


def _snapshot(root: Path) -> tuple[list[str], list[tuple[object, ...]]]:
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                   if p.is_file() and ".state" not in p.parts)
    conn = sqlite3.connect(f"file:{root / '.state' / 'node-a' / 'bulkdrop.db'}?mode=ro",
                           uri=True)
    try:
        rows = conn.execute("SELECT * FROM files ORDER BY claim_id").fetchall()
        rows += conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return files, rows


async def test_bad_callbacks_are_refused_and_change_nothing(
        callback_settings, run_daemon, sim: SimServer, spool_root: Path, port: int) -> None:
    sim.sim.config.job_outcome = "NEVER"    # the job stays followed
    daemon = await run_daemon(callback_settings)
    drop(spool_root, "contact/waiting.csv", contacts_csv(2))
    await wait_for(lambda: daemon.instance().jobs.active, what="a job being followed")
    (job_id,) = daemon.instance().jobs.active
    before = _snapshot(spool_root)
    polls = sim.sim.requests[("GET", "bulk_status")]
    good = json.dumps({"id": job_id, "status": "COMPLETED"}).encode()
    url = f"http://127.0.0.1:{port}/callbacks/bulk"
    cases = [
        ({"Elements-Webhook-Signature": _sign(good, "not-the-key")}, good, 401),
        ({}, good, 401),
        ({"Elements-Webhook-Signature": _sign(good)}, good.replace(b"COMPLETED", b"FAILED"), 401),
        ({"Elements-Webhook-Signature": _sign(good).replace("sha256=", "sha1=")}, good, 401),
        ({"Elements-Webhook-Signature": _sign(b"x" * 2_000_000)}, b"x" * 2_000_000, 413),
        ({"Elements-Webhook-Signature": _sign(b"{not json")}, b"{not json", 400),
        ({"Elements-Webhook-Signature": _sign(b'{"id": "999999"}')}, b'{"id": "999999"}', 404),
    ]
    async with aiohttp.ClientSession() as session:
        for headers, body, expected in cases:
            async with session.post(url, data=io.BytesIO(body), headers=headers) as resp:
                assert resp.status == expected, (headers, body[:40])
    assert _snapshot(spool_root) == before
    assert sim.sim.requests[("GET", "bulk_status")] == polls, "no status check was made"
    signed = {"Elements-Webhook-Signature": _sign(good)}
    async with aiohttp.ClientSession() as session, \
            session.post(url, data=good, headers=signed) as resp:  # the real one is taken
        assert resp.status == 200
    await wait_for(lambda: sim.sim.requests[("GET", "bulk_status")] > polls, what="a poll")


async def test_readyz_follows_the_apis_verdict_on_our_credentials(
        make_settings, run_daemon, sim: SimServer, port: int) -> None:
    daemon = await run_daemon(make_settings(http__listen=f"127.0.0.1:{port}"))
    for api in daemon.readiness.instances.values():
        api.ttl = 0
    url = f"http://127.0.0.1:{port}/readyz"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 200
        sim.sim.config.auth_broken = True
        async with session.get(url) as resp:
            assert resp.status == 503
            assert "HTTP 401" in str(await resp.json())
        sim.sim.config.auth_broken = False
        async with session.get(url) as resp:
            assert resp.status == 200


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_parse_and_move_as_files_flow(make_settings, run_daemon, sim: SimServer,
                                                    spool_root: Path, port: int) -> None:
    daemon = await run_daemon(make_settings(http__listen=f"127.0.0.1:{port}"))
    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            before = _samples(await resp.text())
        drop(spool_root, "contact/m1.csv", contacts_csv(4, bad_every=2))
        drop(spool_root, "contact/m2.xlsx", b"nope")
        done = spool_root / "done" / "contact" / "m1.csv.result.json"
        rejected = spool_root / "failed" / "contact" / "m2.xlsx.result.json"
        await wait_for(lambda: done.exists() and rejected.exists()
                       and sum(daemon.filer.counts.values()) == 2, what="both filed")
        async with session.get(url) as resp:
            after = _samples(await resp.text())
    default = ("instance", "default")
    complete = ("bulkdrop_files_finished_total",
                (default, ("object", "contact"), ("outcome", "COMPLETE")))
    assert before.get(complete, 0) == 0 and after[complete] == 1
    assert after[("bulkdrop_files_finished_total",
                  (default, ("object", "contact"), ("outcome", "REJECTED")))] == 1
    assert after[("bulkdrop_records_failed_total", (default, ("object", "contact")))] == 2
    assert after[("bulkdrop_uploaded_bytes_total", (default,))] == len(
        contacts_csv(4, bad_every=2))
    assert after[("bulkdrop_api_requests_total",
                  (("code", "200"), ("endpoint", "create_job"), default))] == 1
    assert after[("bulkdrop_upload_duration_seconds_count", ())] == 1
    assert after[("bulkdrop_job_duration_seconds_count", ())] == 1
    assert after[("bulkdrop_uploads_in_flight", (default,))] == 0
    assert after[("bulkdrop_unfinished_jobs", (default,))] == 0
    assert after[("bulkdrop_instance_paused", (default,))] == 0
    assert after[("bulkdrop_ledger_bytes", ())] > 0
