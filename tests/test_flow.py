"""A file's whole life through a real daemon, real files and the simulator over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import time
from pathlib import Path

from daemon.rawfile import CHUNK
from daemon.service import Daemon
from daemon.sim import SimServer
from tests.helpers import DATA, contacts_csv, drop, finished, result_of, sha256, wait_for


async def test_sample_contacts_end_up_done_with_job_id(make_settings, run_daemon, sim: SimServer,
                                                       spool_root: Path) -> None:
    await run_daemon(make_settings())
    dropped = drop(spool_root, "contact/sample.csv", (DATA / "sample_contacts.tsv").read_bytes())
    digest = sha256(dropped)
    done = spool_root / "done" / "contact" / "sample.csv"
    await wait_for(lambda: done.with_name("sample.csv.result.json").exists(), what="result")

    result = result_of(done)
    assert result["status"] == "COMPLETE"
    assert result["api_status"] == "COMPLETED"
    assert result["records"] == {"total": 10, "failed": 0, "succeeded": 10}
    assert result["errors"] == []
    assert result["file"] == "contact/sample.csv"
    assert (result["object"], result["hub"]) == ("contact", "marketing")
    job = sim.sim.jobs[result["job_id"]]
    assert result["sha256"] == digest  # of the file as dropped
    assert job.name == "/sample.csv"
    # The seed's sample is tab-separated: it arrives as comma CSV, field for field.
    seed_rows = list(csv.reader(io.StringIO((DATA / "sample_contacts.tsv").read_text()),
                                delimiter="\t"))
    assert job.body is not None
    sent_rows = list(csv.reader(io.StringIO(job.body.decode("utf-8"))))
    assert sent_rows == seed_rows and len(seed_rows) == 11 and len(seed_rows[0]) == 7
    assert result["csv"] == {"encoding": "utf-8", "delimiter": "tab", "line_endings": "LF",
                             "rows": 10, "converted": True}
    assert result["bytes"] == dropped.stat().st_size if dropped.exists() else done.stat().st_size
    assert result["attempts"] == 1
    assert result["received_at"] <= result["submitted_at"] <= result["finished_at"]
    assert result["finished_at"].endswith("+00:00")
    assert not dropped.exists()
    # The claimed name is removed just after the result is published.
    await wait_for(lambda: not list((spool_root / "processing" / "node-a").rglob("*.csv")),
                   what="the claim gone from processing/")
    assert not (done.parent / "sample.csv.errors.csv").exists()


async def test_job_ending_error_is_filed_as_failed(make_settings, run_daemon,
                                                   spool_root: Path) -> None:
    await run_daemon(make_settings())
    drop(spool_root, "contact/export-sim-error.csv", contacts_csv(3))
    failed = spool_root / "failed" / "contact" / "export-sim-error.csv"
    await wait_for(lambda: failed.with_name(failed.name + ".result.json").exists(),
                   what="failed result")
    result = result_of(failed)
    assert result["status"] == "FAILED"
    assert result["api_status"] == "ERROR"
    assert result["job_id"]
    assert f"job {result['job_id']} ended ERROR" in result["reason"]


async def test_failed_records_are_listed_and_written_as_csv(make_settings, run_daemon,
                                                            sim: SimServer,
                                                            spool_root: Path) -> None:
    # 900 rows, every 3rd email invalid: 300 errors, read over two pages of 200.
    await run_daemon(make_settings())
    drop(spool_root, "contact/mixed.csv", contacts_csv(900, bad_every=3))
    done = spool_root / "done" / "contact" / "mixed.csv"
    await wait_for(lambda: done.with_name("mixed.csv.result.json").exists(), what="result")
    result = result_of(done)
    assert result["status"] == "COMPLETE"
    assert result["records"] == {"total": 900, "failed": 300, "succeeded": 600}
    assert len(result["errors"]) == 100  # capped in the JSON ...
    lines = done.with_name("mixed.csv.errors.csv").read_text().splitlines()
    assert len(lines) == 1 + 300          # ... all of them in the CSV
    assert lines[0].startswith("recordNumber,message,record.email")
    assert "300 failed" in result["reason"]
    assert sim.sim.requests[("GET", "bulk_errors")] == 2
    assert result["errors"][0]["raw"]["record"]["email"] == "user0"
    assert result["errors"][0]["message"] == "Invalid email address 'user0'"


async def test_fifty_files_at_once_make_fifty_jobs(make_settings, run_daemon, sim: SimServer,
                                                   spool_root: Path) -> None:
    await run_daemon(make_settings())
    started = time.monotonic()
    hashes = {sha256(drop(spool_root, f"contact/batch-{i:02}.csv", contacts_csv(20, tag=str(i))))
              for i in range(50)}
    await wait_for(lambda: len(finished(spool_root)) == 50, timeout=60, what="50 files filed")
    elapsed = time.monotonic() - started
    print(f"\n50 files in {elapsed:.2f} s: {50 / elapsed:.1f} files/s")
    assert len(list((spool_root / "done" / "contact").glob("*.result.json"))) == 50
    assert len(sim.sim.jobs) == 50
    assert set(sim.sim.jobs_by_sha256) == hashes
    assert all(len(ids) == 1 for ids in sim.sim.jobs_by_sha256.values())
    assert sim.sim.max_concurrent_uploads <= 4


async def test_same_name_twice_keeps_both(make_settings, run_daemon, spool_root: Path) -> None:
    await run_daemon(make_settings())
    done = spool_root / "done" / "contact"
    first = contacts_csv(2, tag="first")
    second = contacts_csv(3, tag="second")
    drop(spool_root, "contact/a.csv", first)
    await wait_for(lambda: (done / "a.csv.result.json").exists(), what="first result")
    drop(spool_root, "contact/a.csv", second)
    await wait_for(lambda: (done / "a-1.csv.result.json").exists(), what="second result")
    assert (done / "a.csv").read_text() == first
    assert (done / "a-1.csv").read_text() == second
    assert result_of(done / "a.csv")["records"]["total"] == 2
    renamed = result_of(done / "a-1.csv")
    assert renamed["records"]["total"] == 3
    assert renamed["file"] == "contact/a.csv"


async def test_default_object_routes_files_directly_in_inbox(make_settings, run_daemon,
                                                             sim: SimServer,
                                                             spool_root: Path) -> None:
    await run_daemon(make_settings(spool__default_object="account"))
    drop(spool_root, "top.csv", contacts_csv(2))
    done = spool_root / "done" / "top.csv"
    await wait_for(lambda: done.with_name("top.csv.result.json").exists(), what="result")
    assert result_of(done)["object"] == "account"
    assert next(iter(sim.sim.jobs.values())).object == "account"


async def test_metadata_of_the_object_is_sent(make_settings, run_daemon, sim: SimServer,
                                              spool_root: Path, tmp_path: Path) -> None:
    from daemon.config import load_settings

    config = tmp_path / "bulkdrop.toml"
    config.write_text('[objects.contact]\nhub = "crm"\n'
                      'metadata = { identifierFieldName = "email", action = "upsert" }\n'
                      'rename_columns = { first_name = "firstName" }\n'
                      'drop_columns = ["last_name"]\n')
    base = make_settings()
    settings = load_settings(config, {}, forced={
        "api.base_url": sim.base_url, "api.user_secret": "u", "api.element_token": "e",
        "spool.root": str(spool_root), "spool.settle_seconds": 0.1, "http.listen": "",
        "workers.poll_interval_seconds": base.workers.poll_interval_seconds})
    await run_daemon(settings)
    drop(spool_root, "contact/m.csv", contacts_csv(2))
    done = spool_root / "done" / "contact" / "m.csv"
    await wait_for(lambda: done.with_name("m.csv.result.json").exists(), what="result")
    job = next(iter(sim.sim.jobs.values()))
    assert job.metadata == {"identifierFieldName": "email", "action": "upsert"}
    assert job.body is not None
    assert job.body.decode().splitlines()[:2] == ["email,firstName", "user0@example.com,First0"]
    assert job.hub == "crm"
    assert result_of(done)["hub"] == "crm"


async def test_stop_while_idle_is_quick(make_settings) -> None:
    daemon = Daemon(make_settings())
    serving = asyncio.create_task(daemon.serve())
    try:
        await wait_for(daemon.ready.is_set, what="ready")
        started = time.monotonic()
        daemon.request_stop()
        await asyncio.wait_for(serving, 5)  # serve() returns: everything closed
        assert time.monotonic() - started < 5
        assert not daemon.tasks.running
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


async def test_a_stop_that_ends_the_watcher_before_serve_waits_is_still_a_stop(
        make_settings) -> None:
    """A stop asked for while start-up is finishing: the watcher may end for it before
    serve() starts waiting, which is the stop, not a watcher that stopped by itself."""
    daemon = Daemon(make_settings())
    asked = daemon.ledger.next_notification_at  # the last step before serve() waits

    async def stop_meanwhile() -> tuple[str | None, int]:
        daemon.request_stop()
        watcher = next(task for task in daemon.core if task.get_name() == "watcher")
        await asyncio.wait_for(asyncio.shield(watcher), 5)  # ended for the stop
        return await asked()

    daemon.ledger.next_notification_at = stop_meanwhile  # type: ignore[method-assign]
    await asyncio.wait_for(daemon.serve(), 10)  # returns: no "stopped by itself"
    assert daemon.stopped.is_set()


async def test_comma_utf8_file_reaches_the_api_byte_for_byte(make_settings, run_daemon,
                                                             sim: SimServer,
                                                             spool_root: Path) -> None:
    await run_daemon(make_settings())
    content = ('email,name,note\r\n"a@example.com","Zoë","line one\nline two"\r\n'
               'b@example.com,Bob,"say ""hi"""\r\n').encode()
    dropped = drop(spool_root, "contact/exact.csv", content)
    digest = sha256(dropped)
    done = spool_root / "done" / "contact" / "exact.csv"
    await wait_for(lambda: done.with_name("exact.csv.result.json").exists(), what="result")
    job = next(iter(sim.sim.jobs.values()))
    assert job.sha256 == digest == result_of(done)["sha256"]
    assert result_of(done)["csv"]["converted"] is False


async def test_small_medium_and_large_files_reach_the_api_byte_for_byte(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    # Under 256 KiB: sent from the bytes read for its checks; up to 1 MiB: checked in the
    # same trip as the claim, then streamed; larger: checked on its own, then streamed.
    await run_daemon(make_settings())
    sizes = {"small.csv": 300, "medium.csv": 12_000, "large.csv": 40_000}
    digests = {}
    for name, rows in sizes.items():
        dropped = drop(spool_root, f"contact/{name}", contacts_csv(rows, tag=name[0]))
        digests[name] = sha256(dropped)
    done = spool_root / "done" / "contact"
    await wait_for(lambda: len(list(done.glob("*.result.json"))) == 3, what="3 results")
    assert (done / "small.csv").stat().st_size < CHUNK < (done / "medium.csv").stat(
        ).st_size < 1024 * 1024 < (done / "large.csv").stat().st_size
    by_hash = {job.sha256: job for job in sim.sim.jobs.values()}
    for name, rows in sizes.items():
        result = result_of(done / name)
        assert result["status"] == "COMPLETE" and result["records"]["total"] == rows
        assert by_hash[digests[name]].id == result["job_id"], name  # same bytes arrived
