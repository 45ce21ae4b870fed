"""Start-up recovery and the job timeout, with an in-process daemon and a real ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.client import OpenConnectorsClient
from daemon.ledger import Ledger, utcnow
from daemon.service import Daemon, StartupError
from daemon.settings import Secret, Settings
from daemon.sim import SimServer
from daemon.spool import Spool
from tests.helpers import contacts_csv, drop, result_of, sha256, wait_for


def _claim(settings: Settings, rel: str, data: str) -> tuple[Spool, Path]:
    """A file left in processing/<node>/ by an earlier run."""
    spool = Spool(settings.spool.root, settings.spool.node_id)
    spool.ensure_layout()
    dropped = drop(settings.spool.root, rel, data)
    claimed = spool.claim(dropped)
    assert claimed is not None
    return spool, claimed.path


async def test_recorded_job_is_followed_not_uploaded_again(make_settings, run_daemon,
                                                           sim: SimServer) -> None:
    settings = make_settings()
    spool, path = _claim(settings, "contact/resume.csv", contacts_csv(4))
    client = OpenConnectorsClient(sim.base_url, user_secret=Secret("u"),
                                  organization_secret=Secret(""), element_token=Secret("e"))
    try:  # the earlier run created the job and recorded its id, then died
        job = await client.create_job("marketing", "contact", "resume.csv",
                                      lambda: _chunks(path.read_bytes()))
    finally:
        await client.close()
    ledger = Ledger(settings.spool.state_dir / "bulkdrop.db")
    await ledger.open()
    claimed = spool.claimed_from_path(path)
    assert claimed is not None
    await ledger.add_claim(claimed.claim_id, str(claimed.rel), str(path), utcnow())
    await ledger.record_job(claimed.claim_id, job.id, utcnow(), "contact", "marketing", 1)
    await ledger.close()

    await run_daemon(settings)
    done = settings.spool.root / "done" / "contact" / "resume.csv"
    await wait_for(lambda: done.with_name("resume.csv.result.json").exists(), what="result")
    result = result_of(done)
    assert result["job_id"] == job.id
    assert result["status"] == "COMPLETE" and result["records"]["total"] == 4
    assert result["sha256"] == sha256(done)
    assert list(sim.sim.jobs) == [job.id], "never uploaded again"


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_claimed_file_without_a_row_is_claimed_afresh(make_settings, run_daemon,
                                                           sim: SimServer) -> None:
    settings = make_settings()
    _claim(settings, "contact/stray.csv", contacts_csv(3))  # crash between rename and row
    await run_daemon(settings)
    done = settings.spool.root / "done" / "contact" / "stray.csv"
    await wait_for(lambda: done.with_name("stray.csv.result.json").exists(), what="result")
    assert result_of(done)["status"] == "COMPLETE"
    assert result_of(done)["file"] == "contact/stray.csv"
    assert len(sim.sim.jobs) == 1


async def test_corrupt_ledger_is_set_aside_and_files_still_finish(make_settings, run_daemon,
                                                                  sim: SimServer) -> None:
    settings = make_settings()
    _claim(settings, "contact/after-corruption.csv", contacts_csv(2))
    db = settings.spool.state_dir / "bulkdrop.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"this is not a SQLite database" * 100)
    await run_daemon(settings)
    done = settings.spool.root / "done" / "contact" / "after-corruption.csv"
    await wait_for(lambda: done.with_name(done.name + ".result.json").exists(), what="result")
    kept = list(db.parent.glob("bulkdrop.db.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"this is not")


async def test_job_that_never_finishes_fails_at_the_timeout(make_settings, run_daemon,
                                                            sim: SimServer) -> None:
    sim.sim.config.job_outcome = "NEVER"
    settings = make_settings(workers__job_timeout_seconds=1.0)
    await run_daemon(settings)
    drop(settings.spool.root, "contact/stuck.csv", contacts_csv(2))
    failed = settings.spool.root / "failed" / "contact" / "stuck.csv"
    await wait_for(lambda: failed.with_name("stuck.csv.result.json").exists(), what="result")
    result = result_of(failed)
    assert result["status"] == "FAILED"
    assert result["job_id"] and f"job {result['job_id']} not finished after 1 s" in result["reason"]
    assert "last status RUNNING" in result["reason"]
    assert sim.sim.jobs[result["job_id"]].status == "CANCELLED", "the API was asked to cancel it"


async def test_unopenable_ledger_stops_start_up_instead_of_starting_afresh(
        make_settings, sim: SimServer) -> None:
    settings = make_settings()
    (settings.spool.state_dir / "bulkdrop.db").mkdir(parents=True)  # not a file at all
    with pytest.raises(StartupError, match="bulkdrop.db"):
        await Daemon(settings).serve()
    assert not list(settings.spool.state_dir.glob("*.corrupt-*"))


def test_ledger_timestamps_are_utc_iso_with_milliseconds() -> None:
    for _ in range(3):
        before = datetime.now(UTC)
        stamp = utcnow()
        after = datetime.now(UTC)
        parsed = datetime.fromisoformat(stamp)
        assert stamp.endswith("+00:00") and len(stamp) == len("2026-01-02T03:04:05.678+00:00")
        # Truncated to the millisecond, never outside the moments around the call.
        assert before - timedelta(milliseconds=1) <= parsed <= after
