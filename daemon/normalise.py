"""The bytes that are uploaded: the file itself, or its RFC 4180 UTF-8 comma rendering
(a JSON file's: JSON lines, see :mod:`daemon.jsonfile`).

Conversion runs block by block in a worker thread (``asyncio.to_thread`` per block of
about 64 KiB), so the event loop never waits on it and memory stays flat.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import itertools
import operator
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiofiles

from daemon import csvfile, jsonfile
from daemon.csvfile import Columns, Dialect, Inspection, header_names
from daemon.fileref import FileRef, as_ref
from daemon.rawfile import CHUNK, bounded_lines, open_text

BATCH_ROWS = 2000
OUT_BLOCK = 64 * 1024  # bytes of converted CSV per chunk of the upload


# What an upload sends: a small file's bytes, or a factory of fresh streams of chunks
# (a retried upload starts from the top).
UploadBody = bytes | Callable[[], AsyncIterator[bytes]]


def upload_body(source: Path | FileRef, inspection: Inspection | jsonfile.JsonInspection,
                columns: Columns, rows: range | None = None) -> UploadBody:
    """What to upload for the file (or for *rows* of it, 0-based data rows: then only the
    header and those rows are sent; a JSON file's rows are its objects)."""
    ref = as_ref(source)
    if isinstance(inspection, jsonfile.JsonInspection):
        ref, inspection = inspection.upload_source(ref)  # an array's copy as JSON lines
    if rows is None and inspection.passes_through(columns):
        if inspection.content is not None:
            return inspection.content  # a small file: the bytes read, hashed and checked
        return lambda: stream_raw(ref)
    if isinstance(inspection, jsonfile.JsonInspection):
        found = inspection
        return lambda: stream_blocks(jsonfile.blocks(ref, found, columns, rows))
    assert inspection.dialect is not None, "only a file with a dialect is uploaded"
    dialect = inspection.dialect
    return lambda: stream_blocks(normalised_blocks(ref, dialect, columns, rows))


def upload_kind(inspection: Inspection | jsonfile.JsonInspection,
                metadata: Mapping[str, Any] | None) -> tuple[Mapping[str, Any] | None, str]:
    """The metadata and the file part's type an upload goes with: JSON lines say so
    (``"format": "json"`` merged into the object's metadata, ``application/json``)."""
    if isinstance(inspection, jsonfile.JsonInspection):
        return {**(metadata or {}), "format": "json"}, jsonfile.CONTENT_TYPE
    return metadata, "text/csv"


async def stream_raw(ref: FileRef, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
    """The file's bytes, chunk by chunk, read off the event loop.

    The first chunk is read together with the open, so a small file costs one hop to a
    thread; a larger one goes on through aiofiles. Both open the claimed file itself,
    never a link or another file put in its place.
    """
    first = await asyncio.to_thread(_head, ref, chunk_size)
    if first:
        yield first
    if len(first) < chunk_size:
        return
    async with aiofiles.open(ref.path, "rb", opener=ref.opener) as fh:
        await fh.seek(len(first))
        while chunk := await fh.read(chunk_size):
            yield chunk


def _head(ref: FileRef, size: int) -> bytes:
    with ref.open_binary() as fh:
        return fh.read(size)


async def stream_blocks(blocks: Generator[bytes, None, None]) -> AsyncIterator[bytes]:
    """The blocks of a conversion, each made in a worker thread."""
    try:
        while (block := await asyncio.to_thread(next, blocks, None)) is not None:
            yield block
    finally:
        # ValueError: still running in its thread after a cancel; it ends with the file.
        with contextlib.suppress(ValueError):
            await asyncio.to_thread(blocks.close)


def normalised_blocks(source: Path | FileRef, dialect: Dialect, columns: Columns,
                      rows: range | None = None) -> Generator[bytes, None, None]:
    """RFC 4180 (CRLF, minimal quoting) UTF-8 blocks of the file, with column changes.

    With *rows*, the header and only those data rows (0-based, blank lines not counted).
    Parsing, quoting and decoding run in C (csv, io); Python only hands over batches.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    with open_text(source, dialect.encoding) as text:
        lines = bounded_lines(text, csvfile.LINE_LIMIT + 1)
        records = filter(None, csv.reader(lines, delimiter=dialect.delimiter, strict=True))
        found = upload_header(records, columns)
        if found is None:
            return
        header, pick = found
        writer.writerow(header)
        wanted: Iterator[list[str]] = records
        if rows is not None:
            for _ in itertools.islice(records, rows.start):
                pass  # rows before this part
            wanted = itertools.islice(records, len(rows))
        while batch := list(itertools.islice(wanted, BATCH_ROWS)):
            writer.writerows(batch if pick is None else map(pick, batch))
            if buf.tell() >= OUT_BLOCK:
                yield buf.getvalue().encode("utf-8")
                buf.seek(0)
                buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode("utf-8")


Picker = Callable[[list[str]], Sequence[str]]


def upload_header(records: Iterator[list[str]], columns: Columns
            ) -> tuple[Sequence[str], Picker | None] | None:
    """The header as uploaded (renamed, dropped columns gone), and what picks the kept
    fields of a row (None: all of them); None for a file without one."""
    header = next(records, None)
    if header is None:
        return None
    names = header_names(header)
    keep = [i for i, name in enumerate(names) if name not in columns.drop]
    header = [columns.rename.get(names[i], header[i].lstrip("\ufeff"))
              for i in range(len(header))]
    pick = None if len(keep) == len(header) else _picker(keep)
    return (header if pick is None else pick(header)), pick


def _picker(keep: list[int]) -> Picker:
    if len(keep) == 1:
        only = keep[0]
        return lambda row: (row[only],)
    return operator.itemgetter(*keep)


def part_spans(source: Path | FileRef, dialect: Dialect, columns: Columns, max_rows: int,
               max_bytes: int) -> list[tuple[int, int]]:
    """Where to cut the file into jobs: (first data row, rows) for each part, each at most
    *max_rows* rows (0: no limit) and its upload (the header and its rows, rendered as
    :func:`normalised_blocks` renders them) at most *max_bytes*; a row larger than that
    goes alone. One read, in batches, measuring row by row only where a cut falls."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")

    def measured() -> int:
        size = len(buf.getvalue().encode("utf-8"))
        buf.seek(0)
        buf.truncate()
        return size

    spans: list[tuple[int, int]] = []
    first = rows = size = 0
    with open_text(source, dialect.encoding) as text:
        lines = bounded_lines(text, csvfile.LINE_LIMIT + 1)
        records = filter(None, csv.reader(lines, delimiter=dialect.delimiter, strict=True))
        found = upload_header(records, columns)
        if found is None:
            return []
        header, pick = found
        writer.writerow(header)
        room = max_bytes - measured()  # the header goes with every part
        while batch := list(itertools.islice(records, BATCH_ROWS)):
            picked = batch if pick is None else [pick(row) for row in batch]
            writer.writerows(picked)
            whole = measured()
            if size + whole <= room and (not max_rows or rows + len(batch) <= max_rows):
                rows, size = rows + len(batch), size + whole
                continue
            for row in picked:  # a cut falls in this batch: find it
                writer.writerow(row)
                one = measured()
                if rows and (size + one > room or (max_rows and rows >= max_rows)):
                    spans.append((first, rows))
                    first, rows, size = first + rows, 0, 0
                rows, size = rows + 1, size + one
    if rows:
        spans.append((first, rows))
    return spans if len(spans) > 1 else []
