"""JSON files, checked as CSV files are: JSON lines (``.jsonl``, ``.ndjson``, one object a
line) or a top-level array of objects (``.json``), read as a stream in chunks (an
array is never loaded whole: one element at a time, each at most ``max_line_length``
characters), hashed as it is read, and every problem named by its line (JSON lines) or
its element and byte offset (an array).

A file that passed its checks is uploaded as JSON lines (``metaData.format = "json"``):
JSON lines as dropped when nothing changes them, else one object a line, each the
object's own text (an array's element with its line breaks made spaces, which in JSON
are only ever whitespace between tokens), its top-level keys renamed or dropped where
``rename_columns`` or ``drop_columns`` say, every value kept as written. Cut into parts
by objects like a CSV file by rows.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import hashlib
import io
import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from daemon import csvfile
from daemon.csvfile import MAX_PROBLEMS, Columns, Problem, summary
from daemon.fileref import FileRef, as_ref

FAILED_SUFFIX = ".failed.jsonl"
# The key a failed-objects file adds to each object: dropped from the upload when the
# file is dropped again.
ERROR_KEY = "_bulkdrop_error"
CONTENT_TYPE = "application/json"
CHUNK = 1 << 20
OUT_BLOCK = 64 * 1024
MAX_KEYS = 1000
# An element cut at a chunk's end fails to decode near the end of what is read so far
# (an unterminated string, where it starts): then more is read before judging it.
TAIL = 64
WHITESPACE = " \t\r\n"


@dataclass(frozen=True)
class JsonInspection:
    sha256: str
    bytes: int
    form: str | None              # "lines" or "array"; None when neither
    rows: int = 0                 # objects
    keys: tuple[str, ...] = ()    # top-level keys seen, in first-seen order (at most 1,000)
    problems: tuple[Problem, ...] = ()  # the first MAX_PROBLEMS
    problems_total: int = 0
    clean: bool = False           # JSON lines to send as dropped: no BOM, blank line or CR
    content: None = None          # (a CSV inspection may hold a small file's bytes)
    copy: Path | None = None      # an array's objects as JSON lines, written while checked

    @property
    def problem(self) -> str | None:
        return summary(self.problems, self.problems_total)

    def passes_through(self, columns: Columns) -> bool:
        """Is the file uploaded as dropped (JSON lines, nothing renamed or dropped)?"""
        return self.form == "lines" and self.clean and not self.changed_by(columns)

    def upload_source(self, ref: FileRef) -> tuple[FileRef, JsonInspection]:
        """What the upload reads: the file, or the copy of an array as JSON lines."""
        if self.copy is None:
            return ref, self
        return FileRef(self.copy), dataclasses.replace(self, form="lines", clean=True,
                                                       copy=None)

    def changed_by(self, columns: Columns) -> bool:
        """Do the column settings change its objects (rename or drop a key they have)?"""
        drop = (*columns.drop, ERROR_KEY)
        return len(self.keys) >= MAX_KEYS or any(
            name in columns.rename or name in drop for name in self.keys)

    def describe(self, columns: Columns) -> dict[str, Any]:
        """For the result: its form, its objects, whether it was sent as dropped, and
        its top-level keys as sent (the first 1,000 seen)."""
        drop = (*columns.drop, ERROR_KEY)
        sent = list(dict.fromkeys(columns.rename.get(k, k) for k in self.keys if k not in drop))
        return {"form": self.form, "rows": self.rows,
                "converted": not self.passes_through(columns), "keys": sent}


class _Found:
    def __init__(self, columns: Columns, sink: Callable[[Problem], None] | None) -> None:
        self.columns = columns
        self.sink = sink
        self.rows = 0
        self.keys: dict[str, None] = {}
        self.problems: list[Problem] = []
        self.total = 0
        self.clean = True
        self.copy: _Copy | None = None   # an array's objects written as JSON lines

    def add(self, line: int | None, message: str) -> None:
        self.total += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(line, message))
        if self.sink is not None:
            self.sink(Problem(line, message))

    def record(self, value: Any, line: int | None,
               place: Callable[[], str] = str) -> None:
        """One element or line, decoded: it must be an object with the required keys.
        *place* names an element in a message ("element 3 (byte 120) "); made only then."""
        if not isinstance(value, dict):
            self.add(line, f"{place()}is {_kind(value)}, not a JSON object")
            return
        self.rows += 1
        keys = self.keys
        if len(keys) < MAX_KEYS and not value.keys() <= keys.keys():  # a key not seen yet
            for name in value:
                if len(keys) >= MAX_KEYS:
                    break
                keys.setdefault(name)
        columns = self.columns
        if not (columns.require or columns.rename):
            return
        sent = value
        if columns.rename or any(name in value for name in columns.drop):
            sent = {}
            for name in value:
                if name in columns.drop:
                    continue
                new = columns.rename.get(name, name)
                if new in sent:
                    self.add(line, f"{place()}has key {new!r} twice once renamed "
                                   "(rename_columns)")
                    return
                sent[new] = None
        missing = [name for name in columns.require if name not in sent]
        if missing:
            self.add(line, f"{place()}has no {', '.join(repr(m) for m in missing)} "
                           f"(required by require_columns)")


def inspect(source: Path | FileRef, columns: Columns | None = None,
            sink: Callable[[Problem], None] | None = None,
            copy_to: Path | None = None) -> JsonInspection:
    """Read the whole file once, in chunks: its hash, its form and every problem (each
    also handed to *sink*, when given: the result keeps only the first 100).

    With *copy_to*, an array that passes is written there as it is read, as JSON lines
    (:func:`objects`), to be uploaded from (``JsonInspection.copy``): a second reading
    would decode every element again. Not made for JSON lines, nor kept for a file with
    problems."""
    ref = as_ref(source)
    found = _Found(columns or Columns(), sink)
    found.copy = _Copy(copy_to) if copy_to is not None else None
    try:
        return _inspect(ref, found)
    except BaseException:
        if found.copy is not None:
            found.copy.discard()
        raise


def _inspect(ref: FileRef, found: _Found) -> JsonInspection:
    hasher = hashlib.sha256()
    size = 0
    form: str | None = None
    with ref.open_binary() as fh:
        def chunks() -> Iterator[str]:
            nonlocal size
            decoder = codecs.getincrementaldecoder("utf-8-sig")()
            while True:
                raw = fh.read(CHUNK)
                if not size and raw.startswith(codecs.BOM_UTF8):
                    found.clean = False
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
    copy = None
    if found.copy is not None:
        if found.total or form != "array":
            found.copy.discard()  # (an older one, of a run cut short, goes too)
        else:
            copy = found.copy.close()
    return JsonInspection(hasher.hexdigest(), size, form, found.rows, tuple(found.keys),
                          tuple(found.problems), found.total, found.clean, copy=copy)


class _Copy:
    """An array's objects as JSON lines, written as they are checked (opened at the first,
    never through a link; this daemon's own folder)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.out: BinaryIO | None = None
        self.held: list[str] = []
        self.size = 0

    def add(self, text: str) -> None:
        self.held.append(text)
        self.size += len(text)
        if self.size >= OUT_BLOCK:
            self.flush()

    def flush(self) -> None:
        if self.out is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            self.out = open(fd, "wb")  # noqa: SIM115 - closed by close() or discard()
        self.held.append("")
        self.out.write("\n".join(self.held).encode("utf-8"))
        self.held, self.size = [], 0

    def close(self) -> Path:
        self.flush()
        assert self.out is not None
        self.out.close()
        return self.path

    def discard(self) -> None:
        if self.out is not None:
            self.out.close()
        self.path.unlink(missing_ok=True)


class _NotUtf8(Exception):
    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


def _check(chunks: Iterator[str], found: _Found) -> str | None:
    # Whitespace before the first token is counted (byte offsets, lines), never held.
    skipped = newlines = 0
    buf = ""
    for chunk in chunks:
        buf = chunk.lstrip(WHITESPACE)
        lead = len(chunk) - len(buf)
        skipped += lead
        newlines += chunk.count("\n", 0, lead)
        if buf:
            break
    if not buf:
        found.add(None, "the file is empty: no records")
        return None
    if buf[0] == "[":
        _Array(buf[1:], chunks, found, skipped + 1).read()
        return "array"
    if buf[0] == "{":
        if newlines:
            found.clean = False  # blank lines first
        _lines(buf, chunks, found, newlines)
        return "lines"
    found.add(newlines + 1, f"neither a JSON array nor JSON lines: it starts with {buf[0]!r}")
    return None


def _lines(pending: str, chunks: Iterator[str], found: _Found, line: int) -> None:
    """One object a line; *pending* is what is read already, after *line* blank lines."""
    limit = csvfile.LINE_LIMIT
    skipping = False  # the rest of a line too long
    while True:
        *complete, pending = pending.split("\n")  # the last piece goes on in the next chunk
        for current in complete:
            if skipping:
                skipping = False
                continue
            line += 1
            if len(current) > limit:
                found.add(line, f"a line longer than {limit} characters "
                                "([spool] max_line_length)")
            else:
                _line(current, line, found)
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
    if pending.strip(WHITESPACE) and not skipping:
        line += 1
        _line(pending, line, found)
    elif pending:
        found.clean = False  # whitespace after the last line end
    if not found.rows and not found.total:
        found.add(None, "no records: the file holds no JSON objects")


def _line(text: str, line: int, found: _Found) -> None:
    if "\r" in text:
        found.clean = False
    text = text.strip(WHITESPACE)
    if not text:
        found.clean = False
        return
    try:
        value = _STRICT.decode(text)
    except RecursionError:
        found.add(line, f"nested deeper than JSON parsers go ({DEPTH_HINT})")
        return
    except ValueError as exc:
        found.add(line, f"not JSON: {_reason(exc)}")
        return
    if (bad := _not_unicode(value, text, 0, len(text))) is not None:
        found.add(line, bad)
        return
    found.record(value, line)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (numbers must be finite)")


# NaN and Infinity are Python's, not JSON's.
_STRICT = json.JSONDecoder(parse_constant=_no_constant)
DEPTH_HINT = "about 1,000 levels"
# A \u escape of half a surrogate pair: decoded, it is no character at all.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _not_unicode(value: Any, text: str, start: int, end: int) -> str | None:
    """A problem when the object holds a lone surrogate (a string that cannot be UTF-8)."""
    if _SURROGATE_ESCAPE.search(text, start, end) is None:
        return None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        half = ord(exc.object[exc.start])
        return (f"holds \\u{half:04x}, half of a character (a lone surrogate): not Unicode "
                "text; fix the export")
    return None


class _Array:
    """A top-level array read element by element: what is held is at most one element
    (``max_line_length`` characters) and the rest of the chunk it came in. Positions move
    through the buffer; it is cut only when more is read (no copy per element), and byte
    offsets are counted only for a message (a buffer all ASCII has them for free)."""

    def __init__(self, buf: str, chunks: Iterator[str], found: _Found, base: int) -> None:
        self.buf = buf          # what follows "[" ...
        self.pos = 0            # ... read up to here
        self.chunks = chunks
        self.found = found
        self.base = base        # bytes before buf[0] (a BOM not counted)
        self.ascii = buf.isascii()
        self.counted = (0, 0)   # (position, bytes before it) in buf: the last counted
        self.index = 0          # elements read
        self.comma = -1         # where the last comma was: in buf, or (< -1) -bytes - 2
        self.decode = _STRICT.raw_decode

    def more(self) -> bool:
        chunk = next(self.chunks, None)
        if chunk is None:
            return False
        if self.comma >= 0:
            self.comma = -self.offset(self.comma) - 2
        self.base = self.offset(self.pos)
        self.buf = self.buf[self.pos:] + chunk
        self.pos = 0
        self.ascii = self.buf.isascii()
        self.counted = (0, 0)
        return True

    def offset(self, pos: int) -> int:
        """Bytes from the file's start to buf[pos]."""
        if self.ascii:
            return self.base + pos
        at, size = self.counted if self.counted[0] <= pos else (0, 0)
        size += _bytes(self.buf[at:pos])
        self.counted = (pos, size)
        return self.base + size

    def place(self) -> str:
        return f"element {self.index} (byte {self.offset(self.pos)}) "

    def skip(self) -> bool:
        """Past whitespace, reading on as needed; False at the end of the file."""
        while True:
            found = _NOT_WHITESPACE.search(self.buf, self.pos)
            if found is not None:
                self.pos = found.start()
                return True
            self.pos = len(self.buf)
            if not self.more():
                return False

    def read(self) -> None:
        after_comma = False
        while self.skip():
            if self.buf[self.pos] == "]":
                return self.closed(after_comma)
            if self.index and not after_comma:
                return self.found.add(None, f"expected ',' or ']' after element "
                                            f"{self.index} (byte {self.offset(self.pos)})")
            if not self.element():
                return None
            after_comma = self.skip() and self.buf[self.pos] == ","
            if after_comma:
                self.comma = self.pos
                self.pos += 1
        s = "s" if self.index != 1 else ""
        self.found.add(None, f"truncated: the array is never closed (after {self.index} "
                             f"element{s}, byte {self.offset(self.pos)})")
        return None

    def closed(self, after_comma: bool) -> None:
        if after_comma:
            comma = self.offset(self.comma) if self.comma >= 0 else -self.comma - 2
            self.found.add(None, f"a trailing comma after element {self.index} "
                                 f"(byte {comma})")
        elif self.index == 0:
            self.found.add(None, "an empty array: no records")
        at = self.offset(self.pos)
        self.pos += 1
        if self.skip():
            self.found.add(None, f"more after the array's end at byte {at}")

    def element(self) -> bool:
        """Decode one element (reading on while it is cut); False when reading must stop."""
        limit = csvfile.LINE_LIMIT
        while True:
            try:
                value, end = self.decode(self.buf, self.pos)
                break
            except json.JSONDecodeError as error:
                unterminated = "Unterminated string" in error.msg
                cut = unterminated or error.pos >= len(self.buf) - TAIL
                if cut and len(self.buf) - self.pos <= limit and self.more():
                    continue
                # All there is: cut only if it ran out at the very end.
                cut = unterminated or error.pos >= len(self.buf.rstrip(WHITESPACE)) - 1
                where = f"element {self.index + 1} (byte {self.offset(self.pos)})"
                too_long = cut and len(self.buf) - self.pos > limit
                self.found.add(None, f"{where} is longer than {limit} characters ([spool] "
                                     "max_line_length)" if too_long else
                               f"truncated: {where} is not complete" if cut else
                               f"{where} is not JSON: {_reason(error)}")
                return False
            except RecursionError:
                self.found.add(None, f"element {self.index + 1} (byte {self.offset(self.pos)}) "
                                     f"is nested deeper than JSON parsers go ({DEPTH_HINT})")
                return False
            except ValueError as exc:  # NaN, Infinity
                self.found.add(None, f"element {self.index + 1} (byte {self.offset(self.pos)}) "
                                     f"is not JSON: {exc}")
                return False
        self.index += 1
        if end - self.pos > limit:  # read whole in one chunk, yet over the limit all the same
            self.found.add(None, f"element {self.index} (byte {self.offset(self.pos)}) is "
                                 f"longer than {limit} characters ([spool] max_line_length)")
        elif (bad := _not_unicode(value, self.buf, self.pos, end)) is not None:
            self.found.add(None, f"{self.place()}{bad}")
        else:
            self.found.record(value, None, self.place)
            if self.found.copy is not None and not self.found.total:
                self.found.copy.add(_one_line(self.buf[self.pos:end]))
        self.pos = end
        return True


def _one_line(element: str) -> str:
    """An element's text on one line: a line break in JSON text is only ever whitespace."""
    if "\n" in element or "\r" in element:
        return element.replace("\n", " ").replace("\r", " ")
    return element


_NOT_WHITESPACE = re.compile(f"[^{WHITESPACE}]")
_NEXT_ELEMENT = re.compile(f"[^{WHITESPACE},]")  # in an array that passed its checks


def _bytes(text: str) -> int:
    return len(text.encode("utf-8")) if not text.isascii() else len(text)


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "true or false", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), "not an object")


def _reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (column {exc.colno})"
    if "int_max_str_digits" in str(exc):  # Python's own limit, and its advice to programmers
        return f"a number of more than {sys.get_int_max_str_digits():,} digits"
    return str(exc)


# -- a file that passed its checks: its objects, as uploaded -----------------------------

def objects(source: Path | FileRef, form: str) -> Generator[tuple[int, str], None, None]:
    """(line, or element number, from 1; the object's text on one line) of every object
    of a file that passed its checks, in order."""
    ref = as_ref(source)
    if form == "lines":
        with ref.open("r", encoding="utf-8-sig", newline="\n") as text:
            readline = text.readline
            for line, raw in enumerate(iter(lambda: readline(csvfile.LINE_LIMIT + 2), ""), 1):
                raw = raw.strip(WHITESPACE)
                if raw:
                    yield line, raw.replace("\r", " ") if "\r" in raw else raw
        return
    with ref.open("r", encoding="utf-8-sig", newline="") as text:
        yield from _elements(text)


def _elements(text: io.TextIOBase) -> Iterator[tuple[int, str]]:
    decoder = json.JSONDecoder()
    buf = ""
    while not buf and (chunk := text.read(CHUNK)):
        buf = chunk.lstrip(WHITESPACE)
    if not buf.startswith("["):
        raise ValueError("not a JSON array")
    pos, index = 1, 0
    while True:
        found = _NEXT_ELEMENT.search(buf, pos)
        if found is None:
            chunk = text.read(CHUNK)
            if not chunk:
                raise ValueError(f"truncated after element {index}")
            buf, pos = chunk, 0
            continue
        pos = found.start()
        if buf[pos] == "]":
            return
        try:
            _, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError:
            chunk = text.read(CHUNK)  # the element goes on in the next chunk
            if not chunk:
                raise
            buf, pos = buf[pos:] + chunk, 0
            continue
        index += 1
        yield index, _one_line(buf[pos:end])
        pos = end


def without_error(text: str) -> str:
    """A line of a failed-objects file without its ``_bulkdrop_error``; ValueError when
    it is not one JSON object (a line edited by hand)."""
    text = text.strip(WHITESPACE)
    try:
        value = _STRICT.decode(text)
    except RecursionError:
        raise ValueError(f"nested deeper than JSON parsers go ({DEPTH_HINT})") from None
    except ValueError as exc:
        raise ValueError(f"not JSON: {_reason(exc)}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{_kind(value)}, not a JSON object")
    if (bad := _not_unicode(value, text, 0, len(text))) is not None:
        raise ValueError(bad)
    return rekeyed(text, {}, frozenset((ERROR_KEY,))) if ERROR_KEY in value else text


def rekeyed(text: str, rename: Mapping[str, str], drop: frozenset[str]) -> str:
    """An object's text with its top-level keys renamed and dropped: every value kept as
    written (numbers to the last digit, escapes as they were), the members joined
    compactly. *text* is one object that passed its checks."""
    decoder = _DECODER
    members = []
    pos = _skip(text, 1)
    while text[pos] != "}":
        key, pos = decoder.raw_decode(text, pos)
        pos = _skip(text, _skip(text, pos) + 1)  # past ":"
        _, end = decoder.raw_decode(text, pos)
        if key not in drop:
            members.append(f"{json.dumps(rename.get(key, key), ensure_ascii=False)}:"
                           f"{text[pos:end]}")
        pos = _skip(text, end)
        if text[pos] == ",":
            pos = _skip(text, pos + 1)
    return "{" + ",".join(members) + "}"


_DECODER = json.JSONDecoder()


def _skip(text: str, pos: int) -> int:
    """Past whitespace between an object's tokens (a space or two, if any)."""
    while pos < len(text) and text[pos] in WHITESPACE:
        pos += 1
    return pos


def _sent(found: JsonInspection, columns: Columns) -> Callable[[str], str]:
    """An object's text as uploaded: as it is, or with its top-level keys renamed and
    dropped (:func:`rekeyed`)."""
    if not found.changed_by(columns):
        return str
    rename, drop = columns.rename, frozenset((*columns.drop, ERROR_KEY))
    return functools.partial(rekeyed, rename=rename, drop=drop)


def _wanted(source: Path | FileRef, found: JsonInspection, columns: Columns,
            rows: range | None) -> Iterator[str]:
    assert found.form is not None, "only a file that passed its checks is uploaded"
    texts: Iterator[str] = (text for _, text in objects(source, found.form))
    if rows is not None:
        texts = itertools.islice(texts, rows.start, rows.stop)
    return map(_sent(found, columns), texts)


def blocks(source: Path | FileRef, found: JsonInspection, columns: Columns,
           rows: range | None = None) -> Generator[bytes, None, None]:
    """The upload as JSON lines, in blocks of about 64 KiB (only *rows*, 0-based objects,
    when given)."""
    held: list[str] = []
    size = 0
    for text in _wanted(source, found, columns, rows):
        held.append(text)
        size += len(text) + 1
        if size >= OUT_BLOCK:
            held.append("")
            yield "\n".join(held).encode("utf-8")
            held, size = [], 0
    if held:
        held.append("")
        yield "\n".join(held).encode("utf-8")


def most_sent(size: int, columns: Columns) -> int:
    """The most bytes a file of *size* bytes can be as uploaded: its objects a line each
    are never more than the file (and a last line end), but a key renamed longer grows
    by as much wherever it is, at most once in every ``"key":v`` the file can hold."""
    extra = 0
    for old, new in columns.rename.items():
        was, now = (len(json.dumps(k, ensure_ascii=False).encode()) for k in (old, new))
        if now > was:
            extra += (now - was) * (size // (was + 2))
    return size + 1 + extra


def part_spans(source: Path | FileRef, found: JsonInspection, columns: Columns, max_rows: int,
               max_bytes: int) -> list[tuple[int, int]]:
    """Where to cut the file into jobs: (first object, objects) for each part, each at
    most *max_rows* objects (0: no limit) and *max_bytes* bytes of upload; an object
    larger than that goes alone. Empty when one part takes it all."""
    spans: list[tuple[int, int]] = []
    first = rows = size = 0
    for text in _wanted(source, found, columns, None):
        one = _bytes(text) + 1
        if rows and (size + one > max_bytes or (max_rows and rows >= max_rows)):
            spans.append((first, rows))
            first, rows, size = first + rows, 0, 0
        rows, size = rows + 1, size + one
    if rows:
        spans.append((first, rows))
    return spans if len(spans) > 1 else []
