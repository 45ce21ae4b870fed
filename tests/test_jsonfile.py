"""JSON files read and checked as a stream: JSON lines and arrays, each problem named by
its line or by its element and byte offset, in flat memory."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path

import pytest

from daemon import csvfile
from daemon.csvfile import Columns
from daemon.jsonfile import CHUNK, JsonInspection, inspect


def write(tmp_path: Path, data: bytes | str, name: str = "f.json") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


@pytest.mark.parametrize(("data", "form"), [
    ('{"email": "a@x"}\n{"email": "b@x", "n": {"deep": [1, 2]}}\n', "lines"),
    ('{"email": "a@x"}\r\n\r\n{"email": "b@x", "n": {"deep": [1, 2]}}', "lines"),
    ('[{"email": "a@x"}, {"email": "b@x", "n": {"deep": [1, 2]}}]', "array"),
    ('\ufeff [\n  {"email": "a@x"},\n  {"email": "b@x", "n": {"deep": [1, 2]}}\n]\n', "array"),
])
def test_both_forms_are_read(tmp_path: Path, data: str, form: str) -> None:
    path = write(tmp_path, data)
    found = inspect(path)
    assert (found.form, found.rows, found.problem) == (form, 2, None)
    assert found.keys == ("email", "n")
    assert found.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert found.bytes == path.stat().st_size


@pytest.mark.parametrize(("data", "expected"), [
    ("", "the file is empty: no records"),
    ("  \n", "the file is empty: no records"),
    ("[]", "an empty array: no records"),
    ('[{"a": 1},]', "a trailing comma after element 1 (byte 9)"),
    ('[{"a": 1}, {"a": 2}', "truncated: the array is never closed (after 2 elements, byte 19)"),
    ('[{"a": 1}, {"a": "x', "truncated: element 2 (byte 11) is not complete"),
    ('[{"a": 1} {"a": 2}]', "expected ',' or ']' after element 1 (byte 10)"),
    ('[{"a": 1}, [2]]', "element 2 (byte 11) is an array, not a JSON object"),
    ('[{"a": 1}, {a: 2}]', "element 2 (byte 11) is not JSON: Expecting property name"),
    ('[{"a": 1}] {"b": 2}', "more after the array's end at byte 9"),
    ('{"a": 1}\n{"a": 2\n{"a": 3}\n', "line 2: not JSON: Expecting ',' delimiter"),
    ('{"a": 1}\n"just text"\n', "line 2: is a string, not a JSON object"),
    ('name,email\nAnn,a@x\n', "line 1: neither a JSON array nor JSON lines: it starts with 'n'"),
    (b'{"a": "caf\xe9"}\n', "not UTF-8 text (byte 10): save it as UTF-8"),
    # What Python's json reads and no other: NaN, Infinity, half a character, depth.
    ('{"a": NaN}\n', "line 1: not JSON: NaN is not JSON (numbers must be finite)"),
    ('[{"a": 1}, {"a": -Infinity}]', "element 2 (byte 11) is not JSON: -Infinity is not JSON"),
    ('{"ok": "\\ud83d\\ude00 \\\\ud800"}\n{"\\ud800": 1}\n',
     "line 2: holds \\ud800, half of a character (a lone surrogate)"),
    ('[{"a": "x\\udc00"}]', "element 1 (byte 1) holds \\udc00, half of a character"),
    ('{"a": ' + "[" * 3000 + "]" * 3000 + "}\n", "line 1: nested deeper than JSON parsers go"),
    ('[{"a": ' + "[" * 3000 + "]" * 3000 + "}]",
     "element 1 (byte 1) is nested deeper than JSON parsers go"),
    ('{"a": ' + "9" * 5000 + "}\n", "line 1: not JSON: a number of more than 4,300 digits"),
    # Whitespace before the first token counts: bytes of an array, lines of JSON lines.
    ('   \n\n[{"a": 1},{"b": 2},]', "a trailing comma after element 2 (byte 23)"),
    ('\n\n\n{"a": 1}\n[]\n', "line 5: is an array, not a JSON object"),
])
def test_each_problem_is_named_where_it_is(tmp_path: Path, data: str | bytes,
                                           expected: str) -> None:
    found = inspect(write(tmp_path, data))
    assert found.problem is not None and found.problem.startswith(expected), found.problem


def test_byte_offsets_count_bytes_not_characters(tmp_path: Path) -> None:
    found = inspect(write(tmp_path, '[{"name": "Zoë Ünal"}, 7]'))
    # '[' + the first element (20 characters, 22 bytes) + ', '
    assert found.problem == "element 2 (byte 25) is a number, not a JSON object"


def test_every_problem_is_counted_and_the_first_100_kept(tmp_path: Path) -> None:
    lines = ['{"email": "a@x"}' if i % 2 == 0 else "[1]" for i in range(500)]
    found = inspect(write(tmp_path, "\n".join(lines) + "\n", "f.jsonl"),
                    Columns(require=("email", "id")))
    assert found.problems_total == 500 and len(found.problems) == 100
    assert str(found.problems[0]) == "line 1: has no 'id' (required by require_columns)"
    assert str(found.problems[1]) == "line 2: is an array, not a JSON object"
    assert found.rows == 250


def test_a_line_or_element_over_the_limit(tmp_path: Path) -> None:
    csvfile.set_line_limit(1024)
    try:
        long = json.dumps({"text": "x" * 5000})
        found = inspect(write(tmp_path, f'{{"a": 1}}\n{long}\n{{"a": 3}}\n', "f.jsonl"))
        assert str(found.problems[0]) == ("line 2: a line longer than 1024 characters "
                                          "([spool] max_line_length)")
        assert found.rows == 2 and found.problems_total == 1
        found = inspect(write(tmp_path, f'[{{"a": 1}}, {long}]'))
        assert found.problem == ("element 2 (byte 11) is longer than 1024 characters "
                                 "([spool] max_line_length)")
    finally:
        csvfile.set_line_limit(csvfile.DEFAULT_LINE_LIMIT)


def test_elements_cut_at_every_chunk_boundary_are_read_whole(tmp_path: Path) -> None:
    """Strings, numbers and escapes split between two chunks."""
    element = {"email": "a@x", "note": 'a "quoted" \\\\ text ü', "n": 12345.678}
    text = "[" + ", ".join(json.dumps(element, ensure_ascii=False) for _ in range(40000)) + "]"
    assert len(text.encode()) > 2 * CHUNK
    found = inspect(write(tmp_path, text))
    assert (found.problem, found.rows) == (None, 40000)


def _inspected_with_peak(path: Path) -> tuple[JsonInspection, int]:
    """The file checked, and the most memory the check held at once (tracemalloc)."""
    tracemalloc.start()
    try:
        return inspect(path), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_array_is_read_in_flat_memory(tmp_path: Path) -> None:
    element = json.dumps({"email": "someone@example.com", "first": "Ann", "n": 1})
    path = tmp_path / "big.json"
    with path.open("w") as fh:
        fh.write("[")
        fh.write(",\n".join([element] * 60_000))  # about 4 MB, four chunks
        fh.write("]")
    found, peak = _inspected_with_peak(path)
    assert (found.problem, found.rows) == (None, 60_000)
    assert peak < 8 * CHUNK, f"peak {peak} bytes"


def test_whitespace_before_the_first_token_is_never_held(tmp_path: Path) -> None:
    path = tmp_path / "padded.json"
    with path.open("w") as fh:
        for _ in range(24):
            fh.write(" \n" * (CHUNK // 2))  # 24 MiB of blank lines
        fh.write('[{"a": 1}]')
    found, peak = _inspected_with_peak(path)
    assert (found.problem, found.rows, found.form) == (None, 1, "array")
    assert peak < 8 * CHUNK, f"peak {peak} bytes"


@pytest.mark.parametrize(("data", "clean"), [
    ('{"a": 1}\n{"a": 2}\n', True),
    ('{"a": 1}\n{"a": 2}', True),
    ('{"a": 1}\n{"a": 2}\n   ', False),   # whitespace after the last line end
    ('\n{"a": 1}\n', False),
    ('{"a": 1}\r\n', False),
    ('\ufeff{"a": 1}\n', False),
])
def test_json_lines_go_as_dropped_only_when_clean(tmp_path: Path, data: str,
                                                 clean: bool) -> None:
    found = inspect(write(tmp_path, data, "f.jsonl"))
    assert found.problem is None and found.clean is clean
