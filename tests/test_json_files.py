"""JSON files end to end: JSON lines sent as dropped, an array sent as JSON lines, keys
renamed and dropped, each kind of bad file rejected by its line or element, a file in
parts, and the failed objects back as ``<file>.failed.jsonl`` to fix and drop again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from daemon import jsonfile
from daemon.csvfile import Columns
from daemon.failedrows import Span
from daemon.fileref import FileRef
from daemon.ops import retry_failed_rows
from daemon.sim import SimServer
from daemon.spool import Spool
from tests.helpers import drop, result_of, wait_for


def _objects(count: int, bad_every: int = 0) -> list[dict[str, Any]]:
    return [{"email": f"user{i}" + ("" if bad_every and i % bad_every == 0 else "@example.com"),
             "name": f"Ünïcode {i}", "tags": ["a", i], "address": {"city": "Köln", "zip": i}}
            for i in range(1, count + 1)]


def _lines(objects: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects)


def _sent(sim: SimServer, result: dict[str, Any]) -> list[dict[str, Any]]:
    body = sim.sim.jobs[result["job_id"]].body or b""
    assert body.endswith(b"\n")
    return [json.loads(line) for line in body.decode("utf-8").split("\n")[:-1]]


async def _filed(root: Path, where: str, rel: str) -> dict[str, Any]:
    path = root / where / rel
    await wait_for(lambda: path.with_name(path.name + ".result.json").exists(), 30,
                   what=f"{where}/{rel}")
    return result_of(path)


async def test_json_lines_and_an_array_become_json_jobs(make_settings, run_daemon,
                                                        sim: SimServer, spool_root: Path) -> None:
    await run_daemon(make_settings(
        '[objects.account]\nrename_columns = { mail = "email" }\ndrop_columns = ["secret"]\n'))
    objects = _objects(3)
    lines = drop(spool_root, "contact/people.jsonl", _lines(objects)).read_bytes()
    # Pretty-printed, an element over several lines, a BOM: sent an object a line.
    drop(spool_root, "contact/people.json",
         b"\xef\xbb\xbf" + json.dumps(objects, indent=2, ensure_ascii=False).encode())
    drop(spool_root, "account/firms.ndjson",
         '{"mail": "a@example.com", "secret": "x", "n": 1.5}\r\n\r\n{"mail": "b@example.com"}')

    as_is = await _filed(spool_root, "done", "contact/people.jsonl")
    assert as_is["status"] == "COMPLETE" and as_is["records"]["total"] == 3
    assert as_is["csv"] is None
    assert as_is["json"] == {"form": "lines", "rows": 3, "converted": False,
                             "keys": ["email", "name", "tags", "address"]}
    job = sim.sim.jobs[as_is["job_id"]]
    assert job.body == lines  # as dropped, byte for byte
    assert job.metadata is not None and job.metadata["format"] == "json"
    assert job.content_type == "application/json" and job.filename == "people.jsonl"

    array = await _filed(spool_root, "done", "contact/people.json")
    assert array["status"] == "COMPLETE" and array["json"]["form"] == "array"
    assert array["json"]["converted"] is True and array["records"]["total"] == 3
    assert _sent(sim, array) == objects
    assert sim.sim.jobs[array["job_id"]].content_type == "application/json"

    # The array was sent from its copy as JSON lines, gone once its job ended.
    assert not list((spool_root / "processing").rglob("*.tmp"))

    renamed = await _filed(spool_root, "done", "account/firms.ndjson")
    assert renamed["status"] == "COMPLETE", renamed["reason"]
    assert renamed["json"]["keys"] == ["email", "n"]
    assert _sent(sim, renamed) == [{"email": "a@example.com", "n": 1.5},
                                   {"email": "b@example.com"}]


BAD = [  # name, content, the reason says, the first problem's line
    ("a.jsonl", '{"email": "a@example.com"}\n[1, 2]\n', "line 2: is an array", 2),
    ("b.jsonl", '{"email": "a@example.com"}\n{"email": \n', "line 2: not JSON", 2),
    ("c.json", '[{"email": "a@example.com"},\n {"email": "b@example.com"},\n]',
     "a trailing comma after element 2 (byte 56)", None),
    ("d.json", '[{"email": "a@example.com"}, {"email": "b@', "truncated", None),
    ("e.json", "", "the file is empty", None),
    ("f.json", " [ ] ", "an empty array", None),
    ("g.jsonl", b'{"email": "caf\xe9"}\n', "not UTF-8 text (byte 14)", None),
    ("h.json", '[{"email": "a@example.com"}, 7]', "element 2 (byte 29) is a number", None),
]


async def test_bad_json_files_are_rejected_by_line_or_element(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    await run_daemon(make_settings())
    for rel, data, _, _ in BAD:
        drop(spool_root, f"contact/{rel}", data)
    drop(spool_root, "contact/many.jsonl", '{"email": "a@example.com"}\n' + "[]\n" * 150)
    for rel, _, reason, line in BAD:
        result = await _filed(spool_root, "failed", f"contact/{rel}")
        assert result["status"] == "REJECTED"
        assert reason in result["reason"], result["reason"]
        assert result["errors"][0]["line"] == line
        errors_csv = (spool_root / "failed" / "contact" / f"{rel}.errors.csv").read_text()
        assert errors_csv.startswith("line,message\n")
    many = await _filed(spool_root, "failed", "contact/many.jsonl")
    assert (many["errors_total"], len(many["errors"])) == (150, 100)
    # Every problem is in its errors CSV, found by reading the file again.
    listed = (spool_root / "failed" / "contact" / "many.jsonl.errors.csv").read_text()
    assert listed.splitlines()[1:] == [f'{n},"is an array, not a JSON object"'
                                       for n in range(2, 152)]
    assert not sim.sim.jobs, "nothing uploaded"


async def test_a_json_file_in_parts_and_its_failed_objects_round_trip(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    await run_daemon(make_settings("[objects.contact]\nmax_rows_per_job = 2\n"))
    objects = _objects(5, bad_every=2)   # objects 2 and 4 fail
    drop(spool_root, "contact/people.json", json.dumps(objects, indent=1))
    result = await _filed(spool_root, "done", "contact/people.json")
    assert result["status"] == "COMPLETE", result["reason"]
    assert [j["rows"] for j in result["jobs"]] == [[1, 2], [3, 4], [5, 5]]
    assert [o for j in result["jobs"] for o in _sent(sim, j)] == objects
    assert not list((spool_root / "processing").rglob("*.tmp"))
    assert result["records"] == {"total": 5, "failed": 2, "succeeded": 3}
    assert result["failed_rows"] == {"file": "people.json.failed.jsonl", "rows": 2,
                                     "unmatched": 0, "matched_by": "row_number", "not_sent": 0}
    filed = spool_root / "done" / "contact" / "people.json"
    failed = filed.with_name("people.json.failed.jsonl")
    back = [json.loads(line) for line in failed.read_text().splitlines()]
    assert back == [{**objects[i], "_bulkdrop_error": f"Invalid email address 'user{i + 1}'"}
                    for i in (1, 3)]

    # The fix a person makes, then the rows dropped again as a new file.
    failed.write_text("".join(
        json.dumps({**o, "email": o["email"] + "@example.com"}) + "\n" for o in back))
    again = retry_failed_rows(Spool(spool_root, "node-a"), failed)
    assert again == spool_root / "inbox" / "contact" / "people.retry-1.jsonl"
    retried = await _filed(spool_root, "done", "contact/people.retry-1.jsonl")
    assert retried["status"] == "COMPLETE" and retried["records"]["failed"] == 0
    assert retried["json"]["converted"] is False  # _bulkdrop_error was taken out
    assert _sent(sim, retried) == [{**objects[i], "email": f"user{i + 1}@example.com"}
                                   for i in (1, 3)]


def test_objects_of_an_array_cut_at_every_chunk_boundary(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Elements span chunks (strings, escapes, multi-byte characters cut anywhere)."""
    objects = [{"s": 'a "quoted" \\ line\nbreak', "ü": i, "n": [1, {"x": None}]}
               for i in range(40)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(objects, indent=3, ensure_ascii=False), encoding="utf-8")
    found = jsonfile.inspect(path)
    assert found.problem is None and found.rows == 40
    for chunk in (7, 64, 301):
        monkeypatch.setattr(jsonfile, "CHUNK", chunk)
        texts = [text for _, text in jsonfile.objects(path, "array")]
        assert [json.loads(t) for t in texts] == objects
        assert all("\n" not in t for t in texts)
        sent = b"".join(jsonfile.blocks(path, found, Columns(rename={"ü": "u"})))
        assert [json.loads(line) for line in sent.decode().splitlines()] == [
            {"s": o["s"], "u": o["ü"], "n": o["n"]} for o in objects]


def test_parts_are_cut_by_objects_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(_lines(_objects(10)))
    found = jsonfile.inspect(path)
    one = len(json.dumps(_objects(1)[0]).encode()) + 1
    assert jsonfile.part_spans(path, found, Columns(), 4, 1 << 30) == [(0, 4), (4, 4), (8, 2)]
    assert jsonfile.part_spans(path, found, Columns(), 0, one * 3 + 5) == [
        (0, 3), (3, 3), (6, 3), (9, 1)]
    assert jsonfile.part_spans(path, found, Columns(), 0, 1) == [(i, 1) for i in range(10)]
    assert jsonfile.part_spans(path, found, Columns(), 0, 1 << 30) == []
    sent = b"".join(jsonfile.blocks(path, found, Columns(), range(3, 6)))
    assert sent.decode().splitlines() == path.read_text().splitlines()[3:6]


def test_an_array_after_more_whitespace_than_a_chunk(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonfile, "CHUNK", 16)
    path = tmp_path / "a.json"
    path.write_text(" \n" * 40 + '[{"a": 1},\n{"b": 2}]\n')
    found = jsonfile.inspect(path)
    assert found.problem is None and found.form == "array"
    assert b"".join(jsonfile.blocks(path, found, Columns())) == b'{"a": 1}\n{"b": 2}\n'


def test_renamed_and_dropped_keys_keep_every_value_as_written(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{ "mail" : 1.10 , "big": 1e400, "x": "\\u00e9", "n": {"mail": [1, 2]},'
                    ' "secret": 0, "_bulkdrop_error": "old" }\n{}\n')
    found = jsonfile.inspect(path)
    sent = b"".join(jsonfile.blocks(path, found, Columns(rename={"mail": "email"},
                                                         drop=("secret",))))
    assert sent == (b'{"email":1.10,"big":1e400,"x":"\\u00e9","n":{"mail": [1, 2]}}\n'
                    b'{}\n')


def test_keys_renamed_longer_are_measured_not_guessed(tmp_path: Path) -> None:
    """Each object repeats its keys: renamed longer, the upload outgrows the file."""
    path = tmp_path / "a.jsonl"
    path.write_text('{"a":1,"b":22}\n' * 1000)
    columns = Columns(rename={"a": "a_key_much_longer_than_a", "b": "b2"})
    found = jsonfile.inspect(path)
    sent = len(b"".join(jsonfile.blocks(path, found, columns)))
    size = path.stat().st_size
    assert sent > 2 * size
    assert jsonfile.most_sent(size, columns) >= sent
    assert jsonfile.most_sent(size, Columns(rename={"long_name": "x"})) == size + 1
    spans = jsonfile.part_spans(path, found, columns, 0, size)
    assert len(spans) == 3 and sum(rows for _, rows in spans) == 1000


def test_a_failed_objects_file_edited_badly_is_refused_naming_its_line(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "node-a")
    done = tmp_path / "spool" / "done" / "contact"
    done.mkdir(parents=True)
    (tmp_path / "spool" / "inbox").mkdir()
    (done / "a.jsonl").write_text('{"email": "x"}\n')
    (done / "a.jsonl.result.json").write_text(json.dumps({"file": "contact/a.jsonl"}))
    failed = done / "a.jsonl.failed.jsonl"
    for text, why in (('{"email": "x@example.com", "_bulkdrop_error": "bad"\n', "not JSON"),
                      ('{"email": "a@example.com"}\n\n[1]\n', "line 3: an array, not a JSON"),
                      ('{"email": "a@example.com"} trailing\n', "line 1: not JSON: Extra")):
        failed.write_text(text)
        with pytest.raises(ValueError, match=why):
            retry_failed_rows(spool, failed)
    assert not [p for p in (tmp_path / "spool" / "inbox").rglob("*") if p.is_file()]
    # Saved with a BOM and CRLF by an editor: fine.
    failed.write_bytes(b'\xef\xbb\xbf{"email": "a@example.com", "_bulkdrop_error": "bad"}\r\n')
    again = retry_failed_rows(spool, failed)
    assert again.read_text() == '{"email":"a@example.com"}\n'


def test_an_apis_half_character_is_written_as_its_escape(tmp_path: Path) -> None:
    """An error record may carry a lone surrogate (JSON allows the escape): the result,
    the errors CSV and the failed objects still get written."""
    import io

    from daemon.failedrows import write_failed_objects
    from daemon.filing import _write_json
    from daemon.results import errors_csv

    why = "Invalid value 'x\ud800'"
    out = io.BytesIO()
    _write_json({"errors": [why]}, out)
    assert json.loads(out.getvalue()) == {"errors": [why]}
    assert errors_csv([{"message": why}]).decode() == "message\r\nInvalid value 'x\\ud800'\r\n"
    path = tmp_path / "a.jsonl"
    path.write_text('{"email": "x"}\n')
    out = io.BytesIO()
    found = write_failed_objects(FileRef(path), "lines", Columns(), ["email"], None,
                                 [Span(None, 0, 1)],
                                 [{"recordNumber": 1, "message": why}], out)
    assert found.rows == 1
    assert json.loads(out.getvalue()) == {"email": "x", "_bulkdrop_error": why}
