"""Start-up recovery: a file an earlier run left in processing/ goes on from what the
ledger recorded. In-process daemon, a real ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator

from daemon.client import OpenConnectorsClient
from daemon.ledger import Ledger, utcnow
from daemon.sim import SimServer
from tests.helpers import contacts_csv, left_in_processing, result_of, sha256, wait_for


async def test_recorded_job_is_followed_not_uploaded_again(make_settings, run_daemon,
                                                           sim: SimServer) -> None:
    settings = make_settings()
    spool, path = left_in_processing(settings, "contact/resume.csv", contacts_csv(4))
    client = OpenConnectorsClient.from_settings(settings.api)  # the daemon's job space
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
    # A crash between the rename and the ledger row.
    left_in_processing(settings, "contact/stray.csv", contacts_csv(3))
    await run_daemon(settings)
    done = settings.spool.root / "done" / "contact" / "stray.csv"
    await wait_for(lambda: done.with_name("stray.csv.result.json").exists(), what="result")
    assert result_of(done)["status"] == "COMPLETE"
    assert result_of(done)["file"] == "contact/stray.csv"
    assert len(sim.sim.jobs) == 1
