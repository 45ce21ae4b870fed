"""A large CSV file checked in two halves at once (the second by a real child process)
finds exactly what reading it in order finds, or hands it back to be read in order."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import csvfile, csvsplit, rawfile
from daemon.csvfile import Columns, Inspection
from daemon.fileref import FileRef
from daemon.sim import SimServer
from tests.helpers import contacts_csv, drop, result_of, wait_for

ROW = 'ann@example.com,Ann,"Müller & Söhne, GmbH","said ""call me"""'


@pytest.fixture(autouse=True)
def _split_small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csvsplit, "SPLIT_MIN", 1)


def _file(tmp_path: Path, rows: list[str], end: str = "\r\n", head: str = "") -> Path:
    path = tmp_path / "f.csv"
    path.write_bytes((head + "email,first,company,note" + end
                      + "".join(r + end for r in rows)).encode("utf-8"))
    return path


def _seen(found: Inspection) -> tuple[object, ...]:
    return (found.sha256, found.bytes, found.lines, found.dialect, found.header, found.rows,
            found.problems, found.problems_total)


def _split(path: Path) -> Inspection | None:
    return csvsplit.inspect_split(FileRef(path), Columns())


N = 5000  # rows: a file larger than one read (rawfile.CHUNK), as only those are split
ROWS = [ROW] * N


@pytest.mark.parametrize("case", [
    "clean", "lf", "bom", "problems in both halves", "more problems than are kept",
    "an unclosed quote in the second half", "a NUL in the second half",
    "a line too long in the first half", "a quoted line end in each half"])
def test_two_halves_find_what_reading_in_order_finds(tmp_path: Path, case: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rows, end, head = list(ROWS), "\r\n", ""
    if case == "lf":
        end = "\n"
    elif case == "bom":
        head = "\ufeff"
    elif case == "problems in both halves":
        rows[10] = rows[N - 10] = "x,y"
    elif case == "more problems than are kept":
        rows = ["x,y"] * 300
    elif case == "a quote closed only on the next line, in the second half":
        rows[N * 3 // 4] = 'x,"never closed,y,z'
    elif case == "a NUL in the second half":
        rows[N * 7 // 8] = "x,\x00,y,z"
    elif case == "a line too long in the first half":
        monkeypatch.setattr(csvfile, "LINE_LIMIT", 200)
        rows[20] = "x," * 100 + "y"
    elif case == "a quoted line end in each half":
        rows[5] = rows[N - 5] = 'x,"two' + end + 'lines",y,z'
    path = _file(tmp_path, rows, end, head)
    split = _split(path)
    in_order = csvfile.inspect(path)
    if case == "a line too long in the first half":
        assert split is None  # reading stopped: what comes after was never decoded
        assert in_order.problems_total == 1
        assert _seen(csvsplit.inspect(path)) == _seen(in_order)
        return
    assert split is not None
    assert _seen(split) == _seen(in_order)
    if case == "problems in both halves":
        assert [p.line for p in split.problems] == [12, N - 8]


def test_halves_that_do_not_meet_at_a_record_end_are_read_in_order(tmp_path: Path) -> None:
    """A quoted field open across the first line end after the middle: the child's start
    is inside it, so its findings cannot count."""
    rows = list(ROWS)
    rows[N // 2] = 'x,y,z,"a note' + "\r\n" * 20000 + 'over many lines"'
    path = _file(tmp_path, rows)
    data = path.read_bytes()
    assert data.index(b'"a note') < len(data) // 2 < data.index(b'lines"')
    assert _split(path) is None
    in_order = csvfile.inspect(path)
    assert in_order.problem is None and in_order.rows == N
    assert in_order.lines == 1 + N + 20000
    assert _seen(csvsplit.inspect(path)) == _seen(in_order)


@pytest.mark.parametrize("where", [10, N // 4, N - 10])
def test_a_file_that_is_not_utf8_after_all_is_read_in_order(tmp_path: Path, where: int) -> None:
    """Only the first bytes say UTF-8; a Windows-1252 byte later (in a line the header's
    read took, or in a block of the fast path's, in either half) sends the file back to
    be read in order, which tells its encoding."""
    rows = ["ann@example.com,Ann,Acme,plain"] * N
    rows[where] = "bob@example.com,Bob,Acme,caf\udce9"
    path = tmp_path / "f.csv"
    path.write_bytes(("email,first,company,note\r\n" + "".join(r + "\r\n" for r in rows))
                     .encode("utf-8", "surrogateescape"))
    assert _split(path) is None
    found = csvsplit.inspect(path)
    assert found.dialect is not None and found.dialect.encoding == "cp1252"
    assert found.problem is None and found.rows == N


@pytest.mark.parametrize("half", ["first", "second"])
def test_after_a_half_stops_the_file_is_read_in_order(tmp_path: Path, half: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A line too long stops reading: a byte after it that is not UTF-8 was never
    decoded, and reading in order (from the bytes up) finds it, and the encoding."""
    monkeypatch.setattr(csvfile, "LINE_LIMIT", 200)
    rows = list(ROWS)
    rows[N // 4 if half == "first" else N * 3 // 4] = "x," * 100 + "y"
    rows[N - 10] = "bob@example.com,Bob,Acme,caf\udce9"
    path = tmp_path / "f.csv"
    path.write_bytes(("email,first,company,note\r\n" + "".join(r + "\r\n" for r in rows))
                     .encode("utf-8", "surrogateescape"))
    assert _split(path) is None
    found = csvsplit.inspect(path)
    assert _seen(found) == _seen(csvfile.inspect(path))
    assert found.dialect is not None and found.dialect.encoding == "utf-8"
    assert found.problems_total == 1 and "not valid utf-8" in found.problems[0].message


def test_a_child_that_fails_leaves_the_file_to_be_read_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _file(tmp_path, list(ROWS))
    monkeypatch.setattr(sys, "executable", "/bin/false")
    assert _split(path) is None
    split = _split(path)  # None only where the middle falls in a quoted field
    assert split is None or _seen(split) == _seen(csvfile.inspect(path))


@pytest.mark.parametrize("signal", ["TERM", "KILL"])
def test_a_child_ended_by_a_signal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   signal: str) -> None:
    """A service stopping signals every process of it (TERM): the check is tried again
    later (an OSError that is not the file's), not read in order while the daemon stops.
    Any other end (KILL: the kernel out of memory) and the file is read in order."""
    path = _file(tmp_path, list(ROWS))
    killed = tmp_path / "killed"
    killed.write_text(f"#!/bin/sh\nkill -{signal} $$\n")
    killed.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(killed))
    if signal == "TERM":
        with pytest.raises(InterruptedError, match="signal 15"):
            csvsplit.inspect(path)
    else:
        assert _seen(csvsplit.inspect(path)) == _seen(csvfile.inspect(path))


def test_files_that_are_not_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under SPLIT_MIN, UTF-16, or CR line ends: read in order."""
    path = _file(tmp_path, list(ROWS))
    monkeypatch.setattr(csvsplit, "SPLIT_MIN", path.stat().st_size + 1)
    assert _split(path) is None
    monkeypatch.setattr(csvsplit, "SPLIT_MIN", 1)
    text = "email,first,company,note\r\n" + "".join(r + "\r\n" for r in ROWS)
    path.write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))
    assert _split(path) is None
    path.write_bytes(text.replace("\r\n", "\r").encode())
    assert _split(path) is None


_CELL = st.text(alphabet=st.sampled_from(list('ab é",\r\n')), max_size=4)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=st.lists(st.lists(_CELL, min_size=0, max_size=5), min_size=1, max_size=60),
       crlf=st.booleans())
def test_wherever_the_middle_falls_the_findings_are_the_same(
        tmp_path_factory: pytest.TempPathFactory, rows: list[list[str]], crlf: bool) -> None:
    end = "\r\n" if crlf else "\n"
    buf = io.StringIO()
    csv.writer(buf, lineterminator=end).writerows([["a", "b", "c", "d"], *rows])
    path = tmp_path_factory.mktemp("split") / "f.csv"
    path.write_bytes(buf.getvalue().encode())
    split = _split(path)  # None only where the middle falls in a quoted field
    assert split is None or _seen(split) == _seen(csvfile.inspect(path))


async def test_the_daemon_checks_a_large_file_in_two_halves(
        make_settings: Any, run_daemon: Any, sim: SimServer, spool_root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A file over the split size (lowered here) is checked by a real child process in
    the running daemon, then uploaded and filed as any other."""
    started = []
    real_start = csvsplit._start_second_half

    def start(*args: Any) -> Any:
        child = real_start(*args)
        started.append(child.pid)
        return child

    monkeypatch.setattr(csvsplit, "_start_second_half", start)
    await run_daemon(make_settings())
    data = contacts_csv(20_000)
    assert len(data) > rawfile.CHUNK  # only files larger than one read are offered
    drop(spool_root, "contact/large.csv", data)
    done = spool_root / "done" / "contact" / "large.csv"
    await wait_for(lambda: done.with_name("large.csv.result.json").exists(), what="filed")
    result = result_of(done)
    assert result["status"] == "COMPLETE" and result["csv"]["rows"] == 20_000
    assert len(started) == 1
    assert [job.records_count for job in sim.sim.jobs.values()] == [20_000]
