"""Nothing is ever lost: kill -9 and restart, fault storms, auth outages, SIGTERM, two
daemons on one spool. Real daemon subprocesses, real signals, the simulator on loopback."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import pytest

from daemon.sim import SimServer
from tests.helpers import contacts_csv, drop, finished, litter, result_of, sha256, wait_for
from tests.procs import DaemonProc, daemons, recorded_job_ids, write_config

SEED = int(os.environ.get("BULKDROP_TEST_SEED", "20261128"))


def _drop_many(root: Path, n: int, prefix: str) -> dict[str, str]:
    """Drop *n* distinct files; rel path -> sha256."""
    return {f"contact/{prefix}{i:03}.csv":
            sha256(drop(root, f"contact/{prefix}{i:03}.csv", contacts_csv(5, tag=f"{prefix}{i}")))
            for i in range(n)}


async def _run_until_all_filed(config: Path, log: Path, started: list[DaemonProc], root: Path,
                               count: int, timeout: float) -> DaemonProc:
    """Start a daemon, wait until *count* files are filed, stop it with SIGTERM: exit 0."""
    daemon = await DaemonProc(config, log).start()
    started.append(daemon)
    await wait_for(lambda: len(finished(root)) == count, timeout=timeout,
                   what=f"all {count} filed")
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait() == 0
    return daemon


def _assert_all_complete(root: Path, dropped: dict[str, str]) -> dict[str, dict]:
    results = {result_of(p)["file"]: result_of(p) for p in finished(root)}
    assert set(results) == set(dropped), "every dropped file is filed, once"
    for rel, result in results.items():
        assert result["status"] == "COMPLETE", (rel, result["reason"])
        assert result["sha256"] == dropped[rel]
    assert not [p for p in (root / "inbox").rglob("*.csv")]
    assert not [p for p in (root / "processing").rglob("*") if p.is_file()]
    assert not litter(root)
    return results


@pytest.mark.timeout(240)
async def test_kill_9_at_random_moments_loses_nothing(sim: SimServer, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"\nkill -9 test seed: {SEED} (replay with BULKDROP_TEST_SEED={SEED})")
    # Latency widens the upload request, so some kills land inside it.
    sim.sim.config.job_seconds, sim.sim.config.latency_seconds = 0.3, 0.05
    root = tmp_path / "spool"
    dropped = _drop_many(root, 100, "k")
    config = write_config(tmp_path / "c.toml", sim.base_url, root)
    log = tmp_path / "daemon.log"
    kills = 0
    async with daemons() as started:
        for _ in range(6):
            daemon = await DaemonProc(config, log).start()
            started.append(daemon)
            target = sim.sim.creates_attempted + rng.randint(3, 15)
            await wait_for(lambda t=target: sim.sim.creates_attempted >= t
                           or len(finished(root)) == 100, timeout=60, what="uploads")
            await asyncio.sleep(rng.uniform(0, 0.3))  # the kill moment: mid-upload, poll, filing
            await daemon.kill()
            kills += 1
        await _run_until_all_filed(config, log, started, root, 100, timeout=120)

    results = _assert_all_complete(root, dropped)
    recorded = recorded_job_ids(root / ".state" / "n1" / "bulkdrop.db")
    resent = 0
    for rel, digest in dropped.items():
        jobs = sim.sim.jobs_by_sha256[digest]
        assert recorded[rel] == [results[rel]["job_id"]], "one job id recorded per file"
        # A job id once recorded is never followed by a new job for the same file; only a
        # crash inside the upload request itself (id not yet recorded) may send it again.
        assert jobs[-1] == results[rel]["job_id"], (rel, jobs, recorded[rel])
        resent += len(jobs) - 1
    print(f"{kills} kills, 100 files: all COMPLETE; {resent} re-sent after a kill inside the "
          f"upload request; {sum(r['attempts'] > 1 for r in results.values())} files with "
          "more than one attempt")
    assert kills >= 5


@pytest.mark.timeout(200)
async def test_storm_of_5xx_429_and_drops_completes_within_limits(sim: SimServer,
                                                                   tmp_path: Path) -> None:
    cfg = sim.sim.config
    cfg.error_rate, cfg.rate_limit_rate, cfg.drop_rate = 0.3, 0.1, 0.05
    cfg.retry_after_rate, cfg.retry_after_seconds, cfg.job_seconds = 0.5, 1, 0.2
    root = tmp_path / "spool"
    dropped = _drop_many(root, 30, "s")
    config = write_config(tmp_path / "c.toml", sim.base_url, root,
                          workers={"uploads": 3, "max_active_jobs": 5})
    async with daemons() as started:
        daemon = await _run_until_all_filed(config, tmp_path / "d.log", started, root, 30,
                                            timeout=150)
    _assert_all_complete(root, dropped)
    faults = sum(n for code, n in sim.sim.responses.items() if code in (429, 500, 502, 503))
    assert faults >= 10, "the storm did happen"
    assert daemon.seen("api.retry") >= 1
    assert sim.sim.max_concurrent_uploads <= 3
    assert sim.sim.max_unfinished_jobs <= 5
    print(f"\nstorm: {faults} 5xx/429 answers; max uploads {sim.sim.max_concurrent_uploads}/3,"
          f" max unfinished jobs {sim.sim.max_unfinished_jobs}/5")


async def test_refused_credentials_pause_everything_then_resume(sim: SimServer,
                                                                 tmp_path: Path) -> None:
    sim.sim.config.auth_broken = True
    root = tmp_path / "spool"
    dropped = _drop_many(root, 10, "a")
    config = write_config(tmp_path / "c.toml", sim.base_url, root)
    async with daemons() as started:
        daemon = await DaemonProc(config, tmp_path / "d.log").start()
        started.append(daemon)
        await wait_for(lambda: daemon.seen("auth.refused") >= 3, timeout=30,
                       what="three refused attempts")
        assert not (root / "failed").exists() or not list((root / "failed").rglob("*"))
        assert sim.sim.jobs == {}
        refused = daemon.seen("auth.refused")
        assert refused <= sim.sim.responses[401], "one log line per attempt, not per file"
        sim.sim.config.auth_broken = False
        await wait_for(lambda: len(finished(root)) == 10, timeout=60, what="resumed uploads")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    _assert_all_complete(root, dropped)
    assert daemon.seen("auth.restored") >= 1
    assert daemon.seen("daemon.started") == 1, "no restart was needed"


@pytest.mark.timeout(120)
async def test_sigterm_mid_run_exits_0_within_grace_and_restart_finishes(
        sim: SimServer, tmp_path: Path) -> None:
    sim.sim.config.job_seconds, sim.sim.config.latency_seconds = 0.5, 0.2
    root = tmp_path / "spool"
    dropped = _drop_many(root, 40, "t")
    grace = 5
    config = write_config(tmp_path / "c.toml", sim.base_url, root,
                          workers={"shutdown_grace_seconds": grace})
    async with daemons() as started:
        daemon = await DaemonProc(config, tmp_path / "d.log").start()
        started.append(daemon)
        await wait_for(lambda: sim.sim.creates_attempted >= 8, timeout=30, what="uploads")
        stopped_at = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(timeout=grace + 10) == 0
        took = time.monotonic() - stopped_at
        assert took < grace + 2, f"stopping took {took:.1f} s"
        assert daemon.seen("daemon.stopped") == 1
        assert len(finished(root)) < 40, "stopped mid-run"
        await _run_until_all_filed(config, tmp_path / "d.log", started, root, 40, timeout=90)
    _assert_all_complete(root, dropped)
    assert all(len(sim.sim.jobs_by_sha256[d]) == 1 for d in dropped.values()), \
        "a graceful stop never sends a file twice"
    print(f"\nSIGTERM mid-run: stopped in {took:.2f} s (grace {grace} s)")


@pytest.mark.timeout(120)
async def test_two_daemons_share_one_spool(sim: SimServer, tmp_path: Path) -> None:
    sim.sim.config.job_seconds = 0.2
    root = tmp_path / "spool"
    dropped = _drop_many(root, 60, "p")
    async with daemons() as started:
        for node in ("n1", "n2"):
            config = write_config(tmp_path / f"{node}.toml", sim.base_url, root, node=node,
                                  workers={"uploads": 2})
            started.append(await DaemonProc(config, tmp_path / f"{node}.log").start())
        await wait_for(lambda: len(finished(root)) == 60, timeout=90, what="60 filed")
        for daemon in started:
            daemon.signal(signal.SIGTERM)
        for daemon in started:
            assert await daemon.wait() == 0
    _assert_all_complete(root, dropped)
    assert all(len(sim.sim.jobs_by_sha256[d]) == 1 for d in dropped.values())
    claimed = [d.seen("file.claimed") for d in started]
    assert sum(claimed) == 60 and min(claimed) > 0, claimed
    print(f"\ntwo daemons: claimed {claimed[0]} and {claimed[1]} of 60")


async def test_second_ctrl_c_exits_at_once(sim: SimServer, tmp_path: Path) -> None:
    sim.sim.config.latency_seconds = 30  # an upload that would hold the grace period
    root = tmp_path / "spool"
    _drop_many(root, 2, "c")
    config = write_config(tmp_path / "c.toml", sim.base_url, root,
                          workers={"shutdown_grace_seconds": 60})
    async with daemons() as started:
        daemon = await DaemonProc(config, tmp_path / "d.log").start()
        started.append(daemon)
        await wait_for(lambda: sim.sim.uploads_in_flight >= 1, what="an upload in flight")
        daemon.signal(signal.SIGINT)
        await wait_for(lambda: daemon.seen("daemon.stopping") == 1, what="stopping")
        assert daemon.running, "the first Ctrl-C waits for the upload"
        begun = time.monotonic()
        daemon.signal(signal.SIGINT)
        assert await daemon.wait(timeout=10) == 130
        assert time.monotonic() - begun < 5
    assert daemon.seen("daemon.abort") == 1
