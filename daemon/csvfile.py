"""Dropped files as CSV: dialect and encoding detection, validation, counting.

``inspect`` reads the file once, in chunks (call it in a thread): its sha256 and size
(see :mod:`daemon.rawfile`), the dialect found, the rows, and every problem that means
it must never become a job, with 1-based physical line numbers (:mod:`daemon.normalise`
then makes the upload from what it found). Memory stays flat: no line, and no record (a
quoted field may span lines), longer than :data:`LINE_LIMIT` characters is ever held; a
file with one is rejected, naming its line.
"""

from __future__ import annotations

import builtins
import csv
import hashlib
import io
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from daemon.fileref import FileRef, as_ref
from daemon.rawfile import (
    CHUNK,
    RawBytes,
    bad_byte_line,
    bom_encoding,
    codec_of,
    line_endings,
    open_text,
    prescan,
)
from daemon.settings import ObjectSettings

MAX_PROBLEMS = 100
DEFAULT_LINE_LIMIT = 1 << 20
DELIMITERS = ("\t", ";", "|", ",")  # ties go to the earlier: commas fill free text
# The last two columns of a failed-rows file (<file>.failed.csv): why, and where.
BULKDROP_COLUMNS = ("bulkdrop_error", "bulkdrop_row")
DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}



def set_line_limit(chars: int) -> None:
    """The longest line or record (in characters) a file may hold: ``[spool]
    max_line_length``. Process-wide, like the csv module's own field limit."""
    global LINE_LIMIT
    LINE_LIMIT = chars
    csv.field_size_limit(chars)


LINE_LIMIT = DEFAULT_LINE_LIMIT
set_line_limit(DEFAULT_LINE_LIMIT)


class LineTooLong(Exception):
    """A line, or a record spanning lines, longer than :data:`LINE_LIMIT`."""


@dataclass(frozen=True)
class Columns:
    """Per-object column changes: renames and drops in the upload, required names."""
    rename: Mapping[str, str] = field(default_factory=dict)
    drop: Sequence[str] = ()
    require: Sequence[str] = ()

    def changes(self, header: Sequence[str]) -> bool:
        """Do they change a file with this header (a rename or drop of one of its names)?"""
        return any(name in self.rename or name in self.drop for name in header)

    @classmethod
    def of(cls, conf: ObjectSettings) -> Columns:
        """An object's column settings, as the checks and the upload apply them; the
        columns bulkdrop adds to a failed-rows file are dropped when a file has them."""
        return cls(conf.rename_columns, (*conf.drop_columns, *BULKDROP_COLUMNS),
                   conf.require_columns)


@dataclass(frozen=True)
class Dialect:
    encoding: str     # utf-8, utf-8-sig, utf-16-le, utf-16-be, cp1252
    delimiter: str
    line_endings: str  # CRLF, LF, CR, none

    @property
    def is_rfc4180_utf8(self) -> bool:
        return self.encoding == "utf-8" and self.delimiter == ","

    def describe(self) -> dict[str, str]:
        return {"encoding": self.encoding, "delimiter": DELIMITER_NAMES[self.delimiter],
                "line_endings": self.line_endings}


@dataclass(frozen=True)
class Problem:
    line: int | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "message": self.message}

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


@dataclass(frozen=True)
class Inspection:
    sha256: str
    bytes: int
    lines: int
    dialect: Dialect | None
    header: tuple[str, ...] = ()
    rows: int = 0
    problems: tuple[Problem, ...] = ()   # the first MAX_PROBLEMS
    problems_total: int = 0
    # A small file's bytes as read, hashed and checked (None for a larger one): what is
    # uploaded, with no second read.
    content: builtins.bytes | None = field(default=None, repr=False, compare=False)

    @property
    def problem(self) -> str | None:
        """One line a person can act on; None when the file may be uploaded."""
        return summary(self.problems, self.problems_total)

    def passes_through(self, columns: Columns) -> bool:
        return self.dialect is not None and self.dialect.is_rfc4180_utf8 \
            and not columns.changes(self.header)


def summary(problems: Sequence[Problem], total: int) -> str | None:
    """A file's problems in one line a person can act on; None when there are none."""
    if not problems:
        return None
    if total == 1:
        return str(problems[0])
    return f"{total} problems found before upload, first: {problems[0]}"


def header_names(row: Sequence[str]) -> list[str]:
    """Column names as compared and mapped: without a byte order mark or outer spaces."""
    names = [v.strip() for v in row]
    if names and names[0].startswith("\ufeff"):
        names[0] = names[0][1:].strip()
    return names


ProblemSink = Callable[[Problem], None]
PLAIN_BLOCK = 1 << 20  # characters of text checked at once by the fast path


class _Scan:
    """The structure pass: parse, check, count."""

    def __init__(self, columns: Columns, check_nul: bool, sink: ProblemSink | None) -> None:
        self.columns = columns
        self.check_nul = check_nul
        self.sink = sink
        self.rows = self.lines = 0
        self.problems: list[Problem] = []
        self.total = 0
        self.header: tuple[str, ...] = ()
        self.fed = 0  # characters handed to the parser for the record being read

    def add(self, line: int | None, message: str) -> None:
        self.total += 1
        problem = Problem(line, message)
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        if self.sink is not None:
            self.sink(problem)

    def feed(self, text: TextIO, limit: int) -> Iterator[str]:
        """Lines for the parser, counted: no line and no record longer than *limit*."""
        readline = text.readline
        while line := readline(limit + 1):
            self.fed += len(line)
            if self.fed > limit:
                raise LineTooLong
            yield line


def sniff_delimiter(sample: str) -> str:
    """The candidate that splits the sample's first rows into the most consistent columns."""
    lines = sample.splitlines(keepends=True)[:50]
    if len(lines) > 1 and not sample.endswith(("\n", "\r")):
        lines = lines[:-1]  # the sample may cut the last line short
    best, best_score = ",", (-1.0, 0)
    for delimiter in DELIMITERS:
        try:
            counts = [len(r) for r in csv.reader(lines, delimiter=delimiter) if r]
        except csv.Error:
            continue
        if not counts or counts[0] < 2:
            continue
        consistency = sum(c == counts[0] for c in counts) / len(counts)
        score = (consistency, -DELIMITERS.index(delimiter))
        if score > best_score:
            best, best_score = delimiter, score
    return best


def inspect(source: Path | FileRef, columns: Columns | None = None,
            sink: ProblemSink | None = None) -> Inspection:
    """Detect, validate and count; never raises for bad content, only for I/O errors.

    Every problem is also handed to *sink*, when given: the result keeps only the first
    :data:`MAX_PROBLEMS`, the errors CSV gets them all.
    """
    columns = columns or Columns()
    ref = as_ref(source)
    with ref.open_binary(buffering=0) as fh:  # one read; no buffer to set up
        head = fh.read(CHUNK)
    if not head:
        return Inspection(hashlib.sha256().hexdigest(), 0, 0, None, (), 0,
                          (Problem(None, "the file is empty"),), 1)
    whole = head if len(head) < CHUNK else None  # a small file is read once, here
    declared = bom_encoding(head, whole is not None)
    raw = prescan(ref, check_utf8=declared is None, whole=whole)
    if declared:
        encoding = declared
    elif raw.utf8:
        encoding = "utf-8"
    elif raw.non_ascii_before:
        # Real UTF-8 with a damaged byte, not another encoding: say so, don't guess.
        return _undecodable(raw, "utf-8", head, raw.error_line, sink)
    else:
        encoding = "cp1252"
    sample = head.decode(codec_of(encoding), "replace").lstrip("\ufeff")
    endings = line_endings(sample)
    dialect = Dialect(encoding, sniff_delimiter(sample), endings)
    scan = _Scan(columns, check_nul=raw.has_nul, sink=sink)
    text = (io.TextIOWrapper(io.BytesIO(whole), encoding=codec_of(encoding), newline="")
            if whole is not None else open_text(ref, encoding))
    with text:
        _check_rows(scan, text, dialect, ref)
    return Inspection(raw.sha256, raw.size, scan.lines, dialect, scan.header, scan.rows,
                      tuple(scan.problems), scan.total, content=whole)


def _undecodable(raw: RawBytes, encoding: str, head: bytes, line: int | None,
                 sink: ProblemSink | None) -> Inspection:
    sample = head.decode(encoding, "replace")
    endings = line_endings(sample)
    problem = Problem(line, f"bytes that are not valid {encoding} text; "
                            "save the file as UTF-8 and drop it again")
    if sink is not None:
        sink(problem)
    return Inspection(raw.sha256, raw.size, 0, Dialect(encoding, sniff_delimiter(sample),
                                                       endings), (), 0, (problem,), 1)


def _check_rows(scan: _Scan, text: io.TextIOWrapper, dialect: Dialect, ref: FileRef) -> None:
    """Parse and check every record. After the header, blocks of lines with no quote
    and no bare CR go by the fast path (:func:`_plain_blocks`); from the first block
    that has one, the csv module reads the rest, from that block's first line."""
    delimiter = dialect.delimiter
    reader = csv.reader(scan.feed(text, LINE_LIMIT), delimiter=delimiter, strict=True)
    width = _read_records(scan, reader, 0, 0, text.encoding, ref, header_only=True)
    base = reader.line_num
    if width > 1 and not scan.total and dialect.line_endings in ("LF", "CRLF"):
        rest, base = _plain_blocks(scan, text, dialect, width, base)
        reader = csv.reader(itertools.chain(_lines_of(rest, scan), scan.feed(text, LINE_LIMIT)),
                            delimiter=delimiter, strict=True)
    _read_records(scan, reader, base, width, text.encoding, ref)
    scan.lines = base + reader.line_num
    _check_rows_found(scan, width)


def _read_records(scan: _Scan, reader: Any, base: int, width: int, encoding: str,
                  ref: FileRef, header_only: bool = False) -> int:
    """Check the records *reader* gives (its line numbers after *base*); the header's
    width (found here when *width* is 0)."""
    limit = LINE_LIMIT
    while True:
        line = base + reader.line_num + 1  # where the record starts (it may span lines)
        scan.fed = 0
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if _stops(scan, line, exc):
                break
            continue
        except (LineTooLong, UnicodeDecodeError) as exc:  # the rest cannot be read
            if isinstance(exc, LineTooLong):
                scan.add(line, _too_long(limit, spans=base + reader.line_num > line))
            else:
                scan.add(bad_byte_line(ref, encoding),
                         f"bytes that are not valid {encoding} text; "
                         "save the file as UTF-8 and drop it again")
            break
        if scan.check_nul and any("\x00" in value for value in row):
            scan.add(line, "NUL bytes: is this a UTF-16 file without a byte order mark?")
        if not width:
            width = _check_header(scan, row, line)
            if header_only and width:
                break
            continue
        if not row:
            continue  # a blank line
        scan.rows += 1
        if len(row) != width:
            scan.add(line, f"{len(row)} fields, the header has {width}")
    return width


def _plain_blocks(scan: _Scan, text: io.TextIOWrapper, dialect: Dialect, width: int,
                  base: int) -> tuple[str, int]:
    """Check whole lines a block at a time while the csv module could find nothing in
    them that a count cannot: no quote, no bare CR (a line end of its own), no NUL to
    report, no line over the limit, every line blank or of *width* fields. Returns what
    is left for the csv module (from the first block that is not so, whole lines from
    its start) and the lines checked."""
    fields, delimiter = width - 1, dialect.delimiter
    end = "\r\n" if dialect.line_endings == "CRLF" else "\n"
    pending = ""
    while chunk := text.read(PLAIN_BLOCK):
        block = pending + chunk
        cut = block.rfind("\n") + 1
        block, pending = block[:cut], block[cut:]
        if not block:
            if len(pending) > LINE_LIMIT:
                break
            continue
        lines = block.split(end)
        # Every CR and LF is a line end (CRLF: as a pair), so the csv module would split
        # these lines here too.
        whole = (block.count("\r") == block.count("\n") == len(lines) - 1 if end == "\r\n"
                 else "\r" not in block)
        lines.pop()  # after the last line end
        blank = lines.count("")
        if (not whole or '"' in block or (scan.check_nul and "\x00" in block)
                or (len(block) > LINE_LIMIT and max(map(len, lines)) > LINE_LIMIT)
                or list(map(str.count, lines, itertools.repeat(delimiter))).count(fields)
                != len(lines) - blank):
            pending = block + pending
            break
        scan.rows += len(lines) - blank
        base += len(lines)
    else:
        return pending, base  # the end of the file: its last line, if it has no line end
    # The csv module takes each string it is given as ending its record: the line cut
    # at the chunk's end goes whole.
    return pending + text.readline(LINE_LIMIT + 1), base


def _lines_of(text: str, scan: _Scan) -> Iterator[str]:
    """*text* as the csv module's lines (split as ``newline=""`` reading splits them),
    each counted like :meth:`_Scan.feed`'s."""
    readline = io.StringIO(text, newline="").readline
    while line := readline():
        scan.fed += len(line)
        if scan.fed > LINE_LIMIT:
            raise LineTooLong
        yield line


def _check_rows_found(scan: _Scan, width: int) -> None:
    if width and not scan.rows and not scan.total:
        scan.add(None, "the file has a header line but no data rows")
    if not width and not scan.total:
        scan.add(None, "the file holds only blank lines")


def _too_long(limit: int, spans: bool) -> str:
    where = " (a record from here on spans lines: is a quote never closed?)" if spans else ""
    return (f"a line longer than {limit:,} characters{where}; no CSV line is this long: "
            "check the file, or raise [spool] max_line_length")


def _stops(scan: _Scan, line: int, exc: csv.Error) -> bool:
    """Record a parse error; True when parsing cannot go on."""
    if "end of data" in str(exc):
        scan.add(line, 'a quoted field is never closed (unbalanced ")')
        return True
    if "field limit" in str(exc):  # a line or record over the limit stops it before this
        scan.add(line, f"a field longer than {LINE_LIMIT:,} characters")
        return True
    scan.add(line, f"malformed CSV: {exc}")
    return False


def write_problems(source: Path | FileRef, columns: Columns, out: BinaryIO,
                   checks: Callable[..., Any] | None = None) -> int:
    """Every problem of the file as CSV (``line,message``, as in the errors CSV), found by
    checking it again (with *checks*, a JSON file's ``jsonfile.inspect``; else as CSV):
    a file may have millions, more than are ever held in memory."""
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(("line", "message"))

    def write(problem: Problem) -> None:
        writer.writerow(("" if problem.line is None else problem.line, problem.message))

    try:
        found = (checks or inspect)(source, columns, sink=write)
    finally:
        text.detach()
    total: int = found.problems_total
    return total


def _check_header(scan: _Scan, row: list[str], line: int) -> int:
    if not row:
        return 0  # blank lines before the header are skipped
    names = header_names(row)
    if not any(names):
        scan.add(line, "the header line has no column names")
        return len(row)
    scan.header = tuple(names)
    for i, name in enumerate(names, 1):
        if not name:
            scan.add(line, f"column {i} has no name")
    renamed = [scan.columns.rename.get(n, n) for n in names if n not in scan.columns.drop]
    seen: dict[str, int] = {}
    for i, name in enumerate(renamed, 1):
        if name and name in seen:
            scan.add(line, f"column name {name!r} appears twice (columns {seen[name]} and {i})")
        seen.setdefault(name, i)
    for required in scan.columns.require:
        if required not in seen:
            scan.add(line, f"required column {required!r} is missing")
    return len(row)
