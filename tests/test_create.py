"""Creating jobs through API trouble: the retry deadline kept to, backoff that never
holds an upload slot, and retries after a request that may have made a job named as
possible duplicates. In-process daemon, the simulator's scripted faults over HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from daemon.sim import SimServer
from tests.helpers import contacts_csv, drop, result_of, wait_for


async def _filed(root: Path, where: str, rel: str, timeout: float = 20) -> dict:
    path = root / where / rel
    await wait_for(lambda: path.with_name(path.name + ".result.json").exists(), timeout,
                   what=f"{where}/{rel}")
    return result_of(path)


@pytest.mark.parametrize(("fault", "reason", "duplicate"), [
    ("lost", "connection", True),    # the job made, the connection cut before the answer
    ("504", "5xx", True),            # the job made, a gateway gave up waiting
    ("drop", "connection", True),    # cut while sending: the API might have it all
    ("503", None, False),            # "not now": nothing was made
])
async def test_a_retry_after_a_request_that_may_have_made_a_job_is_named(
        make_settings, run_daemon, sim: SimServer, spool_root: Path, fault: str,
        reason: str | None, duplicate: bool) -> None:
    sim.sim.config.create_faults = [fault]
    sim.sim.config.retry_after_seconds = 0
    daemon = await run_daemon(make_settings())
    drop(spool_root, "contact/twice.csv", contacts_csv(3))
    result = await _filed(spool_root, "done", "contact/twice.csv")
    assert result["status"] == "COMPLETE" and result["attempts"] == 2
    assert result["possible_duplicate"] is duplicate
    made = 2 if fault in ("lost", "504") else 1
    assert len(sim.sim.jobs) == made and result["job_id"] == max(sim.sim.jobs)
    registry = daemon.metrics.registry
    counted = registry.get_sample_value("bulkdrop_create_retries_total",
                                        {"reason": reason or "5xx"})
    assert (counted or 0) == (1 if duplicate else 0)


async def test_the_retry_deadline_means_the_deadline(make_settings, run_daemon,
                                                     sim: SimServer, spool_root: Path) -> None:
    sim.sim.config.error_rate = 1.0
    sim.sim.config.retry_after_rate = 0
    await run_daemon(make_settings(api__retry_deadline_seconds=4))
    dropped = time.monotonic()
    drop(spool_root, "contact/never.csv", contacts_csv(2))
    result = await _filed(spool_root, "failed", "contact/never.csv")
    took = time.monotonic() - dropped
    assert result["status"] == "FAILED"
    assert took >= 4, f"gave up after {took:.1f} s, before the deadline"
    said = result["reason"].removeprefix("gave up uploading after ").split()
    assert 4 <= int(said[0]) <= took + 1 and said[1:3] == ["s", "and"], result["reason"]
    attempts = int(said[3])
    assert attempts == sum(n for code, n in sim.sim.responses.items() if code >= 500) >= 3


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
    goes = await _filed(spool_root, "done", "contact/goes.csv")
    assert time.monotonic() - refused < 4, "the second file did not wait for the first"
    waits = await _filed(spool_root, "done", "contact/waits.csv")
    assert int(goes["job_id"]) < int(waits["job_id"])
