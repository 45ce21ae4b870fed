"""CSV intake on real files: detection, every rejection with its line, the normaliser."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import csvfile
from daemon.csvfile import Columns, inspect
from daemon.normalise import normalised_blocks


def _write(tmp_path: Path, data: bytes, name: str = "f.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _normalised(path: Path, columns: Columns | None = None) -> list[list[str]]:
    found = inspect(path, columns)
    assert found.problem is None, found.problem
    assert found.dialect is not None
    out = b"".join(normalised_blocks(path, found.dialect, columns or Columns()))
    return list(csv.reader(io.StringIO(out.decode("utf-8"), newline="")))


ROWS = [["email", "name", "city"], ["a@x.com", "Zoë", "Köln"], ["b@x.com", "Bob, Jr.", "Paris"]]


def _render(rows: list[list[str]], delimiter: str, encoding: str,
            lineterminator: str = "\r\n") -> bytes:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator=lineterminator).writerows(rows)
    text = buf.getvalue()
    if encoding == "utf-16-le-bom":
        return b"\xff\xfe" + text.encode("utf-16-le")
    if encoding == "utf-16-be-bom":
        return b"\xfe\xff" + text.encode("utf-16-be")
    return text.encode(encoding)


@pytest.mark.parametrize(("delimiter", "encoding", "name", "expected"), [
    (",", "utf-8", "comma", "utf-8"),
    ("\t", "utf-8", "tab", "utf-8"),
    (";", "utf-8-sig", "semicolon", "utf-8-sig"),
    ("|", "cp1252", "pipe", "cp1252"),
    ("\t", "utf-16-le-bom", "tab", "utf-16-le"),
    (";", "utf-16-be-bom", "semicolon", "utf-16-be"),
])
def test_dialects_and_encodings_are_detected_and_converted(
        tmp_path: Path, delimiter: str, encoding: str, name: str, expected: str) -> None:
    path = _write(tmp_path, _render(ROWS, delimiter, encoding))
    found = inspect(path)
    assert found.dialect is not None
    assert (found.dialect.encoding, found.dialect.describe()["delimiter"]) == (expected, name)
    assert found.rows == 2 and found.header == ("email", "name", "city")
    assert _normalised(path) == ROWS
    assert found.passes_through(Columns()) == (delimiter == "," and encoding == "utf-8")


def test_the_seeds_tab_separated_sample(tmp_path: Path) -> None:
    sample = (Path(__file__).parent / "data" / "sample_contacts.tsv").read_bytes()
    path = _write(tmp_path, sample, "sample.csv")
    found = inspect(path)
    assert found.dialect is not None and found.dialect.delimiter == "\t"
    assert (found.rows, len(found.header), found.lines) == (10, 7, 11)
    assert _normalised(path) == list(csv.reader(io.StringIO(sample.decode()), delimiter="\t"))


def test_commas_inside_tab_separated_fields_do_not_fool_detection(tmp_path: Path) -> None:
    rows = [["company", "address"], ["Acme, Inc.", "1 Main St, Springfield"],
            ["Beta", "2 High St, Shelbyville, OR"]]
    path = _write(tmp_path, _render(rows, "\t", "utf-8"))
    assert _normalised(path) == rows


def test_old_mac_line_endings(tmp_path: Path) -> None:
    path = _write(tmp_path, b"email,name\r1@x,A\r2@x,B\r")
    found = inspect(path)
    assert found.dialect is not None and found.dialect.line_endings == "CR"
    assert _normalised(path) == [["email", "name"], ["1@x", "A"], ["2@x", "B"]]


def test_columns_are_renamed_dropped_and_required(tmp_path: Path) -> None:
    path = _write(tmp_path, b"C_EmailAddress,C_FirstName,Internal\r\na@x,Ann,secret\r\n")
    columns = Columns(rename={"C_EmailAddress": "email", "C_FirstName": "firstName"},
                      drop=("Internal",), require=("email",))
    assert _normalised(path, columns) == [["email", "firstName"], ["a@x", "Ann"]]
    assert not inspect(path, columns).passes_through(columns)
    missing = inspect(path, Columns(require=("email", "phone")))
    assert missing.problem == "line 1: required column 'email' is missing" or \
        missing.problems_total == 2
    assert [str(p) for p in missing.problems] == [
        "line 1: required column 'email' is missing",
        "line 1: required column 'phone' is missing"]


@pytest.mark.parametrize(("data", "expected"), [
    (b"email,name\r\na@x,A\r\nb@x\r\nc@x,C,extra\r\n",
     ["line 3: 1 fields, the header has 2", "line 4: 3 fields, the header has 2"]),
    (b"email,,name\na,b,c\n", ["line 1: column 2 has no name"]),
    (b"email,name,Email ,name\n1,2,3,4\n",
     ["line 1: column name 'name' appears twice (columns 2 and 4)"]),
    (b",,\n1,2,3\n", ["line 1: the header line has no column names"]),
    (b"email,name\na@x,A\nb@x,\"B\nc@x,C\n", ['line 3: a quoted field is never closed '
                                            '(unbalanced ")']),
    (b"email,name\na@x,A\x00B\n", ["line 2: NUL bytes: is this a UTF-16 file without a byte "
                                  "order mark?"]),
    (b"email,name\na@x,Zo\xc3\xab\nb@x,\xff\xfe bad\n",
     ["line 3: bytes that are not valid utf-8 text; save the file as UTF-8 and drop it "
      "again"]),
    (b"email,name\na@x,caf\xe9\nb@x,\x81\n",
     ["line 3: bytes that are not valid cp1252 text; save the file as UTF-8 and drop it "
      "again"]),
])
def test_rejections_name_their_lines(tmp_path: Path, data: bytes, expected: list[str]) -> None:
    found = inspect(_write(tmp_path, data))
    assert [str(p) for p in found.problems] == expected
    assert found.problems_total == len(expected)
    assert found.bytes == len(data)


def test_windows_1252_is_the_fallback_when_utf8_fails(tmp_path: Path) -> None:
    path = _write(tmp_path, "email,name\r\na@x,café\r\nb@x,Müller – 5 €\r\n".encode("cp1252"))
    found = inspect(path)
    assert found.dialect is not None and found.dialect.encoding == "cp1252"
    assert _normalised(path)[2] == ["b@x", "Müller – 5 €"]


def test_problems_are_capped_but_counted(tmp_path: Path) -> None:
    data = b"a,b\n" + b"1\n" * 250
    found = inspect(_write(tmp_path, data))
    assert len(found.problems) == 100 and found.problems_total == 250
    assert found.problem is not None and found.problem.startswith("250 problems")
    assert found.problems[0].line == 2 and found.problems[-1].line == 101


# Fields may hold the file's own delimiter, quotes, newlines, unicode and nothing at all.
# A second candidate delimiter filling every field would make any file ambiguous, so
# other delimiters stay out of the cells (commas in a TSV are covered above).
def _table(delimiter: str, encoding: str) -> st.SearchStrategy[list[list[str]]]:
    others = "".join(d for d in ",\t;|" if d != delimiter)
    if encoding == "cp1252":   # letters whose bytes can never read as UTF-8 by accident
        alphabet = st.sampled_from([chr(c) for c in range(0x20, 0x7f) if chr(c) not in others]
                                   + [chr(c) for c in range(0xC0, 0x100)] + ['"', "\n"])
    else:
        alphabet = st.characters(blacklist_categories=("Cs",),
                                 blacklist_characters="\x00\r\ufeff" + others)
    cell = st.text(alphabet, max_size=12)
    name = st.text(alphabet.filter(lambda c: c.strip() and c not in '"\n'),  # type: ignore[attr-defined]
                   min_size=1, max_size=8)
    return st.integers(2, 5).flatmap(lambda width: st.tuples(
        st.lists(name, min_size=width, max_size=width, unique_by=str.strip),
        st.lists(st.lists(cell, min_size=width, max_size=width), min_size=1, max_size=6),
    )).map(lambda t: [t[0], *t[1]])


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16-le-bom", "utf-16-be-bom",
                                      "cp1252"])
@pytest.mark.parametrize("delimiter", [",", "\t", ";", "|"])
def test_normalising_keeps_every_row_and_field(tmp_path_factory: pytest.TempPathFactory,
                                               delimiter: str, encoding: str) -> None:
    folder = tmp_path_factory.mktemp("prop")

    @settings(max_examples=25, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_table(delimiter, encoding))
    def check(rows: list[list[str]]) -> None:
        rows = [rows[0]] + [r for r in rows[1:] if r != [""] * len(r) or len(r) > 1]
        path = _write(folder, _render(rows, delimiter, encoding))
        assert _normalised(path) == rows

    check()


def test_a_windows_1252_file_starting_like_a_byte_order_mark_is_windows_1252(
        tmp_path: Path) -> None:
    """"þÿ" in Windows-1252 is FE FF, the UTF-16 BE byte order mark; the bytes after it
    show it is none (found by the property test above)."""
    rows = [["þÿ", "!"], ["a", "b"]]
    path = _write(tmp_path, _render(rows, "\t", "cp1252"))
    assert path.read_bytes().startswith(b"\xfe\xff")
    found = inspect(path)
    assert found.dialect is not None and found.dialect.encoding == "cp1252"
    assert _normalised(path) == rows


# Mostly plain cells (the fast path's), some with what only the csv module can read.
_CELLS = st.one_of(st.text(alphabet=st.sampled_from(list("ab é")), max_size=5),
                   st.text(alphabet=st.sampled_from(list("ab,;")), max_size=3),
                   st.text(alphabet=st.sampled_from(list('a,"\r\n\x00')), max_size=4))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(width=st.integers(1, 4), data=st.data(),
       crlf=st.booleans(), block=st.sampled_from([4, 9, 33, 1 << 20]),
       columns_delim=st.sampled_from([",", ";"]))
def test_the_fast_path_finds_what_the_csv_module_finds(
        tmp_path_factory: pytest.TempPathFactory, width: int, data: st.DataObject,
        crlf: bool, block: int, columns_delim: str) -> None:
    """Lines checked a block at a time by counting give the same rows, lines and
    problems as the csv module reading them all, wherever the blocks fall."""
    end = "\r\n" if crlf else "\n"
    plain = st.text(alphabet=st.sampled_from(list("ab é")), max_size=5)
    quoted = st.text(alphabet=st.sampled_from(list('ab é",;')), max_size=5)
    multiline = st.text(alphabet=st.sampled_from(list('a"\r\n,')), max_size=4)
    row = st.one_of(st.lists(plain, min_size=width, max_size=width).map(columns_delim.join),
                    st.lists(st.one_of(plain, quoted), min_size=width, max_size=width).map(
                        lambda r: _render([r], columns_delim, "utf-8", end).decode()[:-len(end)]),
                    st.lists(st.one_of(plain, quoted, multiline), min_size=0, max_size=5).map(
                        lambda r: _render([r], columns_delim, "utf-8", end).decode()[:-len(end)]),
                    st.just(""),  # a blank line
                    st.lists(_CELLS, min_size=0, max_size=5).map(columns_delim.join))
    rows = data.draw(st.lists(row, max_size=40))
    header = columns_delim.join(f"c{i}" for i in range(width))
    text = header + end + "".join(r + end for r in rows)
    path = tmp_path_factory.mktemp("fast") / "f.csv"
    path.write_bytes(text.encode())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(csvfile, "PLAIN_BLOCK", block)
        fast = inspect(path)
        mp.setattr(csvfile, "FAST_PATH", False)
        slow = inspect(path)
    assert (fast.rows, fast.lines, fast.header, fast.problems, fast.problems_total) == (
        slow.rows, slow.lines, slow.header, slow.problems, slow.problems_total)


@pytest.mark.parametrize("data", [
    b"a,b\n" + b"\xe9,x\n" * 3000 + b"y,\x81\n",          # Windows-1252 leaves 0x81 undefined
    b"\xef\xbb\xbfa,b\n" + b"x,y\n" * 3000 + b"\xff,z\n",  # UTF-8 by its byte order mark
    b"\xef\xbb\xbfa,b\n" + b"x,y\n" * 3000 + b"x,y\n"])     # ... and every byte of it
def test_a_byte_the_encoding_cannot_decode_far_in(tmp_path: Path, data: bytes,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Found on its line with the fast path as without it (which reads blocks, not
    lines, so is used only where every byte is known to decode)."""
    path = _write(tmp_path, data)
    fast = inspect(path)
    monkeypatch.setattr(csvfile, "FAST_PATH", False)
    slow = inspect(path)
    assert (fast.dialect, fast.rows, fast.lines, fast.problems, fast.problems_total) == (
        slow.dialect, slow.rows, slow.lines, slow.problems, slow.problems_total)
    if data.endswith(b"x,y\n"):
        assert fast.problem is None and fast.rows == 3001
    else:
        assert fast.problems_total == 1 and fast.problems[0].line == 3002
        assert "not valid" in fast.problems[0].message


@pytest.mark.parametrize("crlf", [False, True])
def test_the_fast_path_hands_over_where_a_block_needs_the_csv_module(
        tmp_path: Path, crlf: bool) -> None:
    end = "\r\n" if crlf else "\n"
    plain = [f"a{i},b{i},é{i}" for i in range(300)]
    odd = ['x,"quoted, with a comma",y', 'x,"a quote over' + end + 'two lines",y', "x,y",
           "x,y,z,w", "x,y\rz,w", "", "x,\x00,y"]
    for at in (0, 7, 150, 299):
        for line in odd:
            rows = [*plain[:at], line, *plain[at:]]
            path = tmp_path / "f.csv"
            path.write_bytes(("h1,h2,h3" + end + "".join(r + end for r in rows)).encode())
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(csvfile, "PLAIN_BLOCK", 64)
                fast = inspect(path)
                mp.setattr(csvfile, "FAST_PATH", False)
                slow = inspect(path)
            assert (fast.rows, fast.lines, fast.problems, fast.problems_total) == (
                slow.rows, slow.lines, slow.problems, slow.problems_total), (at, line)
