"""The bytes that are uploaded: the file itself, or its RFC 4180 UTF-8 comma rendering.

Conversion runs block by block in a worker thread (``asyncio.to_thread`` per block of
about 64 KiB), so the event loop never waits on it and memory stays flat.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import csv
import io
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path

import aiofiles

from daemon.csvfile import CHUNK, OUT_BLOCK, Columns, Dialect, Inspection, header_names


def upload_body(path: Path, inspection: Inspection, columns: Columns,
                rows: range | None = None) -> Callable[[], AsyncIterator[bytes]]:
    """A factory of fresh upload streams (a retried upload starts from the top).

    With *rows* (0-based data rows), only the header and those rows are sent.
    """
    if rows is None and inspection.passes_through(columns):
        return lambda: stream_raw(path)
    assert inspection.dialect is not None, "only a file with a dialect is uploaded"
    dialect = inspection.dialect
    return lambda: stream_normalised(path, dialect, columns, rows)


async def stream_raw(path: Path, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
    """The file's bytes, chunk by chunk, read off the event loop."""
    async with aiofiles.open(path, "rb") as fh:
        while chunk := await fh.read(chunk_size):
            yield chunk


async def stream_normalised(path: Path, dialect: Dialect, columns: Columns,
                            rows: range | None = None) -> AsyncIterator[bytes]:
    blocks = normalised_blocks(path, dialect, columns, rows)
    try:
        while (block := await asyncio.to_thread(next, blocks, None)) is not None:
            yield block
    finally:
        # ValueError: still running in its thread after a cancel; it ends with the file.
        with contextlib.suppress(ValueError):
            await asyncio.to_thread(blocks.close)


def _lines(path: Path, dialect: Dialect) -> Iterator[str]:
    newline = "\r" if dialect.line_endings == "CR" else "\n"
    decoder = codecs.getincrementaldecoder(dialect.encoding)("strict")
    tail = ""
    first = True
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            text = decoder.decode(chunk)
            if first:
                text, first = text.removeprefix("\ufeff"), False  # a UTF-16 byte order mark
            parts = (tail + text).split(newline)
            tail = parts.pop()
            for part in parts:
                yield part + newline
    tail += decoder.decode(b"", final=True)
    if tail:
        yield tail


def normalised_blocks(path: Path, dialect: Dialect, columns: Columns,
                      rows: range | None = None) -> Generator[bytes, None, None]:
    """RFC 4180 (CRLF, minimal quoting) UTF-8 blocks of the file, with column changes.

    With *rows*, the header and only those data rows (0-based, blank lines not counted).
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    keep: list[int] | None = None
    index = -1
    for row in csv.reader(_lines(path, dialect), delimiter=dialect.delimiter, strict=True):
        if not row:
            continue  # blank lines carry no record
        if keep is not None:
            index += 1
            if rows is not None and index not in rows:
                if index >= rows.stop:
                    break
                continue
        else:
            names = header_names(row)
            keep = [i for i, name in enumerate(names) if name not in columns.drop]
            if row[0].startswith("\ufeff"):
                row[0] = row[0][1:]
            row = [columns.rename.get(names[i], row[i]) for i in range(len(row))]
        writer.writerow(row if len(keep) == len(row) else [row[i] for i in keep])
        if buf.tell() >= OUT_BLOCK:
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode("utf-8")
