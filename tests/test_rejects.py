"""Bad input ends in failed/ as REJECTED with a reason, never uploaded, never deleted;
names that tools use while writing are left alone."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from daemon import csvfile
from daemon.fileref import FileRef
from daemon.sim import SimServer
from tests.conftest import Users
from tests.helpers import contacts_csv, drop, result_of, wait_for
from tests.procs import daemons, write_config


async def _rejected(spool_root: Path, rel: str) -> dict:
    failed = spool_root / "failed" / rel
    await wait_for(lambda: failed.with_name(failed.name + ".result.json").exists(),
                   what=f"failed/{rel}")
    result = result_of(failed)
    assert result["status"] == "REJECTED"
    assert result["job_id"] is None and result["api_status"] is None
    assert result["file"] == rel
    return result


@pytest.mark.parametrize(("rel", "data", "reason"), [
    ("contact/report.xlsx", b"PK\x03\x04 not a csv", "not a CSV or JSON file by its name"),
    ("contact/empty.csv", b"", "the file is empty"),
    ("contact/blank.csv", b"\r\n\r\n", "only blank lines"),
    ("contact/header.csv", b"email,first_name\r\n", "header line but no data rows"),
    ("contact/HEADER.TXT", b"\xef\xbb\xbfemail,first_name\n\n", "header line but no data rows"),
])
async def test_bad_files_are_rejected_without_upload(make_settings, run_daemon, sim: SimServer,
                                                     spool_root: Path, rel: str, data: bytes,
                                                     reason: str) -> None:
    await run_daemon(make_settings())
    drop(spool_root, rel, data)
    result = await _rejected(spool_root, rel)
    assert reason in result["reason"]
    assert (spool_root / "failed" / rel).read_bytes() == data  # kept, byte for byte
    assert result["bytes"] == len(data)
    assert sim.sim.creates_attempted == 0


async def test_a_bad_file_is_rejected_while_every_job_slot_is_busy(make_settings, run_daemon,
                                                                   sim: SimServer,
                                                                   spool_root: Path) -> None:
    """Checks need no job slot: a bad file does not wait behind running jobs, while a good
    one does (the limit holds)."""
    sim.sim.config.job_seconds = 60
    await run_daemon(make_settings(workers__max_active_jobs=2, workers__uploads=1))
    drop(spool_root, "contact/first.csv", contacts_csv(2, tag="1"))
    drop(spool_root, "contact/second.csv", contacts_csv(2, tag="2"))
    await wait_for(lambda: sim.sim.unfinished_jobs == 2, what="two jobs running")
    drop(spool_root, "contact/third.csv", contacts_csv(2, tag="3"))
    drop(spool_root, "contact/report.xlsx", b"PK\x03\x04 not a csv")
    result = await _rejected(spool_root, "contact/report.xlsx")
    assert "not a CSV or JSON file" in result["reason"]
    await wait_for(lambda: any((spool_root / "processing").rglob("*third.csv")),
                   what="the third file claimed")
    assert sim.sim.creates_attempted == 2, "the third file waits for a job slot"
    assert sim.sim.max_unfinished_jobs == 2
    assert not list((spool_root / "done").rglob("*.csv")), "the first job still runs"


async def test_unknown_object_is_rejected_with_the_api_message(make_settings, run_daemon,
                                                               sim: SimServer,
                                                               spool_root: Path) -> None:
    await run_daemon(make_settings())
    drop(spool_root, "contacts/typo.csv", contacts_csv(2))
    result = await _rejected(spool_root, "contacts/typo.csv")
    assert "No resource found for object 'contacts'" in result["reason"]
    assert "404" in result["reason"]
    assert result["object"] == "contacts"
    assert sim.sim.jobs == {}


async def test_file_directly_in_inbox_without_default_object(make_settings, run_daemon,
                                                            sim: SimServer,
                                                            spool_root: Path) -> None:
    await run_daemon(make_settings())
    drop(spool_root, "loose.csv", contacts_csv(2))
    result = await _rejected(spool_root, "loose.csv")
    assert "inbox/<object>/" in result["reason"]
    assert "default_object" in result["reason"]
    assert sim.sim.creates_attempted == 0


IGNORED = [".hidden.csv", "~$lock.csv", "export.csv.tmp", "export.csv.part", "big.CSV.partial",
           "dl.csv.crdownload", ".export.csv.swp", "x.csv.SWP"]


async def test_temp_and_hidden_names_are_left_alone(make_settings, run_daemon, sim: SimServer,
                                                    spool_root: Path) -> None:
    daemon = await run_daemon(make_settings(spool__rescan_seconds=0.1))
    ignored = [drop(spool_root, f"contact/{name}", contacts_csv(1)) for name in IGNORED]
    hidden_dir = drop(spool_root, "contact/.staging/inner.csv", contacts_csv(1))
    drop(spool_root, "contact/real.csv", contacts_csv(1))
    done = spool_root / "done" / "contact" / "real.csv.result.json"
    await wait_for(done.exists, what="the real file")
    scans = daemon.watcher.scans
    await wait_for(lambda: daemon.watcher.scans >= scans + 2, what="two more rescans")
    for path in [*ignored, hidden_dir]:
        assert path.exists(), f"{path.name} was touched"
    assert len(sim.sim.jobs) == 1
    assert not list((spool_root / "failed").rglob("*"))


async def test_problems_are_listed_with_lines_in_the_result(make_settings, run_daemon,
                                                           sim: SimServer,
                                                           spool_root: Path) -> None:
    await run_daemon(make_settings())
    data = b"email,name\r\na@x,A\r\nb@x\r\nc@x,C\r\nd@x,D,extra\r\n"
    drop(spool_root, "contact/ragged.csv", data)
    result = await _rejected(spool_root, "contact/ragged.csv")
    assert result["errors"] == [{"line": 3, "message": "1 fields, the header has 2"},
                                {"line": 5, "message": "3 fields, the header has 2"}]
    assert result["errors_total"] == 2
    assert result["reason"].startswith("2 problems found before upload, first: line 3")
    assert result["csv"]["rows"] == 4
    errors_csv = (spool_root / "failed" / "contact" / "ragged.csv.errors.csv").read_text()
    assert errors_csv.splitlines()[1] == "3,\"1 fields, the header has 2\""
    assert sim.sim.creates_attempted == 0


@pytest.mark.parametrize("bad", [150, 30_000])
async def test_every_problem_is_in_the_errors_csv(make_settings, run_daemon, sim: SimServer,
                                                  spool_root: Path, bad: int) -> None:
    """The result lists the first 100; the errors CSV has them all, however many."""
    await run_daemon(make_settings())
    rows = ["email,name"] + [f"u{i}@x,U{i}" if i % 2 else f"u{i}@x" for i in range(2 * bad)]
    drop(spool_root, "contact/many.csv", "\n".join(rows) + "\n")
    result = await _rejected(spool_root, "contact/many.csv")
    assert len(result["errors"]) == 100 and result["errors_total"] == bad
    lines = (spool_root / "failed/contact/many.csv.errors.csv").read_text().splitlines()
    assert lines[0] == "line,message" and len(lines) == bad + 1
    assert lines[1] == '2,"1 fields, the header has 2"'
    assert lines[-1] == f'{2 * bad},"1 fields, the header has 2"'
    assert sim.sim.creates_attempted == 0


@pytest.mark.parametrize("rows", [3, 40_000])  # read with its claim, or on its own
async def test_a_file_that_cannot_be_read_is_rejected_and_kept(sim: SimServer, users: Users,
                                                               rows: int) -> None:
    """A dropper's file of mode 0600: the daemon's user may move it, not read it."""
    root = users.spool()
    config = write_config(users.base / "c.toml", sim.base_url, root,
                          spool={"default_object": "contact"})
    data = contacts_csv(rows).encode()
    source = users.base / "people.csv"
    source.write_bytes(data)
    async with daemons() as started:
        daemon = await users.daemon(config, users.base / "d.log").start()
        started.append(daemon)
        inbox = root / "inbox" / "contact"
        await wait_for(inbox.is_dir, what="inbox/contact/ made at start")
        users.as_dropper(f"cp {source} {inbox}/.l.tmp && chmod 600 {inbox}/.l.tmp && "
                         f"mv {inbox}/.l.tmp {inbox}/locked.csv && cp {source} {inbox}/open.csv")
        result = await _rejected(root, "contact/locked.csv")
        assert result["reason"].startswith("cannot read the file: Permission denied")
        kept = root / "failed" / "contact" / "locked.csv"
        assert kept.read_bytes() == data and kept.stat().st_uid == users.dropper_uid
        done = root / "done" / "contact" / "open.csv.result.json"
        await wait_for(done.exists, what="the readable file filed")
        assert daemon.seen("file.read_retry") == 0, "refused is the file's own doing"
    assert [job.filename for job in sim.sim.jobs.values()] == ["open.csv"]


async def test_no_free_descriptors_is_never_a_files_verdict(make_settings, run_daemon,
                                                            sim: SimServer, spool_root: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """Running out of descriptors at the moment a file is read (EMFILE: provoked by hand,
    it cannot be timed for real) makes the read wait and try again; the file is done."""
    real_inspect = csvfile.inspect
    refused = 0

    def crowded(source: FileRef, columns: csvfile.Columns | None = None,
                **kwargs: Any) -> csvfile.Inspection:
        nonlocal refused
        if refused < 2:
            refused += 1
            raise OSError(errno.EMFILE, "Too many open files", str(source.path))
        return real_inspect(source, columns, **kwargs)

    monkeypatch.setattr(csvfile, "inspect", crowded)
    daemon = await run_daemon(make_settings())
    drop(spool_root, "contact/crowded.csv", contacts_csv(3))
    done = spool_root / "done" / "contact" / "crowded.csv"
    await wait_for(lambda: done.with_name("crowded.csv.result.json").exists(), what="filed")
    assert result_of(done)["status"] == "COMPLETE" and refused == 2
    assert daemon.metrics.registry.get_sample_value(
        "bulkdrop_io_retries_total", {"step": "reading"}) == 2
    assert not daemon.troubles.count("reading"), "the trouble is over"
