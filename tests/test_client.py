"""The API client against the simulator: long uploads, stalled uploads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from daemon.client import OpenConnectorsClient, classify
from daemon.fileref import FileRef
from daemon.normalise import stream_raw
from daemon.retry import TooLargeError, TransientError
from daemon.settings import Secret
from daemon.sim import SimServer
from tests.helpers import contacts_csv

ROWS = [b"email,name\r\n"] + [b"u%d@example.com,U\r\n" % i for i in range(8)]


def _client(sim: SimServer, timeout: float) -> OpenConnectorsClient:
    return OpenConnectorsClient(sim.base_url, user_secret=Secret("u"),
                                organization_secret=Secret(""), element_token=Secret("e"),
                                timeout_seconds=timeout)


async def test_an_upload_longer_than_the_timeout_succeeds_while_it_progresses(
        sim: SimServer) -> None:
    async def slow() -> AsyncIterator[bytes]:   # 9 chunks over about 2.7 s
        for row in ROWS:
            await asyncio.sleep(0.3)
            yield row

    client = _client(sim, timeout=1.0)
    try:
        job = await client.create_job("marketing", "contact", "slow.csv", slow)
    finally:
        await client.close()
    assert sim.sim.jobs[job.id].records_count == 8


async def test_an_upload_that_stalls_fails_as_transient(sim: SimServer) -> None:
    async def stalls() -> AsyncIterator[bytes]:
        yield ROWS[0]
        await asyncio.sleep(30)   # never resumes within the test
        yield ROWS[1]

    client = _client(sim, timeout=0.5)
    try:
        with pytest.raises(TransientError, match="no progress for 0.5 s"):
            await asyncio.wait_for(client.create_job("marketing", "contact", "stall.csv",
                                                     stalls), 20)
    finally:
        await client.close()
    assert sim.sim.jobs == {}


@pytest.fixture
async def capture() -> AsyncIterator[tuple[str, list[tuple[str, bytes]]]]:
    """A bare HTTP server on 127.0.0.1 that keeps every POST's Content-Type and raw body
    (the simulator parses an upload as it arrives and keeps none) and answers a job id."""
    seen: list[tuple[str, bytes]] = []

    async def keep(request: web.Request) -> web.Response:
        seen.append((request.headers["Content-Type"], await request.read()))
        return web.json_response({"id": str(len(seen)), "status": "CREATED"})

    app = web.Application()
    app.router.add_post("/{tail:.*}", keep)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/elements/api-v2", seen
    finally:
        await runner.cleanup()


def _unbounded(content_type: str, body: bytes) -> bytes:
    boundary = content_type.partition("boundary=")[2].strip('"')
    assert boundary and content_type.startswith("multipart/form-data")
    return body.replace(boundary.encode(), b"BOUNDARY")


async def test_an_upload_is_byte_for_byte_what_curl_sends(
        capture: tuple[str, list[tuple[str, bytes]]], tmp_path: Path) -> None:
    """The file and a metaData form field, as `curl -F file=@people.csv;type=text/csv -F
    'metaData={...}'` sends them (the API's own example, and its test suite's form
    fields: metaData a plain field, no Content-Type): small and streamed alike."""
    base, seen = capture
    path = tmp_path / "people.csv"
    path.write_text(contacts_csv(3))
    meta = {"identifierFieldName": "email", "action": "upsert"}
    client = OpenConnectorsClient(base, user_secret=Secret("u"),
                                  organization_secret=Secret(""), element_token=Secret("e"))
    try:
        await client.create_job("marketing", "contact", "people.csv", path.read_bytes(),
                                metadata=meta)
        await client.create_job("marketing", "contact", "people.csv",
                                lambda: stream_raw(FileRef(path)), metadata=meta)
    finally:
        await client.close()
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-H", "Expect:", "-F", f"file=@{path};type=text/csv",
        "-F", f"metaData={json.dumps(meta)}",
        f"{base}/hubs/marketing/bulk/contact?path=/people.csv",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    small, streamed, curl = (_unbounded(ctype, body) for ctype, body in seen)
    assert b'name="metaData"\r\n\r\n{"identifierFieldName"' in curl
    assert small == curl
    assert streamed == curl


@pytest.mark.parametrize(("message", "retry_after", "endpoint", "too_large"), [
    ("The upload is too large: the limit is 6 GB", None, "create_job", True),
    ("Request took too long (3600 seconds)", None, "create_job", True),
    ("File size too large", None, "create_job", True),
    ("File too large", "30", "create_job", False),              # Retry-After: a rate limit
    ("The upload is too large", None, "status", False),         # only an upload can be
    ("Rate limit exceeds the maximum of 300 requests per minute", None, "create_job", False),
    ("quota is 5000 per 3600s", None, "create_job", False),
    ("window size 60 s", None, "create_job", False),
    ("Maximum file uploads in progress reached", None, "create_job", False),
    ("<html><style>p {font-size: 2em}</style>Too Many Requests</html>", None, "create_job",
     False),
])
def test_a_429_is_too_large_only_when_it_says_so_of_an_upload(
        message: str, retry_after: str | None, endpoint: str, too_large: bool) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    error = classify(429, json.dumps({"message": message}).encode(), headers, endpoint)
    assert isinstance(error, TooLargeError) is too_large
    assert isinstance(error, TransientError) is not too_large
