"""How files come in (admission): claimed from inbox/ only as fast as job and upload
slots allow. Claimed files waiting are bounded, and a file waiting to try its upload
again holds no upload slot. In-process daemon, the simulator over HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from daemon.sim import SimServer
from tests.helpers import contacts_csv, drop, result_when_filed, wait_for


@pytest.mark.parametrize(("uploads", "jobs", "waiting"), [(1, 3, 2), (4, 2, 2)])
async def test_claimed_files_waiting_are_bounded(make_settings, run_daemon, sim: SimServer,
                                                 spool_root: Path, uploads: int, jobs: int,
                                                 waiting: int) -> None:
    """With every job slot busy, a daemon holds min(2 x uploads, max_active_jobs) claimed
    files beyond its jobs: the rest stay in inbox/ for another daemon sharing the spool."""
    sim.sim.config.job_seconds = 60
    daemon = await run_daemon(make_settings(workers__max_active_jobs=jobs,
                                            workers__uploads=uploads))
    for i in range(10):
        drop(spool_root, f"contact/wait-{i}.csv", contacts_csv(2, tag=str(i)))
    processing = spool_root / "processing"

    def claimed() -> int:
        return sum(1 for p in processing.rglob("*.csv") if p.is_file())

    intake = daemon.instance().admission.intake
    await wait_for(lambda: sim.sim.unfinished_jobs == jobs and intake.locked()
                   and claimed() == jobs + waiting,
                   what=f"{jobs} jobs running and {waiting} files waiting")
    assert len(list((spool_root / "inbox" / "contact").glob("*.csv"))) == 10 - jobs - waiting
    assert sim.sim.creates_attempted == jobs


async def test_a_backoff_holds_no_upload_slot(make_settings, run_daemon, sim: SimServer,
                                              spool_root: Path) -> None:
    """One upload slot: while the first file waits 5 s to try again (Retry-After), the
    second goes up at once."""
    sim.sim.config.create_faults = ["503"]
    sim.sim.config.retry_after_seconds = 5
    await run_daemon(make_settings(workers__uploads=1))
    drop(spool_root, "contact/waits.csv", contacts_csv(2, tag="w"))
    await wait_for(lambda: sim.sim.faults["scripted 503"] == 1, what="the 503")
    refused = time.monotonic()
    drop(spool_root, "contact/goes.csv", contacts_csv(2, tag="g"))
    goes = await result_when_filed(spool_root, "done", "contact/goes.csv")
    assert time.monotonic() - refused < 4, "the second file did not wait for the first"
    waits = await result_when_filed(spool_root, "done", "contact/waits.csv")
    assert int(goes["job_id"]) < int(waits["job_id"])
