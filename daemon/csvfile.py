"""Local checks on a dropped file and the byte stream that is uploaded.

``inspect`` reads the file once, in chunks (call it in a thread): its sha256, its
size, and the first problem that means it must never become a job.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiofiles

CHUNK = 256 * 1024
BLANK = b"\r\n\t \xef\xbb\xbf"


@dataclass(frozen=True)
class Inspection:
    sha256: str
    bytes: int
    lines: int
    problem: str | None  # one line a person can act on; None when the file may be uploaded


def inspect(path: Path) -> Inspection:
    digest = hashlib.sha256()
    size = newlines = 0
    last = b""
    header_seen = has_data = False
    tail = b""
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            newlines += chunk.count(b"\n")
            last = chunk[-1:]
            if has_data:
                continue
            parts = (tail + chunk).split(b"\n")
            tail = parts.pop()
            for part in parts:
                if not header_seen:
                    header_seen = bool(part.strip(BLANK))
                elif part.strip(BLANK):
                    has_data = True
                    break
    if not has_data and tail.strip(BLANK):
        has_data, header_seen = header_seen, True
    problem = None
    if size == 0:
        problem = "the file is empty"
    elif not header_seen:
        problem = "the file holds only blank lines"
    elif not has_data:
        problem = "the file has a header line but no data rows"
    lines = newlines + (1 if size and last != b"\n" else 0)
    return Inspection(digest.hexdigest(), size, lines, problem)


async def stream(path: Path, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
    """The file's bytes, chunk by chunk, read off the event loop."""
    async with aiofiles.open(path, "rb") as fh:
        while chunk := await fh.read(chunk_size):
            yield chunk
