"""The ledger: its timestamps; a ledger that is corrupt, damaged in every page, empty or
not a file at all, met at start; a write that fails for want of space, tried again until
it succeeds; and a spool left unfinished by an earlier release, which opens, each of its
files going on from where that release left it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from daemon.client import OpenConnectorsClient
from daemon.ledger import Ledger, LedgerView, read_summary, utcnow
from daemon.service import Daemon, StartupError
from daemon.settings import Secret
from daemon.sim import SimServer
from tests.helpers import contacts_csv, drop, finished, left_in_processing, result_of, wait_for
from tests.procs import SECRET_ENV, DaemonProc, daemons, recorded_job_ids, write_config

RELEASE_1 = Path(__file__).parent / "data" / "ledger_v1"  # made by its make.py


@pytest.mark.parametrize("instances", [False, True], ids=["as-it-was", "instances-added"])
async def test_a_spool_left_by_the_last_release_resumes(sim: SimServer, tmp_path: Path,
                                                        instances: bool) -> None:
    """...and goes on under [api], the instance "default", when [instances] are added."""
    root = tmp_path / "spool"
    shutil.copytree(RELEASE_1 / "spool", root)
    db = root / ".state" / "n1" / "bulkdrop.db"
    # The API still has the jobs that release created (1004: unsent.csv's upload reached
    # it, the answer never came back).
    client = OpenConnectorsClient(  # the daemon's credentials: its jobs, in its job space
        sim.base_url, user_secret=Secret(SECRET_ENV["BULKDROP_API_USER_SECRET"]),
        organization_secret=Secret(""),
        element_token=Secret(SECRET_ENV["BULKDROP_API_ELEMENT_TOKEN"]))
    try:
        for job in json.loads((RELEASE_1 / "jobs.json").read_text()):
            created = await client.create_job(job["hub"], job["object"], job["name"][1:],
                                              job["body"].encode())
            assert created.id == job["id"]
    finally:
        await client.close()
    added = {"instances.marketing": {"user_secret": "m-user", "element_token": "m-token"}}
    config = write_config(tmp_path / "c.toml", sim.base_url, root,
                          **{"objects.contact": {"max_rows_per_job": 2}},
                          **(added if instances else {}))
    async with daemons() as started:
        daemon = await DaemonProc(config, tmp_path / "d.log").start()
        started.append(daemon)
        await wait_for(lambda: len(finished(root)) == 3, timeout=30, what="3 files filed")
        if instances:  # and the instance added takes files of its own
            drop(root, "marketing/contact/new.csv", contacts_csv(2))
            await wait_for(lambda: len(finished(root)) == 4, timeout=30, what="new.csv filed")
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
    assert {single["instance"], parts["instance"], unsent["instance"]} == {"default"}
    assert len(sim.sim.jobs) == (7 if instances else 6), "no recorded job was created again"
    if instances:
        new = result_of(root / "done" / "marketing" / "contact" / "new.csv")
        assert new["status"] == "COMPLETE" and new["instance"] == "marketing"
        assert new["object"] == "contact"
        spaces = {job.space for job in sim.sim.jobs.values()}
        assert sim.sim.jobs[new["job_id"]].space not in {
            sim.sim.jobs[single["job_id"]].space}, "made with marketing's token"
        assert len(spaces) == 2
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT DISTINCT state FROM files").fetchall() == [("FINISHED",)]
    finally:
        conn.close()


def test_ledger_timestamps_are_utc_iso_with_milliseconds() -> None:
    for _ in range(3):
        before = datetime.now(UTC)
        stamp = utcnow()
        after = datetime.now(UTC)
        parsed = datetime.fromisoformat(stamp)
        assert stamp.endswith("+00:00") and len(stamp) == len("2026-01-02T03:04:05.678+00:00")
        # Truncated to the millisecond, never outside the moments around the call.
        assert before - timedelta(milliseconds=1) <= parsed <= after


async def test_corrupt_ledger_is_set_aside_and_files_still_finish(make_settings, run_daemon,
                                                                  sim: SimServer) -> None:
    settings = make_settings()
    left_in_processing(settings, "contact/after-corruption.csv", contacts_csv(2))
    db = settings.spool.state_dir / "bulkdrop.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"this is not a SQLite database" * 100)
    await run_daemon(settings)
    done = settings.spool.root / "done" / "contact" / "after-corruption.csv"
    await wait_for(lambda: done.with_name(done.name + ".result.json").exists(), what="result")
    kept = list(db.parent.glob("bulkdrop.db.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"this is not")


async def test_unopenable_ledger_stops_start_up_instead_of_starting_afresh(
        make_settings, sim: SimServer) -> None:
    settings = make_settings()
    (settings.spool.state_dir / "bulkdrop.db").mkdir(parents=True)  # not a file at all
    with pytest.raises(StartupError, match="bulkdrop.db"):
        await Daemon(settings).serve()
    assert not list(settings.spool.state_dir.glob("*.corrupt-*"))


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


async def test_finished_files_older_than_the_retention_are_pruned_in_batches(
        tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    await ledger.open()
    try:
        now = datetime.now(UTC)
        ages = {"old1": 100, "old2": 95, "old3": 91, "pending": 120, "recent": 10,
                "running": 200}
        for claim, days in ages.items():
            at = (now - timedelta(days=days)).isoformat(timespec="milliseconds")
            await ledger.add_claim(claim, f"contact/{claim}.csv", f"p/{claim}", at)
            if claim == "running":
                continue  # never finished: never pruned, however old
            await ledger.plan_parts(claim, [(0, 1), (1, 1)])
            notify = [("hook", "failed", "{}")] if claim == "pending" else []
            await ledger.mark_finishing(claim, "COMPLETE", "COMPLETED", "ok", "{}", None,
                                        notify=notify)
            await ledger.mark_finished(claim, at)
        with sqlite3.connect(tmp_path / "ledger.db") as conn:  # history as old as its file
            conn.execute("UPDATE events SET at = (SELECT coalesce(finished_at, received_at)"
                         " FROM files f WHERE f.claim_id = events.claim_id)")
        stop = asyncio.Event()
        pruning = asyncio.create_task(ledger.keep_pruned(90, stop, first=0, every=3600,
                                                         batch=2))
        # A notification still to be sent keeps its file; history goes by its own age.
        await wait_for(lambda: _claims(tmp_path) == {"pending", "recent", "running"}
                       and _claims(tmp_path, "events") == {"recent"},
                       what="the old finished files and old history pruned")
        stop.set()
        await asyncio.wait_for(pruning, 5)
        assert _claims(tmp_path, "parts") == {"pending", "recent"}
        # Everything finished before now: the recent file and its 3 history lines go.
        assert (await ledger.prune(utcnow(), 10)) == (1, 3)
        assert _claims(tmp_path) == {"pending", "running"}
    finally:
        await ledger.close()


def _claims(tmp_path: Path, table: str = "files") -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{tmp_path / 'ledger.db'}?mode=ro",
                                            uri=True)) as conn:
        return {r[0] for r in conn.execute(f"SELECT claim_id FROM {table}")}


async def _open_close(db: Path, write: bool = True) -> Ledger:
    ledger = Ledger(db)
    await ledger.open()
    if write:
        await ledger.add_claim(f"c{utcnow()}", "contact/a.csv", "processing/n/a.csv",
                               utcnow())
    await ledger.close()
    return ledger


async def test_a_ledger_closed_cleanly_is_not_read_through_again(tmp_path: Path) -> None:
    db = tmp_path / "bulkdrop.db"
    assert (await _open_close(db)).checked, "a new ledger is checked"
    marker = tmp_path / "bulkdrop.db.closed"
    assert marker.exists() and not (tmp_path / "bulkdrop.db-wal").exists()
    ledger = Ledger(db)
    await ledger.open()
    try:
        assert not ledger.checked, "as the last clean close left it: not read through"
        assert not marker.exists(), "the record goes at open: a crash from now on is seen"
    finally:
        await ledger.close()
    assert marker.exists()


async def test_a_ledger_changed_after_its_clean_close_is_checked_and_set_aside(
        tmp_path: Path) -> None:
    db = tmp_path / "bulkdrop.db"
    await _open_close(db)
    data = bytearray(db.read_bytes())
    for page_end in range(2 * 4096, len(data) + 1, 4096):
        data[page_end - 40] ^= 0xFF
    db.write_bytes(bytes(data))
    ledger = Ledger(db)
    await ledger.open()
    await ledger.close()
    assert ledger.checked and ledger.set_aside is not None


async def test_a_ledger_left_with_a_wal_or_a_bad_record_is_checked(tmp_path: Path) -> None:
    db = tmp_path / "bulkdrop.db"
    await _open_close(db)
    (tmp_path / "bulkdrop.db.closed").write_text("not json")
    ledger = await _open_close(db, write=False)
    assert ledger.checked
    # A WAL beside it: written after the record, by a run that did not close.
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS extra (x)")
    ledger = await _open_close(db, write=False)  # while conn holds the WAL open
    conn.close()
    assert ledger.checked
    assert not (tmp_path / "bulkdrop.db.closed").exists(), "another connection was open"


async def test_a_prune_batch_reads_only_the_oldest_rows_of_a_big_ledger(
        tmp_path: Path) -> None:
    """Counted in SQLite's own steps, not seconds: a batch must not go through every
    finished file (it holds the ledger's write lock, and files wait behind it)."""
    db = tmp_path / "ledger.db"
    ledger = Ledger(db)
    await ledger.open()
    try:
        now, old = utcnow(), "2020-01-01T00:00:00.000+00:00"
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.executemany(
                "INSERT INTO files (claim_id, rel_path, claimed_path, state, received_at,"
                " updated_at, finished_at, outcome) VALUES (?, 'r', 'p', 'FINISHED', ?, ?, ?,"
                " 'COMPLETE')", [(f"c{i:06}", now, now, old if i < 5 else now)
                                 for i in range(20_000)])
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0

        await ledger.run(ledger.conn.set_progress_handler, count, 1000)
        assert (await ledger.prune("2021-01-01T00:00:00.000+00:00", 500)) == (5, 0)
        await ledger.run(ledger.conn.set_progress_handler, None, 0)
        # Through every finished row it took ~100 (thousand steps); by age, none.
        assert steps < 10, f"{steps} thousand SQLite steps to prune 5 of 20,000 files"
    finally:
        await ledger.close()


async def test_what_may_not_pass_for_a_clean_close(tmp_path: Path) -> None:
    db = tmp_path / "bulkdrop.db"
    marker = tmp_path / "bulkdrop.db.closed"
    await _open_close(db)
    # `bulkdrop status` between a stop and a start leaves an empty WAL: still clean.
    read_summary(db)
    assert (tmp_path / "bulkdrop.db-wal").exists()
    assert not (await _open_close(db, write=False)).checked
    # Edited in place, its size and mtime put back: its ctime still tells.
    data = bytearray(db.read_bytes())
    data[-100] ^= 0xFF
    st = db.stat()
    db.write_bytes(bytes(data))
    os.utime(db, ns=(st.st_atime_ns, st.st_mtime_ns))
    while db.stat().st_ctime_ns == st.st_ctime_ns:  # a coarse clock: until its next tick
        os.utime(db, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (await _open_close(db, write=False)).checked
    # Another file put in its place while it was open: not the file that was closed.
    ledger = Ledger(db)
    await ledger.open()
    shutil.copy(db, tmp_path / "copy.db")
    os.replace(tmp_path / "copy.db", db)
    await ledger.close()
    assert not marker.exists()
    # An error met by the web view's own connection counts too.
    await _open_close(db)
    ledger = Ledger(db)
    await ledger.open()
    view = LedgerView(db)
    view.on_error = partial(ledger.note_error, loop=None)
    with pytest.raises(sqlite3.OperationalError):
        await view._run("SELECT * FROM no_such_table", ())
    await view.close()
    await ledger.close()
    assert not marker.exists()
    # A query that fails for good: no record of a clean close.
    ledger = Ledger(db)
    await ledger.open()
    with pytest.raises(sqlite3.OperationalError):
        await ledger.run(ledger.query, "SELECT * FROM no_such_table")
    await ledger.close()
    assert not marker.exists()
    # A FIFO in the record's place is not read (no hang), and goes. (Were it read, the
    # thread would block for good and the interpreter wait for it at exit.)
    os.mkfifo(marker)
    assert (await asyncio.wait_for(_open_close(db), 30)).checked
    assert marker.is_file() and not marker.is_symlink()
    # A link where the record is written first is not followed.
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (tmp_path / ".bulkdrop.db.closed.tmp").symlink_to(victim)
    await _open_close(db)
    assert victim.read_text() == "mine" and marker.is_file() and not marker.is_symlink()


async def test_status_counts_and_latest_from_a_ledger_of_every_kind_of_row(
        tmp_path: Path) -> None:
    from daemon.ops import format_status

    db = tmp_path / "bulkdrop.db"
    await _open_close(db, write=False)
    rows = [  # claim, state, outcome, instance, records_failed, finished_at, updated_at
        ("a", "FINISHED", "COMPLETE", None, 2, "2026-01-01T00:00:05", "2026-01-01T00:00:05"),
        ("b", "FINISHED", "COMPLETE", "crm", 0, "2026-01-01T00:00:04", "2026-01-01T00:00:04"),
        ("c", "FINISHING", "COMPLETE", "crm", 1, None, "2026-01-01T00:00:09"),
        ("d", "FINISHED", None, "", None, "2026-01-01T00:00:03", "2026-01-01T00:00:03"),
        ("e", "SUBMITTED", None, "crm", None, None, "2026-01-01T00:00:08"),
        ("f", "FINISHED", "REJECTED", "", None, "2026-01-01T00:00:01", "2026-01-01T00:00:01"),
    ]
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.executemany(
            "INSERT INTO files (claim_id, rel_path, claimed_path, state, outcome, instance,"
            " records_failed, finished_at, updated_at, received_at) VALUES"
            " (?1, 'contact/' || ?1 || '.csv', 'p', ?2, ?3, ?4, ?5, ?6, ?7, ?7)", rows)
    report = read_summary(db, latest=4)
    assert report["counts"] == {"COMPLETE": 2, "FINISHING": 1, "FINISHED": 1,
                                "SUBMITTED": 1, "REJECTED": 1}
    assert report["partial"] == 2, "COMPLETE with records failed, filed or being filed"
    assert report["instances"] == {"(none)": {"FINISHED": 1, "REJECTED": 1},
                                   "crm": {"COMPLETE": 1, "FINISHING": 1, "SUBMITTED": 1},
                                   "default": {"COMPLETE": 1}}
    assert [r["rel_path"] for r in report["latest"]] == [
        "contact/c.csv", "contact/e.csv", "contact/a.csv", "contact/b.csv"]
    assert [r["instance"] for r in report["latest"]] == ["crm", "crm", "default", "crm"]
    shown = format_status({**report, "node": "n", "ledger": str(db),
                           "inbox": {"waiting": 0, "oldest": None}})
    assert ("COMPLETE 2, FAILED 0, REJECTED 1, without a result 1; in progress 2 "
            "(FINISHING 1, SUBMITTED 1)") in shown


async def test_clean_stops_in_a_row_still_read_the_ledger_through_weekly(
        tmp_path: Path) -> None:
    db = tmp_path / "bulkdrop.db"
    marker = tmp_path / "bulkdrop.db.closed"
    assert (await _open_close(db)).checked
    checked_at = json.loads(marker.read_text())["checked_at"]
    assert not (await _open_close(db, write=False)).checked
    # A start that skipped the check carries the time of the last one forward.
    assert json.loads(marker.read_text())["checked_at"] == checked_at
    record = json.loads(marker.read_text())
    record["checked_at"] -= 8 * 86400  # as if the clean stops had gone on for 8 days
    marker.write_text(json.dumps(record))
    assert (await _open_close(db, write=False)).checked
    assert json.loads(marker.read_text())["checked_at"] > checked_at
