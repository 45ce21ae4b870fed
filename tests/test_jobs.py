"""A file's jobs: each created through API trouble (the retry deadline kept to, a retry
after a request that may have made a job named as a possible duplicate); a file over
``objects.<name>.max_rows_per_job`` rows or ``max_bytes_per_job`` bytes sent as several
parts, one job each, and a 429 about size failing the file at once; each job
followed to its end, or cancelled at the job timeout. In-process daemon or real daemon
subprocesses, the simulator's scripted faults over HTTP."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import signal
import sqlite3
import time
import tracemalloc
from pathlib import Path

import pytest

from daemon.config import load_settings
from daemon.csvfile import Columns, inspect
from daemon.normalise import normalised_blocks, part_spans
from daemon.settings import Settings
from daemon.sim import SimServer
from tests.helpers import contacts_csv, drop, finished, result_of, result_when_filed, wait_for
from tests.procs import DaemonProc, daemons, recorded_job_ids, write_config

# -- creating a job -----------------------------------------------------------------------


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
    result = await result_when_filed(spool_root, "done", "contact/twice.csv")
    assert result["status"] == "COMPLETE" and result["attempts"] == 2
    assert result["possible_duplicate"] is duplicate
    made = 2 if fault in ("lost", "504") else 1
    assert len(sim.sim.jobs) == made and result["job_id"] == max(sim.sim.jobs)
    registry = daemon.metrics.registry
    counted = registry.get_sample_value("bulkdrop_create_retries_total",
                                        {"instance": "default", "reason": reason or "5xx"})
    assert (counted or 0) == (1 if duplicate else 0)


async def test_the_retry_deadline_means_the_deadline(make_settings, run_daemon,
                                                     sim: SimServer, spool_root: Path) -> None:
    sim.sim.config.error_rate = 1.0
    sim.sim.config.retry_after_rate = 0
    await run_daemon(make_settings(api__retry_deadline_seconds=4))
    dropped = time.monotonic()
    drop(spool_root, "contact/never.csv", contacts_csv(2))
    result = await result_when_filed(spool_root, "failed", "contact/never.csv")
    took = time.monotonic() - dropped
    assert result["status"] == "FAILED"
    assert took >= 4, f"gave up after {took:.1f} s, before the deadline"
    said = result["reason"].removeprefix("gave up uploading after ").split()
    assert 4 <= int(said[0]) <= took + 1 and said[1:3] == ["s", "and"], result["reason"]
    attempts = int(said[3])
    assert attempts == sum(n for code, n in sim.sim.responses.items() if code >= 500) >= 3


# -- a file in parts ----------------------------------------------------------------------


def _split_settings(sim: SimServer, root: Path, tmp_path: Path, max_rows: int = 4) -> Settings:
    config = tmp_path / "split.toml"
    config.write_text(f"[objects.contact]\nmax_rows_per_job = {max_rows}\n")
    return load_settings(config, {}, forced={
        "api.base_url": sim.base_url, "api.user_secret": "u", "api.element_token": "e",
        "spool.root": str(root), "spool.node_id": "n1", "spool.settle_seconds": 0.1,
        "http.listen": "", "workers.poll_interval_seconds": 0.05,
        "workers.poll_max_interval_seconds": 0.2})


def _rows(body: bytes | None) -> list[list[str]]:
    assert body is not None
    return list(csv.reader(io.StringIO(body.decode())))


async def test_a_file_over_the_limit_goes_as_several_jobs(run_daemon, sim: SimServer,
                                                          tmp_path: Path) -> None:
    root = tmp_path / "spool"
    await run_daemon(_split_settings(sim, root, tmp_path))
    content = contacts_csv(10, bad_every=4)   # rows 0, 4, 8 have bad emails
    drop(root, "contact/big.csv", content)
    done = root / "done" / "contact" / "big.csv"
    await wait_for(lambda: done.with_name("big.csv.result.json").exists(), what="result")
    result = result_of(done)
    assert result["status"] == "COMPLETE"
    assert [j["rows"] for j in result["jobs"]] == [[1, 4], [5, 8], [9, 10]]
    assert [j["status"] for j in result["jobs"]] == ["COMPLETE"] * 3
    assert result["records"] == {"total": 10, "failed": 3, "succeeded": 7}
    assert [e["raw"]["part"] for e in result["errors"]] == [1, 2, 3]
    assert result["job_id"] == result["jobs"][0]["job_id"]
    # Every part carries the header; together they are the file, row for row.
    sent = [_rows(sim.sim.jobs[j["job_id"]].body) for j in result["jobs"]]
    dropped = list(csv.reader(io.StringIO(content)))
    assert all(part[0] == dropped[0] for part in sent)
    assert [row for part in sent for row in part[1:]] == dropped[1:]


async def test_a_failing_part_stops_the_rest(run_daemon, sim: SimServer, tmp_path: Path) -> None:
    root = tmp_path / "spool"
    await run_daemon(_split_settings(sim, root, tmp_path))
    drop(root, "contact/x-sim-error.csv", contacts_csv(10))
    failed = root / "failed" / "contact" / "x-sim-error.csv"
    await wait_for(lambda: failed.with_name(failed.name + ".result.json").exists(),
                   what="result")
    result = result_of(failed)
    assert result["status"] == "FAILED" and result["api_status"] == "ERROR"
    assert result["reason"].startswith("part 1 of 3 (rows 1-4): job ")
    assert result["reason"].endswith("parts 2, 3 not sent")
    assert [j["status"] for j in result["jobs"]] == ["FAILED", "NOT_SENT", "NOT_SENT"]
    assert len(sim.sim.jobs) == 1


def _recorded_parts(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM parts WHERE job_id IS NOT NULL").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


async def test_a_whole_files_recorded_job_is_never_cut_after_a_restart(
        sim: SimServer, tmp_path: Path) -> None:
    """A file sent whole, its job recorded, then max_rows_per_job added before the
    restart (or a release with a byte limit): it is followed by its job, not sent again
    in parts."""
    sim.sim.config.job_seconds = 1.5
    root = tmp_path / "spool"
    drop(root, "contact/nine.csv", contacts_csv(9))
    config = write_config(tmp_path / "c.toml", sim.base_url, root)
    db = root / ".state" / "n1" / "bulkdrop.db"
    async with daemons() as started:
        daemon = await DaemonProc(config, tmp_path / "d.log").start()
        started.append(daemon)
        await wait_for(lambda: recorded_job_ids(db), what="the job recorded")
        await daemon.kill()
        config.write_text(config.read_text() + "[objects.contact]\nmax_rows_per_job = 3\n")
        daemon = await DaemonProc(config, tmp_path / "d.log").start()
        started.append(daemon)
        await wait_for(lambda: len(finished(root)) == 1, timeout=30, what="filed")
        daemon.signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 20) == 0
    result = result_of(root / "done" / "contact" / "nine.csv")
    assert result["status"] == "COMPLETE" and "jobs" not in result
    assert len(sim.sim.jobs) == 1 and result["records"]["total"] == 9


async def test_kill_between_parts_continues_with_the_rest(sim: SimServer,
                                                          tmp_path: Path) -> None:
    sim.sim.config.job_seconds = 1.5  # the daemon is following part 1 when it dies
    root = tmp_path / "spool"
    drop(root, "contact/three.csv", contacts_csv(9))
    objects = [{"email": f"u{i}@example.com", "n": {"i": i}} for i in range(9)]
    drop(root, "contact/three.json", json.dumps(objects, indent=2))  # sent from its copy
    config = write_config(tmp_path / "c.toml", sim.base_url, root)
    config.write_text(config.read_text() + "[objects.contact]\nmax_rows_per_job = 3\n")
    db = root / ".state" / "n1" / "bulkdrop.db"
    async with daemons() as started:
        daemon = await DaemonProc(config, tmp_path / "d.log").start()
        started.append(daemon)
        await wait_for(lambda: _recorded_parts(db) == 2, what="part 1 of each recorded")
        await daemon.kill()
        assert len(sim.sim.jobs) == 2
        daemon = await DaemonProc(config, tmp_path / "d.log").start()
        started.append(daemon)
        await wait_for(lambda: len(finished(root)) == 2, timeout=30, what="filed")
        daemon.signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 20) == 0
    results = [result_of(root / "done" / "contact" / name) for name in ("three.csv", "three.json")]
    for result in results:
        assert result["status"] == "COMPLETE" and result["records"]["total"] == 9
    assert len(sim.sim.jobs) == 6, "part 1 was followed by its id, not sent again"
    assert sorted(j["job_id"] for r in results for j in r["jobs"]) == sorted(sim.sim.jobs)
    sent = b"".join(sim.sim.jobs[j["job_id"]].body or b"" for j in results[1]["jobs"])
    assert [json.loads(line) for line in sent.splitlines()] == objects
    assert not list((root / "processing").rglob("*.tmp")), "the array's copy is gone"


# -- following a job ----------------------------------------------------------------------


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


# -- a file over max_bytes_per_job ------------------------------------------------------------

MIB = 1 << 20


def _big_csv(rows: int) -> str:
    """About 100 bytes a row, some quoted (a comma inside), so the rendering is CSV's."""
    return "email,first_name,notes\n" + "".join(
        f'user{i}@example.com,First{i},"note {i}, {"x" * 60}"\n' for i in range(rows))


async def test_a_file_over_max_bytes_goes_in_parts_the_api_takes(make_settings, run_daemon,
                                                                 sim: SimServer,
                                                                 spool_root: Path) -> None:
    """A 3 GB file against a 1 GiB limit, scaled down: 3 MiB against 1 MiB, the simulator
    refusing anything larger (as the API refuses past 6 GB)."""
    sim.sim.config.max_upload_bytes = MIB + 4096  # the file part plus the form around it
    await run_daemon(make_settings(f"[objects.contact]\nmax_bytes_per_job = {MIB}\n"))
    content = _big_csv(32_000)
    assert len(content) > 3 * MIB
    drop(spool_root, "contact/big.csv", content)
    await wait_for(lambda: finished(spool_root), timeout=60, what="filed")
    result = result_of(spool_root / "done" / "contact" / "big.csv")
    assert result["status"] == "COMPLETE", result["reason"]
    assert len(result["jobs"]) == 4 and sim.sim.creates_attempted == 4
    bodies = [sim.sim.jobs[j["job_id"]].body or b"" for j in result["jobs"]]
    assert all(len(body) <= MIB for body in bodies)
    assert min(len(body) for body in bodies[:-1]) > MIB - 200  # filled up to a row
    sent = [row for body in bodies for row in _rows(body)[1:]]
    assert sent == list(csv.reader(io.StringIO(content)))[1:]
    assert result["records"] == {"total": 32_000, "failed": 0, "succeeded": 32_000}


async def test_a_429_about_size_fails_the_file_at_once(make_settings, run_daemon,
                                                       sim: SimServer,
                                                       spool_root: Path) -> None:
    sim.sim.config.max_upload_bytes = 1024
    await run_daemon(make_settings())
    drop(spool_root, "contact/wide.csv", contacts_csv(100))
    await wait_for(lambda: finished(spool_root), timeout=30, what="filed")
    result = result_of(spool_root / "failed" / "contact" / "wide.csv")
    assert result["status"] == "FAILED" and result["job_id"] is None
    assert "The upload is too large" in result["reason"]
    assert "max_bytes_per_job" in result["reason"]
    assert sim.sim.creates_attempted == 1, "the same upload would get the same answer"


def test_the_cut_is_measured_in_flat_memory(tmp_path: Path) -> None:
    """Cutting a 7 MiB file into 512 KiB uploads holds no more than a few batches of rows;
    each part's rendering fits, every row is in exactly one part, max_rows holds too, and
    a row larger than the limit goes alone."""
    path = tmp_path / "big.csv"
    path.write_text(_big_csv(65_000))
    found = inspect(path)
    assert found.dialect is not None
    tracemalloc.start()
    try:
        spans = part_spans(path, found.dialect, Columns(), 0, MIB // 2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MIB, f"{peak / MIB:.1f} MiB"
    assert len(spans) > 12 and spans[0][0] == 0
    assert [first for first, _ in spans[1:]] == list(itertools.accumulate(
        rows for _, rows in spans[:-1]))
    assert sum(rows for _, rows in spans) == 65_000
    rendered = b"".join(normalised_blocks(path, found.dialect, Columns()))
    header, *lines = rendered.splitlines(keepends=True)  # no field here spans lines
    for first, rows in spans:
        size = len(header) + sum(map(len, lines[first:first + rows]))
        assert MIB // 2 - 200 < size <= MIB // 2 or (first, rows) == spans[-1]
    assert all(rows <= 3000 for _, rows in part_spans(path, found.dialect, Columns(),
                                                      3000, MIB // 2))
    huge = tmp_path / "huge.csv"
    huge.write_text("a,b\n1,2\n" + f"3,{'y' * 5000}\n" + "5,6\n")
    found = inspect(huge)
    assert found.dialect is not None
    assert part_spans(huge, found.dialect, Columns(), 0, 1024) == [(0, 1), (1, 1), (2, 1)]
