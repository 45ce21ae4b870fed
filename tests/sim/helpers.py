"""What the simulator's tests share: the sample contacts, and requests to the simulator
over HTTP (an upload, a GET of JSON, a job followed to its end) with its auth header."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from daemon.sim import SimServer

AUTH = {"Authorization": "User u-secret, Organization o-secret, Element e-token"}

# The sample contacts of reference/open-connectors-bulk-api.txt, tab-separated as printed.
SAMPLE_TSV = """\
C_EmailAddress\tC_FirstName\tC_LastName\tC_Title\tC_BusPhone\tC_Company\tC_Website1
norm.smith@acme.com\tNorm\tSmith\tDesign Engineer\t(333) 333-1234\tAcme\thttp://www.acme.com
john@acmepublishing.com\tJohn\tDoe\t\t\tAcme Publishing\thttps://www.acmepublishing.com
ann@acmedata.com\tAnn\tSmith\tDirector\t444) 444-1234\tAcme Data\thttp://www.acmedata.com
doug.smith@acmemarketing.com\tDoug\tSmith\tDirector of Marketing\t(555) 555-1234\tAcme Marketing\thttp://www.acmemarketing.com
chuck@acmefinance.com\tChuck\tTaylor\tChief Financial Officer\t(656) 656-1234\tAcme Finance\thttp://www.acmebilling.com
frank@acmebilling.com\tFrank\tRicard\t\t\tAcme Billing\thttp://www.acmeresources.com
melissa@acmeresources.com\tMelissa\tJones\tHuman Resources Manager\t(202) 222-1234\tAcme Resources\t
shooter@acmetechnology.com\tShooter\tMcGavin\tIT Technology Professional\t(303) 928-2134\tAcme Technology\thttp://acmetechnology.com
penny@acmeeducation.com\tPenny\tSmith\tDirector of Curriculum\t(868) 888-1234\tAcme Education\thttp://www.acmeeducation.com
ron.bergandy@acmecommunications.com\tRon\tBurgandy\tNew Anchor\t(227) 299-1234\tAcme Communications\thttp://www.acmecommunications.com
"""  # noqa: E501


def to_csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()


SAMPLE_CSV = to_csv([line.split("\t") for line in SAMPLE_TSV.splitlines()])

def form(
    content: bytes | AsyncIterator[bytes],
    filename: str = "sample.csv",
    metadata: str | None = None,
) -> aiohttp.FormData:
    data = aiohttp.FormData()
    if metadata is not None:
        data.add_field("metaData", metadata, content_type="application/json")
    data.add_field("file", content, filename=filename, content_type="text/csv")
    return data


async def upload(
    http: aiohttp.ClientSession,
    server: SimServer,
    content: bytes | AsyncIterator[bytes] = SAMPLE_CSV,
    name: str = "sample.csv",
    obj: str = "contact",
    headers: dict[str, str] | None = None,
    metadata: str | None = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.post(
        f"{server.base_url}/hubs/marketing/bulk/{obj}",
        params={"path": f"/{name}"},
        data=form(content, name, metadata),
        headers={**AUTH, **(headers or {})},
    ) as response:
        return response.status, await response.json(), response


async def get_json(
    http: aiohttp.ClientSession, url: str, **params: str
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.get(url, headers=AUTH, params=params) as response:
        return response.status, await response.json(), response


async def wait_for(check: Callable[[], Awaitable[Any]], within: float = 5.0) -> Any:
    """Poll `check` until it returns something truthy, failing after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s (last: {result!r})")
        await asyncio.sleep(0.02)


async def status_until_terminal(
    http: aiohttp.ClientSession, server: SimServer, job_id: str
) -> tuple[list[str], dict[str, Any]]:
    seen: list[str] = []

    async def check() -> dict[str, Any] | None:
        status, body, _ = await get_json(
            http, f"{server.base_url}/hubs/marketing/bulk/{job_id}/status"
        )
        assert status == 200
        if not seen or seen[-1] != body["status"]:
            seen.append(body["status"])
        return body if body["status"] not in ("CREATED", "RUNNING") else None

    final = await wait_for(check)
    return seen, final


def assert_error_body(body: Any) -> None:
    assert set(body) >= {"message", "requestId"}
    assert body["message"]
    assert len(body["requestId"]) == 36
