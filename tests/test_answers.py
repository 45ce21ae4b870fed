"""The API as it answers in the field: both shapes of status body and of error record,
every way a job ends, and what the result then says, end to end against the simulator
answering in each shape; and the reading of each shape on its own."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from daemon.answers import error_message, read_status, records
from daemon.sim import SimServer
from tests.helpers import contacts_csv, drop, finished, result_of, wait_for


@dataclass(frozen=True)
class Case:
    name: str          # the file's name: the simulator's markers choose its ending
    bad_every: int     # every n-th email invalid: those records fail
    folder: str
    status: str
    api_status: str    # classic spelling; v3 spells CANCELLED with one L
    failed: int        # of 4 records
    reason: str


CASES = [
    Case("clean.csv", 0, "done", "COMPLETE", "COMPLETED", 0, "completed: 4 records"),
    Case("some.csv", 2, "done", "COMPLETE", "COMPLETED", 2, "completed: 4 records, 2 failed"),
    Case("all.csv", 1, "failed", "FAILED", "COMPLETED", 4, "all 4 records failed"),
    Case("e-sim-error.csv", 2, "failed", "FAILED", "ERROR", 2,
         "ended ERROR: The vendor rejected the bulk job (simulated) (2 of 4 records failed)"),
    Case("a-sim-aborted.csv", 0, "failed", "FAILED", "ABORTED", 0,
         "ended ABORTED: The platform aborted the bulk job (simulated)"),
    Case("c-sim-cancelled.csv", 0, "failed", "FAILED", "CANCELLED", 0, "ended CANCEL"),
    Case("u-sim-unknown.csv", 0, "done", "COMPLETE", "COMPLETED", 0, "completed: 4 records"),
]
SHAPES = [("classic", "numbered"), ("v3", "plain")]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize(("status_shape", "error_shape"), SHAPES, ids=["-".join(s) for s in SHAPES])
async def test_every_ending_in_every_shape(status_shape: str, error_shape: str, case: Case,
                                           make_settings, run_daemon, sim: SimServer,
                                           spool_root: Path) -> None:
    sim.sim.config.status_shape = status_shape  # type: ignore[assignment]
    sim.sim.config.error_shape = error_shape  # type: ignore[assignment]
    with structlog.testing.capture_logs() as logged:
        await run_daemon(make_settings())
        drop(spool_root, f"contact/{case.name}", contacts_csv(4, bad_every=case.bad_every))
        await wait_for(lambda: finished(spool_root), timeout=30, what="filed")
    filed = spool_root / case.folder / "contact" / case.name
    result = result_of(filed)
    api_status = case.api_status
    if status_shape == "v3" and api_status == "CANCELLED":
        api_status = "CANCELED"
    assert (result["status"], result["api_status"]) == (case.status, api_status)
    assert result["records"] == {"total": 4, "failed": case.failed,
                                 "succeeded": 4 - case.failed}
    assert result["partial"] is (0 < case.failed < 4)
    assert case.reason in result["reason"]
    errors_csv = filed.with_name(case.name + ".errors.csv")
    if not case.failed:
        assert result["errors"] == [] and not errors_csv.exists()
        return
    rows = list(csv.DictReader(io.StringIO(errors_csv.read_text())))
    assert len(rows) == len(result["errors"]) == case.failed
    bad = [f"user{i}" for i in range(0, 4, case.bad_every)]
    if error_shape == "numbered":
        assert [r["record.email"] for r in rows] == bad
        assert [e["message"] for e in result["errors"]] == [
            f"Invalid email address '{b}'" for b in bad]
    else:  # verbatim: the record's own fields, its message in "status", no row number
        assert [r["email"] for r in rows] == bad and "recordNumber" not in rows[0]
        assert [e["message"] for e in result["errors"]] == [
            f"74234: Invalid email address '{b}'" for b in bad]
        assert result["errors"][0]["raw"]["status"] == rows[0]["status"]
    unknown = [e for e in logged if e["event"] == "job.unknown_status"]
    assert unknown == []


async def test_an_unknown_word_is_logged_once_and_polled_through(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    sim.sim.config.job_seconds = 1.0  # many polls under the unknown word
    with structlog.testing.capture_logs() as logged:
        await run_daemon(make_settings())
        drop(spool_root, "contact/u-sim-unknown.csv", contacts_csv(4))
        await wait_for(lambda: finished(spool_root), timeout=30, what="filed")
    polls = sim.sim.requests[("GET", "bulk_status")]
    unknown = [e for e in logged if e["event"] == "job.unknown_status"]
    assert polls >= 4
    assert [e["api_status"] for e in unknown] == ["VENDOR_PROCESSING"]
    assert result_of(spool_root / "done" / "contact" / "u-sim-unknown.csv")["status"] == \
        "COMPLETE"


async def test_an_unknown_word_shows_when_the_job_times_out(make_settings, run_daemon,
                                                            sim: SimServer,
                                                            spool_root: Path) -> None:
    sim.sim.config.job_seconds = 0.3  # then the unknown word, for ever
    await run_daemon(make_settings(workers__job_timeout_seconds=1.5))
    drop(spool_root, "contact/u-sim-unknown-sim-never.csv", contacts_csv(2))
    await wait_for(lambda: finished(spool_root), timeout=30, what="filed")
    result = result_of(spool_root / "failed" / "contact" / "u-sim-unknown-sim-never.csv")
    assert result["api_status"] == "VENDOR_PROCESSING"
    assert "last status VENDOR_PROCESSING" in result["reason"]


async def test_partial_failed_sends_a_file_with_some_failed_records_to_failed(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    await run_daemon(make_settings('[objects.contact]\npartial = "failed"\n'))
    drop(spool_root, "contact/some.csv", contacts_csv(4, bad_every=2))
    await wait_for(lambda: finished(spool_root), timeout=30, what="filed")
    result = result_of(spool_root / "failed" / "contact" / "some.csv")
    assert result["status"] == "FAILED" and result["partial"] is True
    assert result["records"] == {"total": 4, "failed": 2, "succeeded": 2}
    assert 'partial = "failed"' in result["reason"]


# -- each shape on its own ----------------------------------------------------------------

@pytest.mark.parametrize(("body", "word", "count", "failed", "message", "ended"), [
    ({"status": "COMPLETED", "recordsCount": 5, "recordsFailedCount": 1}, "COMPLETED", 5, 1,
     None, True),
    ({"jobStatus": "COMPLETED", "recordCount": 5, "errorCount": 0,
      "createdDate": 1764633600000}, "COMPLETED", 5, 0, None, True),
    ({"status": "ABORTED", "error": "platform trouble"}, "ABORTED", None, None,
     "platform trouble", True),
    ({"jobStatus": "CANCELED", "statusMessage": "cancelled by a user"}, "CANCELED", None,
     None, "cancelled by a user", True),
    ({"status": "CANCELLATION_PENDING"}, "CANCELLATION_PENDING", None, None, None, False),
    ({"status": "complete", "recordsCount": "7"}, "complete", 7, None, None, True),
    ({"status": "SOMETHING_NEW", "recordsCount": -1}, "SOMETHING_NEW", None, None, None,
     False),
])
def test_status_bodies_in_every_shape(body: dict[str, Any], word: str, count: int | None,
                                      failed: int | None, message: str | None,
                                      ended: bool) -> None:
    status = read_status(body)
    assert (status.word, status.count, status.failed, status.message, status.ended) == \
        (word, count, failed, message, ended)
    assert status.known is (word != "SOMETHING_NEW")


@pytest.mark.parametrize(("count", "failed", "errors_read", "total", "failed_", "succeeded"), [
    (10, 3, None, 10, 3, 7),        # recordsCount counts the failed ones too
    (7, 10, None, 17, 10, 7),       # more failed than counted: it counted the successes
    (10, None, 4, 10, 4, 6),        # no failed count: the error records read
    (None, None, None, None, None, None),
    (0, 0, None, 0, 0, 0),
])
def test_what_the_counts_mean(count: int | None, failed: int | None, errors_read: int | None,
                              total: int | None, failed_: int | None,
                              succeeded: int | None) -> None:
    counted = records(count, failed, errors_read)
    assert (counted.total, counted.failed, counted.succeeded) == (total, failed_, succeeded)


@pytest.mark.parametrize(("record", "message"), [
    ({"recordNumber": 2, "message": "Invalid email", "record": {}}, "Invalid email"),
    ({"email": "x", "status": "74234: Invalid prospect email address"},
     "74234: Invalid prospect email address"),
    ({"error": {"message": "Conflicts Found - emailAddress"}}, "Conflicts Found - emailAddress"),
    ({"errorMessage": " Required field missing "}, "Required field missing"),
    ({"email": "x"}, '{"email": "x"}'),
    ("a plain string", "a plain string"),
])
def test_an_error_records_message_wherever_it_is(record: Any, message: str) -> None:
    assert error_message(record) == message
