"""Trouble that is not a file's fault never strands it: a read-only done/, a full disk, a
damaged or empty ledger, a dropper whose umask locks the daemon out. The daemon retries,
says so (log, metrics, /readyz, bulkdrop status), and nothing is lost or sent twice."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from daemon.sim import SimServer
from tests.conftest import Users
from tests.helpers import clean_env, contacts_csv, drop, finished, free_port, result_of, wait_for
from tests.procs import DaemonProc, daemons, recorded_job_ids, write_config


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as answer:
        return answer.status, await answer.text()


def _status(config: Path) -> str:
    """``bulkdrop status`` as an operator runs it (as root, beside the daemon)."""
    run = subprocess.run([sys.executable, "-m", "daemon", "status", "--config", str(config)],
                         capture_output=True, text=True, timeout=30, env=clean_env())
    return run.stdout + run.stderr


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
        code, body = await _get(http, base + "/readyz")
        assert code == 503 and "cannot be filed" in body and "contact/a.csv" in body
        assert "Permission denied" in body
        shown = _status(config)
        assert "daemon: not ready" in shown and "cannot be filed" in shown, shown
        _, metrics = await _get(http, base + "/metrics")
        assert 'bulkdrop_files_retrying{step="filing"} 1.0' in metrics
        assert 'bulkdrop_io_retries_total{step="filing"}' in metrics
        assert any((root / "processing").rglob("*a.csv")), "still claimed, not lost"
        done.chmod(0o775)
        # The next attempt comes within the backoff now due (at most a minute apart).
        await wait_for(lambda: (done / "a.csv.result.json").exists(), timeout=70,
                       what="filed at last")
        assert result_of(done / "a.csv")["status"] == "COMPLETE"
        assert daemon.seen("file.filing_recovered") == 1
        assert (await _get(http, base + "/readyz"))[0] == 200
        assert daemon.running
    assert len(sim.sim.jobs) == 1


@contextlib.contextmanager
def _small_disk(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs here: {exc}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=30)


def _fill(disk: Path) -> Path:
    """Fill the disk to the last byte; the file to remove to give the space back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 16, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
        with pytest.raises(OSError) as full:
            os.write(fd, b"\0")
        assert full.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


@pytest.mark.timeout(150)
async def test_a_full_disk_keeps_the_job_id_and_the_file_until_space_comes_back(
        sim: SimServer, tmp_path: Path) -> None:
    """The disk fills while the API makes the job: recording its id fails, and is tried
    again until there is space. No second job is ever made for the file."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    sim.sim.config.create_delay_seconds = 1.5
    with _small_disk(tmp_path / "disk", "8m") as disk:
        root = disk / "spool"
        config = write_config(tmp_path / "c.toml", sim.base_url, root)
        drop(root, "contact/full.csv", contacts_csv(20))
        async with daemons() as started:
            daemon = await DaemonProc(config, tmp_path / "d.log").start()
            started.append(daemon)
            await wait_for(lambda: len(sim.sim.jobs) == 1, what="the job made, its answer due")
            filler = _fill(disk)
            await wait_for(lambda: daemon.seen("ledger.write_retry") >= 1
                           or daemon.seen("file.filing_retry") >= 1, what="a write retried")
            assert not finished(root) and daemon.running
            filler.unlink()
            # Within the backoff now due: the ledger retries at most 30 s apart, filing 60 s.
            await wait_for(lambda: len(finished(root)) == 1, timeout=70, what="the file filed")
            assert daemon.running
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait() == 0
    assert sim.sim.creates_attempted == 1 and len(sim.sim.jobs) == 1


def _kill_with_jobs(root: Path) -> Path:
    """The ledger of a daemon killed while 20 jobs ran: checkpointed into one file."""
    db = root / ".state" / "n1" / "bulkdrop.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return db


async def _start_jobs(sim: SimServer, config: Path, log: Path, root: Path, n: int,
                      started: list[DaemonProc]) -> None:
    sim.sim.config.job_outcome = "NEVER"
    for i in range(n):
        drop(root, f"contact/j{i:02}.csv", contacts_csv(2, tag=str(i)))
    daemon = await DaemonProc(config, log).start()
    started.append(daemon)
    db = root / ".state" / "n1" / "bulkdrop.db"
    await wait_for(lambda: db.exists() and len(recorded_job_ids(db)) == n,
                   what=f"{n} job ids recorded")
    await daemon.kill()
    sim.sim.config.job_outcome = None


async def test_a_ledger_damaged_in_every_page_is_set_aside_and_rebuilt(
        sim: SimServer, tmp_path: Path) -> None:
    root = tmp_path / "spool"
    config = write_config(tmp_path / "c.toml", sim.base_url, root,
                          workers={"max_active_jobs": 32})
    log = tmp_path / "d.log"
    async with daemons() as started:
        await _start_jobs(sim, config, log, root, 20, started)
        db = _kill_with_jobs(root)
        data = bytearray(db.read_bytes())
        for page_end in range(2 * 4096, len(data) + 1, 4096):  # one byte of every page but
            data[page_end - 40] ^= 0xFF                          # the first, in its records
        db.write_bytes(bytes(data))
        daemon = await DaemonProc(config, log).start()
        started.append(daemon)
        await wait_for(lambda: len(finished(root)) == 20, what="all 20 filed")
        assert daemon.seen("ledger.rebuilt") == 1
        rebuilt = next(e for e in daemon.events() if e.get("event") == "ledger.rebuilt")
        assert rebuilt["reclaimed"] == 20
        assert list(db.parent.glob("bulkdrop.db.corrupt-*")), "the damaged ledger is kept"
    assert {result_of(p)["status"] for p in finished(root)} == {"COMPLETE"}


async def test_an_empty_ledger_with_files_in_processing_is_reported(
        sim: SimServer, tmp_path: Path) -> None:
    root = tmp_path / "spool"
    config = write_config(tmp_path / "c.toml", sim.base_url, root)
    log = tmp_path / "d.log"
    async with daemons() as started:
        await _start_jobs(sim, config, log, root, 5, started)
        db = _kill_with_jobs(root)
        db.write_bytes(b"")
        daemon = await DaemonProc(config, log).start()
        started.append(daemon)
        await wait_for(lambda: len(finished(root)) == 5, what="all 5 filed")
    empty = [e for e in daemon.events() if e.get("event") == "ledger.empty"]
    assert len(empty) == 1 and empty[0]["reclaimed"] == 5 and empty[0]["level"] == "error"


async def test_files_a_dropper_locked_the_daemon_out_of_are_shown_until_fixed(
        sim: SimServer, users: Users) -> None:
    """A dropper with umask 022: in inbox/contact/ (made by the daemon, group-writable)
    that is fine; a folder they make themselves locks the daemon out."""
    root = users.spool()
    port = free_port()
    config = write_config(users.base / "c.toml", sim.base_url, root,
                          spool={"rescan_seconds": 0.3}, http={"listen": f"127.0.0.1:{port}"})
    config.write_text(config.read_text() + "[objects.contact]\nrequire_columns = []\n")
    base = f"http://127.0.0.1:{port}"
    async with daemons() as started, aiohttp.ClientSession() as http:
        daemon = await users.daemon(config, users.base / "d.log").start()
        started.append(daemon)
        inbox = root / "inbox"
        await wait_for((inbox / "contact").is_dir, what="inbox/contact/ made at start")
        assert (inbox / "contact").stat().st_gid == users.droppers_gid
        source = users.base / "people.csv"
        source.write_text(contacts_csv(2))
        users.as_dropper(f"cp {source} {inbox}/contact/a.csv && mkdir {inbox}/account && "
                         f"cp {source} {inbox}/account/b.csv", umask=0o022)
        await wait_for(lambda: (root / "done/contact/a.csv.result.json").exists(),
                       what="the file in inbox/contact/ done")
        await wait_for(lambda: daemon.seen("file.claim_failed") == 1, what="claim_failed")
        code, body = await _get(http, base + "/readyz")
        assert code == 503 and "cannot be claimed" in body and "account/b.csv" in body
        _, metrics = await _get(http, base + "/metrics")
        assert "bulkdrop_inbox_unclaimable_files 1.0" in metrics
        assert "cannot be claimed" in _status(config)
        users.as_dropper(f"chmod g+w {inbox}/account")
        await wait_for(lambda: (root / "done/account/b.csv.result.json").exists(),
                       what="claimed once the folder is writable")
        assert daemon.seen("file.claim_failed") == 1, "logged once, not at every rescan"
        assert (await _get(http, base + "/readyz"))[0] == 200
