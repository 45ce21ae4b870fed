"""Reading a bulk upload: the multipart body, streamed, hashed and counted as it arrives.

The file part is read as JSON lines when its Content-Type is application/json or its
name ends in .json, .jsonl or .ndjson, and as CSV otherwise. A metaData part saying
"format": "json" counts too, but only when it comes first: the daemon sends the file
first, so the part's own headers are what decide.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, hdrs, web

from daemon.sim.records import BodyParser, JsonLinesParser, RecordParser

CHUNK_SIZE = 64 * 1024
# Bigger batches of records go to a thread so parsing never stalls the shared event loop.
THREAD_BATCH = 256 * 1024
MAX_KEPT_BODY = 16 * 1024 * 1024
MAX_METADATA = 1024 * 1024
JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")


class UploadError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    filename: str | None = None
    metadata: dict[str, Any] | None = None
    sha256: str = ""
    bytes: int = 0
    records_count: int = 0
    failed_count: int = 0
    failed_records: list[dict[str, Any]] = field(default_factory=list)
    body: builtins.bytes | None = None
    content_type: str = ""  # the file part's, as sent


async def read_upload(request: web.Request, check_emails: bool, keep_body: bool) -> Upload:
    """Read the whole request. Errors are raised only after the body is drained, so the
    client gets the answer instead of a reset connection."""
    if not request.content_type.startswith("multipart/"):
        await drain(request)
        raise UploadError(415, "The request must be multipart/form-data with a 'file' part")
    reader = await request.multipart()
    upload: Upload | None = None
    metadata: dict[str, Any] | None = None
    problem: UploadError | None = None
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            await part.release()
        elif part.name == "file" and upload is None:
            parser = (JsonLinesParser if _is_json(part, metadata) else RecordParser)(check_emails)
            upload = await _read_file(part, parser, keep_body)
        elif part.name == "metaData":
            try:
                metadata = _parse_metadata(await part.read())
            except UploadError as exc:
                problem = exc
        else:
            await part.release()
    if problem is None and upload is None:
        problem = UploadError(400, "Missing required multipart field 'file'")
    if problem is not None:
        raise problem
    assert upload is not None
    upload.metadata = metadata
    return upload


def _is_json(part: BodyPartReader, metadata: dict[str, Any] | None) -> bool:
    content_type = part.headers.get(hdrs.CONTENT_TYPE, "").partition(";")[0]
    if content_type.strip().lower() == "application/json":
        return True
    if (part.filename or "").lower().endswith(JSON_SUFFIXES):
        return True
    return metadata is not None and str(metadata.get("format", "")).lower() == "json"


async def _read_file(part: BodyPartReader, parser: BodyParser, keep_body: bool) -> Upload:
    digest = hashlib.sha256()
    kept: bytearray | None = bytearray() if keep_body else None
    pending = bytearray()
    size = 0
    while chunk := await part.read_chunk(CHUNK_SIZE):
        size += len(chunk)
        digest.update(chunk)
        if kept is not None:
            kept += chunk
            if len(kept) > MAX_KEPT_BODY:
                kept = None
        pending += chunk
        if len(pending) >= THREAD_BATCH:
            await asyncio.to_thread(parser.feed, bytes(pending))
            pending.clear()
    if len(pending) > CHUNK_SIZE:
        await asyncio.to_thread(parser.feed, bytes(pending))
    else:
        parser.feed(bytes(pending))
    parser.close()
    return Upload(
        filename=part.filename,
        sha256=digest.hexdigest(),
        bytes=size,
        records_count=parser.records_count,
        failed_count=parser.failed_count,
        failed_records=parser.failed_records,
        body=bytes(kept) if kept is not None else None,
        content_type=part.headers.get(hdrs.CONTENT_TYPE, ""),
    )


def _parse_metadata(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_METADATA:
        raise UploadError(400, "The metaData field is too large")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise UploadError(400, "The metaData field is not valid JSON") from None
    if not isinstance(value, dict):
        raise UploadError(400, "The metaData field must be a JSON object")
    return value


async def drain(request: web.Request) -> None:
    """Read and discard whatever is left of the request body."""
    while await request.content.readany():
        pass


async def read_some(request: web.Request, limit: int) -> None:
    """Read up to about `limit` bytes of the body (a dropped upload got this far)."""
    seen = 0
    while seen < limit and (chunk := await request.content.readany()):
        seen += len(chunk)
