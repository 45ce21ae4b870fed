"""JSON files, checked as CSV files are: JSON lines (``.jsonl``, ``.ndjson``, one object a
line) or a top-level array of objects (``.json``), read as a stream in chunks (an
array is never loaded whole: one element at a time, each at most ``max_line_length``
characters), hashed as it is read, and every problem named by its line (JSON lines) or
its element and byte offset (an array).

This is the reading and the checks; the upload (JSON lines, ``metaData.format =
"json"``) builds on it.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon import csvfile
from daemon.csvfile import MAX_PROBLEMS, Columns, Problem, summary
from daemon.fileref import FileRef, as_ref

JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")
CHUNK = 1 << 20
# An element cut at a chunk's end fails to decode near the end of what is read so far
# (an unterminated string, where it starts): then more is read before judging it.
TAIL = 64
_WHITESPACE = " \t\r\n"


@dataclass(frozen=True)
class JsonInspection:
    sha256: str
    bytes: int
    form: str | None              # "lines" or "array"; None when neither
    rows: int = 0                 # objects
    keys: tuple[str, ...] = ()    # top-level keys seen, in first-seen order (at most 1,000)
    problems: tuple[Problem, ...] = ()  # the first MAX_PROBLEMS
    problems_total: int = 0

    @property
    def problem(self) -> str | None:
        return summary(self.problems, self.problems_total)


class _Found:
    def __init__(self, columns: Columns) -> None:
        self.columns = columns
        self.rows = 0
        self.keys: dict[str, None] = {}
        self.problems: list[Problem] = []
        self.total = 0

    def add(self, line: int | None, message: str) -> None:
        self.total += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(line, message))

    def record(self, value: Any, where: str, line: int | None) -> None:
        """One element or line, decoded: it must be an object with the required keys."""
        if not isinstance(value, dict):
            self.add(line, f"{where}is {_kind(value)}, not a JSON object")
            return
        self.rows += 1
        if len(self.keys) < 1000:
            self.keys.update(dict.fromkeys(k for k in value if len(self.keys) < 1000))
        missing = [name for name in self.columns.require if name not in value]
        if missing:
            self.add(line, f"{where}has no {', '.join(repr(m) for m in missing)} "
                           f"(required by require_columns)")


def inspect(source: Path | FileRef, columns: Columns | None = None) -> JsonInspection:
    """Read the whole file once, in chunks: its hash, its form and every problem."""
    ref = as_ref(source)
    found = _Found(columns or Columns())
    hasher = hashlib.sha256()
    size = 0
    form: str | None = None
    with ref.open_binary() as fh:
        def chunks() -> Iterator[str]:
            nonlocal size
            decoder = codecs.getincrementaldecoder("utf-8-sig")()
            while True:
                raw = fh.read(CHUNK)
                hasher.update(raw)
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as exc:
                    raise _NotUtf8(size + exc.start) from None
                size += len(raw)
                if text:
                    yield text
                if not raw:
                    return

        try:
            form = _check(chunks(), found)
        except _NotUtf8 as exc:
            found.add(None, f"not UTF-8 text (byte {exc.offset}): save it as UTF-8 and "
                            "drop it again")
        while raw := fh.read(CHUNK):  # what the checks left unread is hashed too
            hasher.update(raw)
            size += len(raw)
    return JsonInspection(hasher.hexdigest(), size, form, found.rows, tuple(found.keys),
                          tuple(found.problems), found.total)


class _NotUtf8(Exception):
    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


def _check(chunks: Iterator[str], found: _Found) -> str | None:
    buf = ""
    for chunk in chunks:
        buf += chunk
        if buf.strip(_WHITESPACE):
            break
    start = buf.lstrip(_WHITESPACE)[:1]
    if not start:
        found.add(None, "the file is empty: no records")
        return None
    if start == "[":
        _array(buf, chunks, found)
        return "array"
    if start == "{":
        _lines(buf, chunks, found)
        return "lines"
    found.add(1, f"neither a JSON array nor JSON lines: it starts with {start!r}")
    return None


def _lines(pending: str, chunks: Iterator[str], found: _Found) -> None:
    """One object a line; *pending* is what is read already."""
    line = 0
    limit = csvfile.LINE_LIMIT
    skipping = False  # the rest of a line too long
    while True:
        end = pending.find("\n")
        if end >= 0:
            current, pending = pending[:end], pending[end + 1:]
            if skipping:
                skipping = False
                continue
            line += 1
            if len(current) > limit:
                found.add(line, f"a line longer than {limit} characters "
                                "([spool] max_line_length)")
            else:
                _line(current, line, found)
            continue
        if len(pending) > limit:
            if not skipping:
                line += 1
                found.add(line, f"a line longer than {limit} characters "
                                "([spool] max_line_length)")
                skipping = True
            pending = ""
        chunk = next(chunks, None)
        if chunk is None:
            break
        pending += chunk
    if pending.strip(_WHITESPACE) and not skipping:
        line += 1
        _line(pending, line, found)
    if not found.rows and not found.total:
        found.add(None, "no records: the file holds no JSON objects")


def _line(text: str, line: int, found: _Found) -> None:
    text = text.strip(_WHITESPACE)
    if not text:
        return
    try:
        value = json.loads(text)
    except ValueError as exc:
        found.add(line, f"not JSON: {_reason(exc)}")
        return
    found.record(value, "", line)


def _array(buf: str, chunks: Iterator[str], found: _Found) -> None:
    _Array(buf.lstrip(_WHITESPACE)[1:], chunks, found).read()


class _Array:
    """A top-level array read element by element: what is held is at most one element
    (``max_line_length`` characters) and the rest of the chunk it came in. Positions move
    through the buffer; it is cut only when more is read (no copy per element)."""

    def __init__(self, buf: str, chunks: Iterator[str], found: _Found) -> None:
        self.buf = buf          # what follows "[" ...
        self.pos = 0            # ... read up to here
        self.chunks = chunks
        self.found = found
        self.offset = 1         # bytes before buf[pos] (a BOM not counted)
        self.index = 0          # elements read
        self.comma_at = 0       # where the last comma was
        self.decoder = json.JSONDecoder()

    def more(self) -> bool:
        chunk = next(self.chunks, None)
        if chunk is None:
            return False
        self.buf = self.buf[self.pos:] + chunk
        self.pos = 0
        return True

    def advance(self, to: int) -> None:
        self.offset += _bytes(self.buf[self.pos:to])
        self.pos = to

    def skip(self) -> bool:
        """Past whitespace, reading on as needed; False at the end of the file."""
        while True:
            end = len(self.buf)
            at = self.pos
            while at < end and self.buf[at] in _WHITESPACE:
                at += 1
            self.offset += at - self.pos
            self.pos = at
            if at < end:
                return True
            if not self.more():
                return False

    def read(self) -> None:
        after_comma = False
        while self.skip():
            if self.buf[self.pos] == "]":
                return self.closed(after_comma)
            if self.index and not after_comma:
                return self.found.add(None, f"expected ',' or ']' after element "
                                            f"{self.index} (byte {self.offset})")
            if not self.element():
                return None
            after_comma = self.skip() and self.buf[self.pos] == ","
            if after_comma:
                self.comma_at = self.offset
                self.advance(self.pos + 1)
        s = "s" if self.index != 1 else ""
        self.found.add(None, f"truncated: the array is never closed (after {self.index} "
                             f"element{s}, byte {self.offset})")
        return None

    def closed(self, after_comma: bool) -> None:
        if after_comma:
            self.found.add(None, f"a trailing comma after element {self.index} "
                                 f"(byte {self.comma_at})")
        elif self.index == 0:
            self.found.add(None, "an empty array: no records")
        at = self.offset
        self.advance(self.pos + 1)
        if self.skip():
            self.found.add(None, f"more after the array's end at byte {at}")

    def element(self) -> bool:
        """Decode one element (reading on while it is cut); False when reading must stop."""
        limit = csvfile.LINE_LIMIT
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
                break
            except json.JSONDecodeError as exc:
                unterminated = "Unterminated string" in exc.msg
                cut = unterminated or exc.pos >= len(self.buf) - TAIL
                if cut and len(self.buf) - self.pos <= limit and self.more():
                    continue
                # All there is: cut only if it ran out at the very end.
                cut = unterminated or exc.pos >= len(self.buf.rstrip(_WHITESPACE)) - 1
                where = f"element {self.index + 1} (byte {self.offset})"
                too_long = cut and len(self.buf) - self.pos > limit
                self.found.add(None, f"{where} is longer than {limit} characters ([spool] "
                                     "max_line_length)" if too_long else
                               f"truncated: {where} is not complete" if cut else
                               f"{where} is not JSON: {_reason(exc)}")
                return False
        self.index += 1
        if end - self.pos > limit:  # read whole in one chunk, yet over the limit all the same
            self.found.add(None, f"element {self.index} (byte {self.offset}) is longer than "
                                 f"{limit} characters ([spool] max_line_length)")
        else:
            self.found.record(value, f"element {self.index} (byte {self.offset}) ", None)
        self.advance(end)
        return True


def _bytes(text: str) -> int:
    return len(text.encode("utf-8")) if not text.isascii() else len(text)


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "true or false", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), "not an object")


def _reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (column {exc.colno})"
    return str(exc)
