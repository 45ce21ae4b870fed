"""Filing a finished file through trouble that is not the file's (the async Filer): each
failed attempt is logged, counted and shown in /readyz and bulkdrop status, and tried
again with backoff until the file and its result are in place. Real daemon subprocesses.
(Placing itself, synchronous, is in test_placing.py.)"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import aiohttp
import pytest

from daemon.ops import retry_failed_rows
from daemon.sim import SimServer
from daemon.spool import Spool
from tests.conftest import Users
from tests.helpers import (
    bulkdrop_status,
    contacts_csv,
    drop,
    finished,
    free_port,
    http_get,
    result_of,
    wait_for,
)
from tests.procs import daemons, write_config


@pytest.mark.timeout(150)
async def test_a_read_only_done_folder_holds_the_file_until_it_is_writable(
        sim: SimServer, users: Users) -> None:
    root = users.spool()
    port = free_port()
    config = write_config(users.base / "c.toml", sim.base_url, root,
                          spool={"default_object": "contact"},
                          http={"listen": f"127.0.0.1:{port}"})
    base = f"http://127.0.0.1:{port}"
    async with daemons() as started, aiohttp.ClientSession() as http:
        daemon = await users.daemon(config, users.base / "d.log").start()
        started.append(daemon)
        await wait_for((root / "done").is_dir, what="the spool made by the daemon")
        done = root / "done" / "contact"
        done.mkdir()
        users.as_daemon_user(done, 0o555)
        drop(root, "contact/a.csv", contacts_csv(3))
        await wait_for(lambda: daemon.seen("file.filing_retry") >= 1, what="filing retried")
        code, body = await http_get(http, base + "/readyz")
        assert code == 503 and "cannot be filed" in body and "contact/a.csv" in body
        assert "Permission denied" in body
        shown = bulkdrop_status(config)
        assert "daemon: not ready" in shown and "cannot be filed" in shown, shown
        _, metrics = await http_get(http, base + "/metrics")
        assert 'bulkdrop_files_retrying{step="filing"} 1.0' in metrics
        assert 'bulkdrop_io_retries_total{step="filing"}' in metrics
        assert any((root / "processing").rglob("*a.csv")), "still claimed, not lost"
        done.chmod(0o775)
        # The next attempt comes within the backoff now due (at most a minute apart).
        # (The result is in place a moment before the daemon says so: wait for its word.)
        await wait_for(lambda: daemon.seen("file.filing_recovered"), timeout=70,
                       what="filed at last")
        assert result_of(done / "a.csv")["status"] == "COMPLETE"
        assert daemon.seen("file.filing_recovered") == 1
        assert (await http_get(http, base + "/readyz"))[0] == 200
        assert daemon.running
    assert len(sim.sim.jobs) == 1


async def test_done_laid_out_by_day(make_settings, run_daemon, spool_root: Path) -> None:
    """[spool] done_layout = "daily": done/<day it finished>/<path as dropped>; failed/
    mirrors; the failed rows of a file filed by day go back to the folder it came from."""
    await run_daemon(make_settings('[spool]\ndone_layout = "daily"\n'))
    drop(spool_root, "contact/sub/people.csv", contacts_csv(4, bad_every=2))
    drop(spool_root, "contact/empty.csv", "")
    await wait_for(lambda: len(finished(spool_root)) == 2, what="both filed")
    (filed,) = [p for p in finished(spool_root) if p.name == "people.csv"]
    day = filed.relative_to(spool_root / "done").parts[0]
    assert day == datetime.fromisoformat(
        result_of(filed)["finished_at"]).astimezone().date().isoformat()
    assert filed == spool_root / "done" / day / "contact" / "sub" / "people.csv"
    assert (spool_root / "failed" / "contact" / "empty.csv").exists()
    again = retry_failed_rows(Spool(spool_root, "node-a"), filed)
    assert again == spool_root / "inbox" / "contact" / "sub" / "people.retry-1.csv"
