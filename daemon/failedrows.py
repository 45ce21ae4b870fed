"""``<file>.failed.csv``: the rows the API failed, as the user dropped them (their own
columns, in UTF-8 CSV as uploads are), each with why (``bulkdrop_error``) and where
(``bulkdrop_row``, its line in the dropped file), ready to fix and drop again. A JSON
file's are ``<file>.failed.jsonl``: the failed objects as dropped, one a line, each with
``_bulkdrop_error``.

An error record is matched to its row, in this order:

1. its row number (``recordNumber``, ``rowNumber``, ``row``, ``lineNumber``), counted
   from the first data row of its job; 1-based unless a record says 0, or the first
   numbered record that carries its fields matches the row one earlier read 0-based;
2. else the value of the object's ``identifierFieldName`` (``[objects.<name>]
   metadata``) found in the record;
3. else the record's fields, equal to a row's fields as sent (after renames and drops).

A file sent in parts matches each part's records to that part's rows (a JSON file's
objects are its rows). One pass over the
dropped file; memory holds an index built from the error records, never the file.
Blocking: it runs in the filing thread.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import io
import itertools
import json
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, BinaryIO, TypeVar

from daemon import csvfile, jsonfile
from daemon.answers import MESSAGE_KEYS, error_message
from daemon.csvfile import BULKDROP_COLUMNS, Columns, Dialect
from daemon.fileref import FileRef
from daemon.normalise import OUT_BLOCK, Picker, upload_header
from daemon.rawfile import bounded_lines, open_text
from daemon.spool import is_json_name

FAILED_SUFFIX = ".failed.csv"
ROW_KEYS = ("recordNumber", "rowNumber", "row", "lineNumber")
NOT_FIELDS = frozenset({*MESSAGE_KEYS, *ROW_KEYS, "part", "record"})
Item = TypeVar("Item")  # a row as the writer of a failed-rows file holds it


def failed_suffix(name: str) -> str:
    """The failed rows' file of a filed file: ``.failed.jsonl`` beside a JSON file."""
    return jsonfile.FAILED_SUFFIX if is_json_name(name) else FAILED_SUFFIX


@dataclass(frozen=True)
class Span:
    """The data rows one job was sent (0-based, blank lines not counted)."""
    part: int | None   # None: the whole file, one job
    first: int
    rows: int
    sent: bool = True  # False: a part never sent (an earlier one failed)


@dataclass
class Found:
    """What the pass found, for the result's ``failed_rows``."""
    rows: int = 0
    unmatched: int = 0
    not_sent: int = 0  # rows of parts never sent, in the file too
    routes: Counter[str] = field(default_factory=Counter)

    def as_dict(self, name: str) -> dict[str, Any]:
        by = self.routes.most_common(1)[0][0] if self.routes else None
        return {"file": name, "rows": self.rows, "unmatched": self.unmatched,
                "matched_by": by, "not_sent": self.not_sent}


def _records(ref: FileRef, dialect: Dialect) -> Generator[tuple[int, list[str]], None, None]:
    """(first physical line, fields) of every non-blank record, the header first."""
    with open_text(ref, dialect.encoding) as text:
        reader = csv.reader(bounded_lines(text, csvfile.LINE_LIMIT + 1),
                            delimiter=dialect.delimiter, strict=True)
        line = 0
        for fields in reader:
            start, line = line + 1, reader.line_num
            if fields:
                yield start, fields


def _number(record: Any, columns: frozenset[str]) -> int | None:
    """Its row number; never a field of the row itself (a column named ``row``)."""
    for key in ROW_KEYS:
        if key in columns and not isinstance(record.get("record"), dict):
            continue
        value = record.get(key) if isinstance(record, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
    return None


def _fields(record: Any) -> dict[str, str]:
    """The record's own fields: under ``record``, or beside its message."""
    if not isinstance(record, dict):
        return {}
    inner = record.get("record")
    source = inner if isinstance(inner, dict) else {
        k: v for k, v in record.items() if k not in NOT_FIELDS}
    return {str(k): "" if v is None else str(v) for k, v in source.items()
            if not isinstance(v, dict | list)}


class Index:
    """What to look for in the pass, built from the error records."""

    def __init__(self, errors: Sequence[Any], spans: Sequence[Span], sent: Sequence[str],
                 identifier: str | None) -> None:
        self.spans = {span.part: span for span in spans}
        self.ordered = sorted(spans, key=lambda span: span.first)
        self.starts = [span.first for span in self.ordered]
        self.messages = [error_message(e) for e in errors]
        self.columns = frozenset(sent)
        self.identifier = identifier if identifier in sent else None
        self.numbered: list[tuple[int, int, int]] = []   # (error, part's first row, number)
        self.by_id: dict[tuple[int | None, str], list[int]] = {}
        self.by_fields: dict[tuple[str, ...], dict[tuple[int | None, tuple[str, ...]],
                                                   list[int]]] = {}
        self.route: dict[int, str] = {}
        self.errors = errors
        for i, record in enumerate(errors):
            part = record.get("part") if isinstance(record, dict) else None
            span = self.spans.get(part) or self.spans.get(None)
            if span is None:
                continue  # a part we know nothing of: unmatched
            number = _number(record, self.columns)
            if number is not None:
                self.numbered.append((i, span.first, number))
                self.route[i] = "row_number"
                continue
            fields = _fields(record)
            if self.identifier and self.identifier in fields:
                self.by_id.setdefault((part, fields[self.identifier]), []).append(i)
                self.route[i] = "identifier"
            elif (names := tuple(sorted(n for n in fields if n in sent))):
                key = tuple(fields[n] for n in names)
                self.by_fields.setdefault(names, {}).setdefault((part, key), []).append(i)
                self.route[i] = "fields"
        self.by_row: dict[int, list[int]] = {}

    def number_rows(self, base: int) -> None:
        """Place the numbered records, their numbers counted from *base*."""
        self.by_row = {}
        for i, first, number in self.numbered:
            self.by_row.setdefault(first + number - base, []).append(i)

    def part_of(self, row: int) -> int | None:
        at = bisect.bisect_right(self.starts, row) - 1
        span = self.ordered[at] if at >= 0 else None
        return span.part if span and row < span.first + span.rows else None

    def match(self, row: int, as_sent: Callable[[], dict[str, str]]) -> list[int]:
        found = list(self.by_row.get(row, ()))
        if self.by_id or self.by_fields:
            sent = as_sent()
            part = self.part_of(row) if len(self.spans) > 1 else next(iter(self.spans))
            if self.identifier and self.by_id:
                found += self.by_id.get((part, sent.get(self.identifier, "")), ())
            for names, wanted in self.by_fields.items():
                found += wanted.get((part, tuple(sent.get(n, "") for n in names)), ())
        return found


def _as_sent(header: Sequence[str], fields: list[str], pick: Picker | None) -> dict[str, str]:
    return dict(zip(header, fields if pick is None else pick(fields), strict=False))


def _base(index: Index, sent_rows: Callable[[], Generator[dict[str, str], None, None]]) -> int:
    """How the API counts rows: 0 if a record says 0; else, when a numbered record
    carries its fields, whichever count makes them those of the row (*sent_rows* makes
    the rows as sent, from the first); else 1."""
    if any(number == 0 for _, _, number in index.numbered):
        return 0
    target, first_carrying = min(((first + number, i) for i, first, number in index.numbered
                                  if _fields(index.errors[i])), default=(0, -1))
    if first_carrying < 0:
        return 1
    fields = _fields(index.errors[first_carrying])
    with contextlib.closing(sent_rows()) as rows:
        for row, sent in enumerate(itertools.islice(rows, target + 1)):
            if row in (target - 1, target) and all(
                    sent.get(k) == v for k, v in fields.items() if k in sent):
                return 1 if row == target - 1 else 0
    return 1


def _csv_rows(ref: FileRef, dialect: Dialect,
              columns: Columns) -> Generator[dict[str, str], None, None]:
    with contextlib.closing(_records(ref, dialect)) as records:
        found = upload_header((f for _, f in records), columns)
        if found is None:
            return
        sent_header, pick = found
        for _, values in records:
            yield _as_sent(sent_header, values, pick)


def write_failed_rows(ref: FileRef, dialect: Dialect, columns: Columns,
                      identifier: str | None, spans: Sequence[Span], errors: Sequence[Any],
                      out: BinaryIO) -> Found:
    """Write the failed rows of the dropped file to *out*; what was found."""
    with contextlib.closing(_records(ref, dialect)) as records:
        return _write(records, ref, dialect, columns, identifier, spans, errors, out)


def _write(records: Iterator[tuple[int, list[str]]], ref: FileRef, dialect: Dialect,
           columns: Columns, identifier: str | None, spans: Sequence[Span],
           errors: Sequence[Any], out: BinaryIO) -> Found:
    found = Found()
    head = next(records, None)
    header = None if head is None else upload_header(iter([head[1]]), columns)
    if head is None or header is None:
        found.unmatched = len(errors)
        return found
    dropped = csvfile.header_names(head[1])
    keep = [i for i, name in enumerate(dropped) if name not in BULKDROP_COLUMNS]
    sent_header, pick = header
    index = Index(errors, spans, sent_header, identifier)
    index.number_rows(_base(index, lambda: _csv_rows(ref, dialect, columns))
                      if index.numbered else 1)
    buf = _Buffer(out)
    names = [dropped_name.lstrip("\ufeff") if i == 0 else dropped_name
             for i, dropped_name in enumerate(head[1])]
    buf.writer.writerow([names[i] for i in keep] + list(BULKDROP_COLUMNS))
    rows = (((line, values), partial(_as_sent, sent_header, values, pick))
            for line, values in records)
    for (line, values), why in _failing(index, spans, rows, found):
        buf.writer.writerow([values[i] if i < len(values) else "" for i in keep]
                            + [why, str(line)])
        buf.flush_if_full()
    buf.flush()
    return found


def _failing(index: Index, spans: Sequence[Span],
             rows: Iterator[tuple[Item, Callable[[], dict[str, str]]]],
             found: Found) -> Iterator[tuple[Item, str]]:
    """Of *rows* (each with what makes its fields as sent), those to write back and why:
    the rows error records name, and the rows of parts never sent. Counts in *found*."""
    matched: set[int] = set()
    unsent = {span.part for span in spans if not span.sent}
    for row, (item, as_sent) in enumerate(rows):
        hits = index.match(row, as_sent)
        part = index.part_of(row) if unsent else None
        if not hits and part not in unsent:
            continue
        matched.update(hits)
        messages = [index.messages[i] for i in hits]
        if part in unsent:
            messages.append(f"not sent: part {part} never became a job")
            found.not_sent += 1
        found.rows += 1
        yield item, "; ".join(dict.fromkeys(messages))
    found.unmatched = len(index.errors) - len(matched)
    found.routes.update(index.route[i] for i in matched)


def write_failed_objects(ref: FileRef, form: str, columns: Columns, keys: Sequence[str],
                         identifier: str | None, spans: Sequence[Span], errors: Sequence[Any],
                         out: BinaryIO) -> Found:
    """Write the failed objects of a dropped JSON file to *out* as JSON lines, each as
    dropped plus ``_bulkdrop_error`` (*keys*: its top-level keys as sent); what was found."""
    found = Found()
    index = Index(errors, spans, keys, identifier)
    index.number_rows(_base(index, lambda: _json_rows(ref, form, columns))
                      if index.numbered else 1)
    held: list[str] = []
    size = 0
    rows = ((text, partial(_json_sent, text, columns)) for _, text in jsonfile.objects(ref, form))
    for text, why in _failing(index, spans, rows, found):
        held.append(_with_error(text, why))
        size += len(text)
        if size >= OUT_BLOCK:
            out.write(("\n".join(held) + "\n").encode("utf-8", "backslashreplace"))
            held, size = [], 0
    if held:
        out.write(("\n".join(held) + "\n").encode("utf-8", "backslashreplace"))
    return found


def _json_sent(text: str, columns: Columns) -> dict[str, str]:
    """An object's top-level fields as sent (renamed, dropped), as error records carry
    them: scalars as text."""
    value = json.loads(text)
    return _fields({columns.rename.get(k, k): v for k, v in value.items()
                    if k not in columns.drop and k != jsonfile.ERROR_KEY})


def _json_rows(ref: FileRef, form: str,
               columns: Columns) -> Generator[dict[str, str], None, None]:
    for _, text in jsonfile.objects(ref, form):
        yield _json_sent(text, columns)


def _with_error(text: str, why: str) -> str:
    """The object's own text with ``_bulkdrop_error`` added (replaced, in a file of failed
    objects dropped again)."""
    if f'"{jsonfile.ERROR_KEY}"' in text:
        text = jsonfile.without_error(text)
    error = f"{json.dumps(jsonfile.ERROR_KEY)}: {json.dumps(why, ensure_ascii=False)}"
    inner = text[:-1].rstrip(jsonfile.WHITESPACE)
    return f"{inner}, {error}}}" if inner != "{" else f"{{{error}}}"


class _Buffer:
    """CSV text gathered in memory a block at a time, written out as UTF-8."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.text = io.StringIO()
        self.writer = csv.writer(self.text, lineterminator="\r\n")

    def flush_if_full(self) -> None:
        if self.text.tell() >= OUT_BLOCK:
            self.flush()

    def flush(self) -> None:
        # The API's messages may hold half a character: written as its escape.
        self.out.write(self.text.getvalue().encode("utf-8", "backslashreplace"))
        self.text.seek(0)
        self.text.truncate()


def plan_of(result: dict[str, Any]) -> tuple[Dialect | None, list[Span]]:
    """The dialect (of a CSV file) and the jobs' rows of a file, from its result (so a
    filing resumed after a restart, with nothing but the result, writes the same file)."""
    info = result.get("csv") or result.get("json") or {}
    names = {name: char for char, name in csvfile.DELIMITER_NAMES.items()}
    dialect = None
    if info.get("encoding") and info.get("delimiter") in names:
        dialect = Dialect(info["encoding"], names[info["delimiter"]],
                          info.get("line_endings", ""))
    jobs = result.get("jobs")
    if jobs:
        spans = [Span(j["part"], j["rows"][0] - 1, j["rows"][1] - j["rows"][0] + 1,
                      sent=j.get("job_id") is not None) for j in jobs]
    else:
        spans = [Span(None, 0, int(info.get("rows") or 0))]
    return dialect, spans
