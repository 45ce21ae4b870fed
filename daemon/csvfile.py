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
import functools
import hashlib
import io
import itertools
import os
import re
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
PLAIN_BLOCK = 1 << 18  # characters of text checked at once by the fast path
FAST_PATH = True  # off: the csv module reads every record (the tests compare the two)


class Scan:
    """The structure pass: parse, check, count."""

    def __init__(self, columns: Columns, check_nul: bool, sink: ProblemSink | None,
                 decodable: bool = False) -> None:
        self.columns = columns
        self.check_nul = check_nul
        # Every byte is known to decode (the fast path reads blocks, not lines: a byte
        # that does not would be found in the wrong place).
        self.decodable = decodable
        self.sink = sink
        self.rows = self.lines = 0
        self.problems: list[Problem] = []
        self.total = 0
        self.header: tuple[str, ...] = ()
        self.fed = 0  # characters handed to the parser for the record being read
        self.stopped = False      # the rest of the file could not be read
        self.undecodable = False  # ... for a byte its encoding cannot decode

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


Splitter = Callable[[FileRef, "Columns", int], "Inspection | None"]


def inspect(source: Path | FileRef, columns: Columns | None = None,
            sink: ProblemSink | None = None, split: Splitter | None = None) -> Inspection:
    """Detect, validate and count; never raises for bad content, only for I/O errors.

    Every problem is also handed to *sink*, when given: the result keeps only the first
    :data:`MAX_PROBLEMS`, the errors CSV gets them all. A file larger than one read is
    first offered to *split* (:mod:`daemon.csvsplit`) with its size, which may check it
    on two cores.
    """
    columns = columns or Columns()
    ref = as_ref(source)
    with ref.open_binary(buffering=0) as fh:  # one read; no buffer to set up
        head = fh.read(CHUNK)
        size = os.fstat(fh.fileno()).st_size if len(head) == CHUNK else len(head)
    if not head:
        return Inspection(hashlib.sha256().hexdigest(), 0, 0, None, (), 0,
                          (Problem(None, "the file is empty"),), 1)
    whole = head if len(head) < CHUNK else None  # a small file is read once, here
    if whole is None and split is not None and sink is None \
            and (found := split(ref, columns, size)) is not None:
        return found
    declared = bom_encoding(head, whole is not None)
    raw = prescan(ref, check_utf8=declared in (None, "utf-8-sig"), whole=whole)
    if declared:
        encoding = declared
    elif raw.utf8:
        encoding = "utf-8"
    elif raw.non_ascii_before:
        # Real UTF-8 with a damaged byte, not another encoding: say so, don't guess.
        return _undecodable(raw, "utf-8", head, raw.error_line, sink)
    else:
        encoding = "cp1252"
    dialect = dialect_of(head.decode(codec_of(encoding), "replace"), encoding)
    decodable = raw.utf8 if encoding in ("utf-8", "utf-8-sig") else \
        encoding == "cp1252" and raw.cp1252
    scan = Scan(columns, check_nul=raw.has_nul, sink=sink, decodable=decodable)
    text = (io.TextIOWrapper(io.BytesIO(whole), encoding=codec_of(encoding), newline="")
            if whole is not None else open_text(ref, encoding))
    with text:
        _check_rows(scan, text, dialect, ref)
    return Inspection(raw.sha256, raw.size, scan.lines, dialect, scan.header, scan.rows,
                      tuple(scan.problems), scan.total, content=whole)


def dialect_of(sample: str, encoding: str) -> Dialect:
    """The dialect a file of *encoding* shows in *sample*, its first characters."""
    sample = sample.lstrip("\ufeff")
    return Dialect(encoding, sniff_delimiter(sample), line_endings(sample))


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


def _check_rows(scan: Scan, text: io.TextIOWrapper, dialect: Dialect, ref: FileRef) -> None:
    """Parse and check every record: the header, then the rest by :func:`check_body`."""
    width = check_header(scan, text, dialect, ref)
    if width and not scan.stopped:
        check_body(scan, text, dialect, width, ref)
    check_rows_found(scan, width)


def check_header(scan: Scan, text: TextIO, dialect: Dialect, ref: FileRef | None) -> int:
    """Read and check the header (after any blank lines); its width, 0 when there is none."""
    reader = csv.reader(scan.feed(text, LINE_LIMIT), delimiter=dialect.delimiter, strict=True)
    width = _read_records(scan, reader, 0, 0, text.encoding, ref, header_only=True)
    scan.lines = reader.line_num
    return width


def check_body(scan: Scan, text: TextIO, dialect: Dialect, width: int,
                ref: FileRef | None) -> None:
    """Check the records after the header (``scan.lines`` lines read), each of *width*
    fields.

    Blocks of whole lines go by the fast path (:class:`_Blocks`) while it can vouch for
    them; a block it cannot goes to the csv module, from its first line to the first
    record that ends at or after its last, and the fast path takes over again there.
    """
    blocks = _Blocks(scan, text, dialect, width) if FAST_PATH and scan.decodable else None
    while True:
        block = blocks.check() if blocks is not None else None  # None: the csv module
        base = scan.lines                                      # reads all the rest
        reader = csv.reader(_handover(scan, text, blocks, block or ""),
                            delimiter=dialect.delimiter, strict=True)
        _read_records(scan, reader, base, width, text.encoding, ref,
                      stop_at=None if block is None else _line_count(block))
        scan.lines = base + reader.line_num
        if block is None or scan.stopped:
            return


def _read_records(scan: Scan, reader: Any, base: int, width: int, encoding: str,
                  ref: FileRef | None, header_only: bool = False,
                  stop_at: int | None = None) -> int:
    """Check the records *reader* gives (its line numbers after *base*), up to the first
    that ends on or after its line *stop_at*; the header's width (found here when *width*
    is 0). Sets ``scan.stopped`` when the rest cannot be read."""
    limit = LINE_LIMIT
    while stop_at is None or reader.line_num < stop_at:
        line = base + reader.line_num + 1  # where the record starts (it may span lines)
        scan.fed = 0
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if _stops(scan, line, exc):
                scan.stopped = True
                break
            continue
        except (LineTooLong, UnicodeDecodeError) as exc:  # the rest cannot be read
            scan.stopped = True
            if isinstance(exc, LineTooLong):
                scan.add(line, _too_long(limit, spans=base + reader.line_num > line))
            else:
                scan.undecodable = True
                scan.add(bad_byte_line(ref, encoding) if ref is not None else None,
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


class _Blocks:
    """The fast path: whole lines checked a block at a time, without the csv module,
    while nothing in them could make it find anything else: every line blank or of
    *width* fields, each field plain (no quote, delimiter or line end in it) or quoted
    whole on its line (``"..."``, quotes in it doubled), no bare CR (a line end of its
    own), no NUL to report, no line over the limit."""

    def __init__(self, scan: Scan, text: TextIO, dialect: Dialect, width: int) -> None:
        self.scan = scan
        self.text = text
        self.fields = width - 1
        self.delimiter = dialect.delimiter
        self.end = "\r\n" if dialect.line_endings == "CRLF" else "\n"
        self.done = width < 2 or dialect.line_endings not in ("LF", "CRLF")
        self.pattern = None if self.done else _records_pattern(self.delimiter, width, self.end)
        self.pending = ""  # the start of the line the last block cut
        self.piece: io.StringIO | None = None  # lines the csv module took from there on

    def check(self) -> str | None:
        """Check blocks, counting their lines and rows in *scan*, up to one the fast path
        cannot vouch for: its whole lines. None at the end of the file (what is left is
        its last line, without a line end), or when the rest is the csv module's."""
        scan, text = self.scan, self.text
        if self.piece is not None:  # the csv module stopped within it: the rest is ours
            self.pending, self.piece = self.piece.read(), None
        if self.done:
            return None
        while chunk := text.read(PLAIN_BLOCK):
            block = self.pending + chunk
            cut = block.rfind("\n") + 1
            block, self.pending = block[:cut], block[cut:]
            if not block:
                if len(self.pending) > LINE_LIMIT:
                    break  # the csv module says where
                continue
            counted = self._vouch(block)
            if counted is None:
                return block
            scan.lines += counted[0]
            scan.rows += counted[1]
        self.done = True
        return None

    def _vouch(self, block: str) -> tuple[int, int] | None:
        """(lines, rows) of a block of whole lines the fast path vouches for, else None."""
        end = self.end
        if self.scan.check_nul and "\x00" in block:
            return None
        if '"' in block:
            if self.pattern is None or self.pattern.fullmatch(block) is None:
                return None
            lines, split = block.count("\n"), None
            blank = (block.split(end)[:-1].count("")
                     if block.startswith(end) or end + end in block else 0)
        else:
            split = block.split(end)
            split.pop()  # after the last line end
            lines, blank = len(split), split.count("")
            if not ("\r" not in block if end == "\n"
                    else block.count("\r") == block.count("\n") == lines):
                return None  # a bare CR (or LF) ends a line of its own
            if list(map(str.count, split, itertools.repeat(self.delimiter))).count(
                    self.fields) != lines - blank:
                return None
        if len(block) > LINE_LIMIT and max(map(len, split or block.split(end))) + len(end) \
                > LINE_LIMIT:
            return None
        return lines, lines - blank


@functools.lru_cache(maxsize=32)
def _records_pattern(delimiter: str, width: int, end: str) -> re.Pattern[str]:
    """Whole lines, each blank or *width* fields, plain or quoted whole on their line:
    what the fast path vouches for in a block with a quote."""
    d = re.escape(delimiter)
    field = f'(?:"(?:[^"\\r\\n]++|"")*+"|[^"{d}\\r\\n]*+)'
    if width <= 64:
        line = field + (d + field) * (width - 1)
    else:
        line = f"{field}(?:{d}{field}){{{width - 1}}}"
    return re.compile(f"(?:(?:{line})?{re.escape(end)})*+")


def _handover(scan: Scan, text: TextIO, blocks: _Blocks | None, block: str) -> Iterator[str]:
    """Lines for the csv module: *block*'s; then, if it asks for more, the line the fast
    path cut, completed; then the rest of the file."""
    yield from _lines_of(io.StringIO(block, newline=""), scan)
    if blocks is not None and blocks.pending:
        piece = io.StringIO(blocks.pending + text.readline(LINE_LIMIT + 1), newline="")
        blocks.pending, blocks.piece = "", piece
        yield from _lines_of(piece, scan)
        blocks.piece = None
    yield from scan.feed(text, LINE_LIMIT)


def _line_count(block: str) -> int:
    """The lines of *block* (whole lines) as ``newline=""`` reading splits them."""
    return block.count("\n") + block.count("\r") - block.count("\r\n")


def _lines_of(text: io.StringIO, scan: Scan) -> Iterator[str]:
    """*text*'s lines (split as ``newline=""`` reading splits them), each counted like
    :meth:`Scan.feed`'s."""
    readline = text.readline
    while line := readline():
        scan.fed += len(line)
        if scan.fed > LINE_LIMIT:
            raise LineTooLong
        yield line


def check_rows_found(scan: Scan, width: int) -> None:
    if width and not scan.rows and not scan.total:
        scan.add(None, "the file has a header line but no data rows")
    if not width and not scan.total:
        scan.add(None, "the file holds only blank lines")


def _too_long(limit: int, spans: bool) -> str:
    where = " (a record from here on spans lines: is a quote never closed?)" if spans else ""
    return (f"a line longer than {limit:,} characters{where}; no CSV line is this long: "
            "check the file, or raise [spool] max_line_length")


def _stops(scan: Scan, line: int, exc: csv.Error) -> bool:
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


def _check_header(scan: Scan, row: list[str], line: int) -> int:
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
