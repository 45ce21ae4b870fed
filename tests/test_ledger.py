"""The ledger across releases: a spool left unfinished by an earlier release opens, and
each of its files goes on from where that release left it."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sqlite3
from pathlib import Path

from daemon.client import OpenConnectorsClient
from daemon.settings import Secret
from daemon.sim import SimServer
from tests.helpers import finished, result_of, wait_for
from tests.procs import DaemonProc, daemons, write_config

RELEASE_1 = Path(__file__).parent / "data" / "ledger_v1"  # made by its make.py


async def test_a_spool_left_by_the_last_release_resumes(sim: SimServer, tmp_path: Path) -> None:
    root = tmp_path / "spool"
    shutil.copytree(RELEASE_1 / "spool", root)
    db = root / ".state" / "n1" / "bulkdrop.db"
    # The API still has the jobs that release created (1004: unsent.csv's upload reached
    # it, the answer never came back).
    client = OpenConnectorsClient(sim.base_url, user_secret=Secret("u"),
                                  organization_secret=Secret(""), element_token=Secret("e"))
    try:
        for job in json.loads((RELEASE_1 / "jobs.json").read_text()):
            created = await client.create_job(job["hub"], job["object"], job["name"][1:],
                                              job["body"].encode())
            assert created.id == job["id"]
    finally:
        await client.close()
    config = write_config(tmp_path / "c.toml", sim.base_url, root,
                          **{"objects.contact": {"max_rows_per_job": 2}})
    async with daemons() as started:
        daemon = await DaemonProc(config, tmp_path / "d.log").start()
        started.append(daemon)
        await wait_for(lambda: len(finished(root)) == 3, timeout=30, what="3 files filed")
        daemon.signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 20) == 0
    done = root / "done" / "contact"
    single = result_of(done / "single.csv")
    assert single["status"] == "COMPLETE" and single["job_id"] == "1001"
    assert single["records"]["total"] == 2
    parts = result_of(done / "parts.csv")
    assert parts["status"] == "COMPLETE" and parts["records"]["total"] == 5
    first, second, third = (j["job_id"] for j in parts["jobs"])
    assert (first, second) == ("1002", "1003"), "parts 1 and 2 as recorded"
    unsent = result_of(done / "unsent.csv")
    assert unsent["status"] == "COMPLETE"
    assert {third, unsent["job_id"]} == {"1005", "1006"}, "both sent now"
    assert len(sim.sim.jobs) == 6, "no recorded job was created again"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT DISTINCT state FROM files").fetchall() == [("FINISHED",)]
    finally:
        conn.close()
