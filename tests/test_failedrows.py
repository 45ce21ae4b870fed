"""Failed rows back as a CSV to fix and drop again: ``<file>.failed.csv`` matched by row
number (1- and 0-based), by identifier, by fields, for a file in parts and a cp1252
semicolon file; and the round trip through ``bulkdrop retry --failed-rows``."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.csvfile import Columns, inspect
from daemon.failedrows import Span, write_failed_rows
from daemon.fileref import FileRef
from daemon.sim import SimServer
from tests.helpers import clean_env, contacts_csv, drop, finish, finished, result_of, wait_for

HEADER = ["email", "first_name", "last_name", "bulkdrop_error", "bulkdrop_row"]


def _failed_csv(filed: Path) -> list[list[str]]:
    raw = filed.with_name(filed.name + ".failed.csv").read_bytes()
    return list(csv.reader(io.StringIO(raw.decode("utf-8"))))


async def _filed(spool_root: Path, rel: str, content: str | bytes) -> tuple[Path, dict[str, Any]]:
    drop(spool_root, rel, content)
    await wait_for(lambda: finished(spool_root), timeout=30, what="filed")
    filed = next(p for p in finished(spool_root))
    filed = filed.with_name(filed.name.removesuffix(".result.json"))
    return filed, result_of(filed)


@pytest.mark.parametrize("row_base", [1, 0])
async def test_matched_by_row_number_counted_from_1_or_0(row_base: int, make_settings,
                                                         run_daemon, sim: SimServer,
                                                         spool_root: Path) -> None:
    sim.sim.config.row_base = row_base
    await run_daemon(make_settings())
    # Rows 2 and 5 fail, none at row 0: the count's base shows only in the fields.
    bad = (2, 5)
    content = "email,first_name,last_name\n" + "".join(
        f"user{i}{'' if i in bad else '@example.com'},First{i},Last\n" for i in range(7))
    filed, result = await _filed(spool_root, "contact/people.csv", content)
    assert result["failed_rows"] == {"file": "people.csv.failed.csv", "rows": 2,
                                     "unmatched": 0, "matched_by": "row_number", "not_sent": 0}
    assert _failed_csv(filed) == [HEADER] + [
        [f"user{i}", f"First{i}", "Last", f"Invalid email address 'user{i}'", str(i + 2)]
        for i in bad]


@pytest.mark.parametrize(("metadata", "route"), [
    ('{ identifierFieldName = "email" }', "identifier"),
    ("{}", "fields"),
])
async def test_matched_without_row_numbers(metadata: str, route: str, make_settings,
                                           run_daemon, sim: SimServer,
                                           spool_root: Path) -> None:
    """Plain error records (fields and a status message, no row number), as the field's
    Pardot and Eloqua connectors give them."""
    sim.sim.config.error_shape = "plain"
    await run_daemon(make_settings(f"[objects.contact]\nmetadata = {metadata}\n"))
    filed, result = await _filed(spool_root, "contact/people.csv",
                                 contacts_csv(5, bad_every=2))   # rows 0, 2, 4
    assert result["failed_rows"]["matched_by"] == route
    assert result["failed_rows"]["rows"] == 3 and result["failed_rows"]["unmatched"] == 0
    assert _failed_csv(filed) == [HEADER] + [
        [f"user{i}", f"First{i}", "Last", f"74234: Invalid email address 'user{i}'",
         str(i + 2)] for i in (0, 2, 4)]


async def test_a_file_in_parts_matches_each_parts_records_to_its_rows(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    await run_daemon(make_settings("[objects.contact]\nmax_rows_per_job = 3\n"))
    filed, result = await _filed(spool_root, "contact/parts.csv",
                                 contacts_csv(9, bad_every=4))   # rows 0, 4, 8
    assert len(result["jobs"]) == 3
    assert result["failed_rows"]["rows"] == 3
    assert _failed_csv(filed) == [HEADER] + [
        [f"user{i}", f"First{i}", "Last", f"Invalid email address 'user{i}'", str(i + 2)]
        for i in (0, 4, 8)]


async def test_a_cp1252_semicolon_file_gets_its_own_columns_back_in_utf8(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    await run_daemon(make_settings(
        '[objects.contact]\nrename_columns = { "E-Mail" = "email" }\n'
        'drop_columns = ["Notiz"]\n'))
    content = ("E-Mail;Nachname;Notiz\r\n"
               "anna@example.com;Müller;a\r\n"
               "\r\n"                               # a blank line: not a row, but a line
               "jürgen-at-example.com;Größe;b\r\n").encode("cp1252")
    filed, result = await _filed(spool_root, "contact/kunden.csv", content)
    assert result["csv"]["encoding"] == "cp1252" and result["records"]["failed"] == 1
    assert _failed_csv(filed) == [
        ["E-Mail", "Nachname", "Notiz", "bulkdrop_error", "bulkdrop_row"],
        ["jürgen-at-example.com", "Größe", "b",
         "Invalid email address 'jürgen-at-example.com'", "4"]]


async def test_the_round_trip_fix_and_send_again(make_settings, run_daemon, sim: SimServer,
                                                 spool_root: Path, tmp_path: Path) -> None:
    settings = make_settings()
    await run_daemon(settings)
    filed, result = await _filed(spool_root, "contact/people.csv",
                                 contacts_csv(6, bad_every=3))
    assert result["status"] == "COMPLETE" and result["records"]["failed"] == 2
    failed_csv = filed.with_name("people.csv.failed.csv")
    rows = _failed_csv(filed)
    for row in rows[1:]:
        row[0] += "@example.com"   # the fix a person makes
    with failed_csv.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    config = tmp_path / "retry.toml"
    config.write_text(f'[spool]\nroot = "{spool_root}"\nnode_id = "node-a"\n')
    proc = await _bulkdrop("retry", "--config", str(config), "--failed-rows", str(failed_csv))
    code, out, err = await finish(proc)
    assert code == 0, err
    again = spool_root / "inbox" / "contact" / "people.retry-1.csv"
    assert str(again) in out
    await wait_for(lambda: (spool_root / "done" / "contact" /
                            "people.retry-1.csv.result.json").exists(), timeout=30,
                   what="the retry filed")
    retried = result_of(spool_root / "done" / "contact" / "people.retry-1.csv")
    assert retried["status"] == "COMPLETE"
    assert retried["records"] == {"total": 2, "failed": 0, "succeeded": 2}
    sent = sim.sim.jobs[retried["job_id"]].body or b""
    assert sent.decode().splitlines()[0] == "email,first_name,last_name"  # bulkdrop's gone
    assert "failed_rows" not in retried
    # A second retry of the same rows takes the next name; nothing is overwritten.
    code, out, _ = await finish(await _bulkdrop("retry", "--config", str(config),
                                                "--failed-rows", str(filed)))
    assert code == 0 and "people.retry-2.csv" in out


async def _bulkdrop(*args: str) -> Any:
    import asyncio
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *args, env=clean_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def test_a_failed_csv_moved_by_hand_into_inbox_is_sent_without_bulkdrops_columns(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    await run_daemon(make_settings())
    drop(spool_root, "contact/fixed.csv",
         "email,first_name,last_name,bulkdrop_error,bulkdrop_row\r\n"
         "ann@example.com,Ann,A,Invalid email address 'ann',2\r\n")
    await wait_for(lambda: finished(spool_root), timeout=30, what="filed")
    result = result_of(spool_root / "done" / "contact" / "fixed.csv")
    assert result["status"] == "COMPLETE" and result["csv"]["converted"] is True
    assert sim.sim.jobs[result["job_id"]].body == (
        b"email,first_name,last_name\r\nann@example.com,Ann,A\r\n")


def test_several_records_naming_one_row_and_records_naming_none(tmp_path: Path) -> None:
    """Messages of records naming the same row are joined (each once); a record naming
    no row is counted unmatched; the rows come back with every field as dropped, a
    quoted field spanning lines too, and the line it starts on."""
    path = tmp_path / "a.csv"
    path.write_bytes(b'email,note\nann@x,"two\nlines"\n\nbob,b\n')
    found = inspect(path)
    assert found.dialect is not None
    errors = [{"recordNumber": 2, "message": "Invalid email"},
              {"recordNumber": 2, "message": "Duplicate"},
              {"recordNumber": 2, "message": "Invalid email"},
              {"recordNumber": 1, "error": {"message": "Too long"}},
              {"recordNumber": 9, "message": "No such row"},
              {"status": "no fields, no number"}]
    out = io.BytesIO()
    result = write_failed_rows(FileRef(path), found.dialect, Columns(), None,
                               [Span(None, 0, found.rows)], errors, out)
    assert (result.rows, result.unmatched) == (2, 2)
    assert result.as_dict("a.csv.failed.csv")["matched_by"] == "row_number"
    assert list(csv.reader(io.StringIO(out.getvalue().decode()))) == [
        ["email", "note", "bulkdrop_error", "bulkdrop_row"],
        ["ann@x", "two\nlines", "Too long", "2"],
        ["bob", "b", "Invalid email; Duplicate", "5"]]


async def test_rows_of_parts_never_sent_come_back_too(make_settings, run_daemon,
                                                      sim: SimServer, spool_root: Path) -> None:
    """Part 1's job ends ERROR, so parts 2 and 3 are never sent: their rows are in the
    failed-rows file with why, so sending it again loses nothing."""
    await run_daemon(make_settings("[objects.contact]\nmax_rows_per_job = 3\n"))
    filed, result = await _filed(spool_root, "contact/x-sim-error.csv",
                                 contacts_csv(7, bad_every=5))   # rows 0 and 5 bad
    assert result["status"] == "FAILED"
    assert [j["status"] for j in result["jobs"]] == ["FAILED", "NOT_SENT", "NOT_SENT"]
    rows = _failed_csv(filed)[1:]
    assert [r[0] for r in rows] == ["user0", "user3@example.com", "user4@example.com",
                                    "user5", "user6@example.com"]
    assert rows[0][3] == "Invalid email address 'user0'"
    assert rows[1][3] == "not sent: part 2 never became a job"
    assert result["failed_rows"]["not_sent"] == 4 and result["failed_rows"]["rows"] == 5


async def test_a_part_whose_records_all_failed_does_not_stop_the_rest(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    await run_daemon(make_settings("[objects.contact]\nmax_rows_per_job = 3\n"))
    content = "email,first_name,last_name\n" + "".join(
        f"user{i}{'' if i < 3 else '@example.com'},F,L\n" for i in range(9))
    filed, result = await _filed(spool_root, "contact/first-bad.csv", content)
    assert result["status"] == "COMPLETE" and result["partial"] is True
    assert [j["status"] for j in result["jobs"]] == ["COMPLETE"] * 3
    assert result["records"] == {"total": 9, "failed": 3, "succeeded": 6}
    assert [r[0] for r in _failed_csv(filed)[1:]] == ["user0", "user1", "user2"]


def test_a_column_named_row_is_data_not_a_row_number(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("order,row\nA1,9\nA2,8\nA7,2\n")
    found = inspect(path)
    assert found.dialect is not None
    errors = [{"order": "A7", "row": "2", "status": "Bad order"}]  # plain: fields at the top
    out = io.BytesIO()
    result = write_failed_rows(FileRef(path), found.dialect, Columns(), "order",
                               [Span(None, 0, found.rows)], errors, out)
    assert result.as_dict("x")["matched_by"] == "identifier"
    assert list(csv.reader(io.StringIO(out.getvalue().decode())))[1] == [
        "A7", "2", "Bad order", "4"]


async def test_a_second_file_of_the_same_name_names_its_own_failed_rows(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    await run_daemon(make_settings())
    for n in (1, 2):
        drop(spool_root, "contact/a.csv", contacts_csv(3, tag=str(n), bad_every=2))
        await wait_for(lambda n=n: len(finished(spool_root)) == n, timeout=30, what="filed")
    second = result_of(spool_root / "done" / "contact" / "a-1.csv")
    assert second["failed_rows"]["file"] == "a-1.csv.failed.csv"
    rows = _failed_csv(spool_root / "done" / "contact" / "a-1.csv")
    assert [r[0] for r in rows[1:]] == ["user0", "user2"]


async def test_a_file_larger_than_the_limit_only_as_dropped_is_sent_as_its_rendering(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    """Every field quoted: the file as dropped is over max_bytes_per_job, its rendering
    (minimal quoting) is not. It goes as one part, the rendering, which the API takes."""
    content = '"email","first_name","last_name"\n' + "".join(
        f'"user{i}@example.com","First{i}","Last"\n' for i in range(60))
    limit = len(content) - 200
    sim.sim.config.max_upload_bytes = limit
    await run_daemon(make_settings(f"[objects.contact]\nmax_bytes_per_job = {limit}\n"))
    drop(spool_root, "contact/quoted.csv", content)
    await wait_for(lambda: finished(spool_root), timeout=30, what="filed")
    result = result_of(spool_root / "done" / "contact" / "quoted.csv")
    assert result["status"] == "COMPLETE", result["reason"]
    assert len(result["jobs"]) == 1 and result["records"]["total"] == 60
    assert len(sim.sim.jobs[result["job_id"]].body or b"") <= limit
