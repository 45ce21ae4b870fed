"""The Open Connectors simulator, exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import hashlib
import hmac
import io
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from daemon.sim import SimConfig, SimServer, Simulator, create_app
from daemon.sim import cli as sim_cli
from daemon.sim.records import RecordParser

REPO_ROOT = Path(__file__).resolve().parents[1]
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


@pytest.fixture
def sim() -> Simulator:
    return Simulator(SimConfig(job_seconds=0.1, seed=7))


@pytest.fixture
async def server(sim: Simulator) -> AsyncIterator[SimServer]:
    async with SimServer(sim, host="127.0.0.1", port=0) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


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


# -- auth ---------------------------------------------------------------------------------


async def test_auth_rejects_missing_parts_with_error_body(
    server: SimServer, http: aiohttp.ClientSession
) -> None:
    url = f"{server.base_url}/hubs/marketing/objects"
    for headers in ({}, {"Authorization": "Element , User "}, {"Authorization": "User abc"}):
        async with http.get(url, headers=headers) as response:
            assert response.status == 401
            assert_error_body(await response.json())
    async with http.get(url, headers={"Authorization": "Element tok, User sec"}) as response:
        assert response.status == 200
        assert await response.json() == ["activities", "contact", "campaign", "list", "account"]


async def test_auth_configured_secrets_and_broken_auth(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    url = f"{server.base_url}/hubs/marketing/objects"
    sim.config.user_secret = "u-secret"
    sim.config.element_token = "e-token"
    wrong = {"Authorization": "User nope-secret, Element e-token"}
    async with http.get(url, headers=wrong) as response:
        assert response.status == 401
        text = await response.text()
        assert "nope-secret" not in text and "u-secret" not in text
    status, _, _ = await get_json(http, url)
    assert status == 200
    sim.config.auth_broken = True
    status, body, _ = await get_json(http, url)
    assert status == 401
    assert_error_body(body)
    sim.config.auth_broken = False
    status, _, _ = await get_json(http, url)
    assert status == 200


# -- jobs ---------------------------------------------------------------------------------


async def test_sample_file_runs_to_completed(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.config.job_seconds = 0.45  # long enough to see every phase
    status, body, _ = await upload(http, server)
    assert status == 200
    assert body == {"id": "1001", "status": "CREATED"}
    seen, final = await status_until_terminal(http, server, body["id"])
    assert seen == ["CREATED", "RUNNING", "COMPLETED"]
    assert final["recordsCount"] == 10
    assert final["recordsFailedCount"] == 0
    assert final["object_name"] == "contact"
    assert final["bulk_start_time"] and final["bulk_finish_time"]
    job = sim.jobs["1001"]
    assert job.name == "/sample.csv" and job.filename == "sample.csv"
    assert job.body == SAMPLE_CSV and job.bytes == len(SAMPLE_CSV)
    assert sim.jobs_by_sha256 == {hashlib.sha256(SAMPLE_CSV).hexdigest(): ["1001"]}
    status, errors, response = await get_json(
        http, f"{server.base_url}/hubs/marketing/bulk/1001/errors"
    )
    assert (status, errors) == (200, [])
    assert response.headers["Elements-Returned-Count"] == "0"
    assert sim.unfinished_jobs == 0 and sim.max_unfinished_jobs == 1


@pytest.mark.parametrize("word", ["COMPLETE", "Completed"])
async def test_complete_word_is_configurable(
    word: str, sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.config.complete_word = word
    _, body, _ = await upload(http, server)
    _, final = await status_until_terminal(http, server, body["id"])
    assert final["status"] == word


async def test_chunked_upload_of_unknown_length(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    rows = [["Email", "Name"]] + [[f"p{i}@example.com", f"Person {i}"] for i in range(20_000)]
    content = to_csv(rows)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(content), 10_007):
            yield content[start : start + 10_007]

    status, body, _ = await upload(http, server, chunks())
    assert status == 200
    job = sim.jobs[body["id"]]
    assert job.bytes == len(content)
    assert job.sha256 == hashlib.sha256(content).hexdigest()
    assert job.records_count == 20_000


async def test_failed_records_are_paged_with_tokens(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    rows = [["Id", "Work Email", "Note"]]
    bad = set()
    for i in range(1, 13):
        email = f"user{i}.example.com" if i % 2 else f"user{i}@example.com"
        if i % 2:
            bad.add(i)
        rows.append([str(i), email, 'multi\nline, "quoted"' if i == 3 else "ok"])
    content = b"\xef\xbb\xbf" + to_csv(rows[:5]) + b"\r\n" + to_csv(rows[5:])
    _, body, _ = await upload(http, server, content)
    _, final = await status_until_terminal(http, server, body["id"])
    assert final["status"] == "COMPLETED"
    assert (final["recordsCount"], final["recordsFailedCount"]) == (12, 6)

    url = f"{server.base_url}/hubs/marketing/bulk/{body['id']}/errors"
    collected: list[dict[str, Any]] = []
    params = {"pageSize": "4"}
    pages = 0
    while True:
        status, page, response = await get_json(http, url, **params)
        assert status == 200
        pages += 1
        assert response.headers["Elements-Returned-Count"] == str(len(page))
        collected += page
        token = response.headers.get("Elements-Next-Page-Token")
        if token is None:
            break
        params = {"pageSize": "4", "nextPage": token}
    assert pages == 2
    assert {record["recordNumber"] for record in collected} == bad
    third = next(record for record in collected if record["recordNumber"] == 3)
    assert third["message"] == "Invalid email address 'user3.example.com'"
    assert third["record"] == {
        "Id": "3",
        "Work Email": "user3.example.com",
        "Note": 'multi\nline, "quoted"',
    }

    for token in ("garbage!", base64.urlsafe_b64encode(b"999:0").decode()):
        status, problem, _ = await get_json(http, url, nextPage=token)
        assert status == 400
        assert_error_body(problem)


async def test_rejected_uploads_make_no_job(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await upload(http, server, obj="opportunity")
    assert status == 404
    assert body["message"].startswith("No resource found for object 'opportunity'")
    status, body, _ = await upload(http, server, metadata="{not json")
    assert status == 400 and "metaData" in body["message"]
    status, body, _ = await upload(http, server, metadata="[1]")
    assert status == 400
    data = aiohttp.FormData(default_to_multipart=True)
    data.add_field("other", "x")
    async with http.post(
        f"{server.base_url}/hubs/marketing/bulk/contact", data=data, headers=AUTH
    ) as response:
        assert response.status == 400
        assert "'file'" in (await response.json())["message"]
    async with http.post(
        f"{server.base_url}/hubs/marketing/bulk/contact", data=b"a,b\n", headers=AUTH
    ) as response:
        assert response.status == 415
    status, body, _ = await get_json(http, f"{server.base_url}/hubs/marketing/bulk/42/status")
    assert status == 404
    assert_error_body(body)
    status, body, _ = await get_json(http, f"{server.base_url}/no/such/route")
    assert status == 404
    assert_error_body(body)
    assert sim.jobs == {} and sim.creates_attempted == 5


async def test_metadata_and_callback_header_are_kept(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    _, body, _ = await upload(http, server, metadata='{"action": "upsert"}')
    assert sim.jobs[body["id"]].metadata == {"action": "upsert"}


@pytest.mark.parametrize(
    ("name", "outcome", "ending"),
    [
        ("a-sim-error.csv", None, "ERROR"),
        ("sim-aborted.csv", None, "ABORTED"),
        ("b.sim-cancelled.csv", None, "CANCELLED"),
        ("plain.csv", "ERROR", "ERROR"),
    ],
)
async def test_bad_endings(
    name: str,
    outcome: Any,
    ending: str,
    sim: Simulator,
    server: SimServer,
    http: aiohttp.ClientSession,
) -> None:
    sim.config.job_outcome = outcome
    _, body, _ = await upload(http, server, name=name)
    _, final = await status_until_terminal(http, server, body["id"])
    assert final["status"] == ending
    assert final["recordsCount"] == 10 and final["recordsFailedCount"] == 0
    if ending in ("ERROR", "ABORTED"):
        assert final["message"] and final["error"]


async def test_never_ending_job_can_be_cancelled(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    _, body, _ = await upload(http, server, name="slow-sim-never.csv")
    url = f"{server.base_url}/hubs/marketing/bulk/{body['id']}"
    await asyncio.sleep(sim.config.job_seconds * 1.5)
    _, status_body, _ = await get_json(http, f"{url}/status")
    assert status_body["status"] == "RUNNING"
    assert sim.unfinished_jobs == 1
    async with http.put(f"{url}/cancel", headers=AUTH) as response:
        assert response.status == 200
        assert (await response.json())["status"] == "CANCELLED"
    _, status_body, _ = await get_json(http, f"{url}/status")
    assert status_body["status"] == "CANCELLED"
    assert status_body["bulk_finish_time"]
    assert sim.unfinished_jobs == 0


async def test_job_list_is_newest_first_with_numeric_ids(
    server: SimServer, http: aiohttp.ClientSession
) -> None:
    for name in ("a.csv", "b.csv", "c.csv"):
        await upload(http, server, name=name)
    status, jobs, _ = await get_json(http, f"{server.base_url}/hubs/marketing/bulk/jobs")
    assert status == 200
    assert [job["id"] for job in jobs] == [1003, 1002, 1001]
    _, jobs, _ = await get_json(http, f"{server.base_url}/bulk/jobs", pageSize="1")
    assert [job["id"] for job in jobs] == [1003]


# -- faults -------------------------------------------------------------------------------


async def test_rate_limit_with_both_retry_after_forms(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.config.rate_limit_rate = 1.0
    sim.config.retry_after_rate = 1.0
    sim.config.retry_after_seconds = 2
    seen = []
    for _ in range(2):
        status, body, response = await upload(http, server)
        assert status == 429
        assert_error_body(body)
        seen.append(response.headers["Retry-After"])
    assert seen[0] == "2"
    wait = parsedate_to_datetime(seen[1]).timestamp() - time.time()
    assert 1 <= wait <= 4
    assert sim.jobs == {} and sim.creates_attempted == 2
    assert sim.responses[429] == 2
    assert sim.requests[("POST", "bulk_create")] == 2


async def test_error_rate_answers_5xx(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.config.error_rate = 1.0
    for _ in range(5):
        status, body, _ = await upload(http, server)
        assert status in (500, 502, 503)
        assert_error_body(body)
    assert sim.jobs == {}
    sim.config.error_rate = 0.0
    status, _, _ = await upload(http, server)
    assert status == 200


@pytest.mark.parametrize("size", [100, 2_000_000])
async def test_dropped_connection_makes_no_job(
    size: int, sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.config.drop_rate = 1.0
    content = to_csv([["Email"]] + [["x@y.z"]] * (size // 7))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(content), 65536):
            yield content[start : start + 65536]

    with pytest.raises(aiohttp.ClientConnectionError):
        await upload(http, server, chunks())
    assert sim.jobs == {} and sim.faults["drop"] == 1
    sim.config.drop_rate = 0.0
    status, _, _ = await upload(http, server)
    assert status == 200


async def test_scripted_create_faults_come_in_order(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    """503/429/drop make no job; lost/504 make the job and hide it; then all is well."""
    sim.config.create_faults = ["503", "429", "drop", "lost", "504"]
    sim.config.retry_after_seconds = 7
    for code in (503, 429):
        status, body, response = await upload(http, server)
        assert status == code and response.headers["Retry-After"] == "7"
    assert sim.jobs == {}
    with pytest.raises(aiohttp.ClientConnectionError):
        await upload(http, server)
    assert sim.jobs == {}
    with pytest.raises(aiohttp.ClientConnectionError):
        await upload(http, server)
    assert list(sim.jobs) == ["1001"], "the job was made, its answer lost"
    status, body, _ = await upload(http, server)
    assert status == 504 and list(sim.jobs) == ["1001", "1002"]
    status, body, _ = await upload(http, server)
    assert status == 200 and body["id"] == "1003" and sim.config.create_faults == []
    assert {k: v for k, v in sim.faults.items() if k.startswith("scripted")} == {
        f"scripted {f}": 1 for f in ("503", "429", "drop", "lost", "504")}


async def test_create_delay_answers_after_the_job_is_made(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.config.create_delay_seconds = 0.5
    started = time.monotonic()
    answer = asyncio.create_task(upload(http, server))
    await wait_for(lambda: _async(bool(sim.jobs)))
    assert not answer.done(), "the job exists before the answer"
    status, body, _ = await answer
    assert status == 200 and time.monotonic() - started >= 0.5


async def _async(value: Any) -> Any:
    return value


async def test_client_vanishing_mid_upload_makes_no_job(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sent = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        yield b"Email\r\n"
        while True:
            yield b"a@b.c\r\n" * 1000
            sent.set()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(upload(http, server, endless()))
    await asyncio.wait_for(sent.wait(), timeout=5)
    await wait_for(lambda: _true(sim.uploads_in_flight == 1))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: _true(sim.client_disconnects == 1))
    assert sim.uploads_in_flight == 0 and sim.jobs == {}


async def _true(value: bool) -> bool:
    return value


async def test_concurrency_counters(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.config.latency_seconds = 0.1
    results = await asyncio.gather(*(upload(http, server, name=f"{i}.csv") for i in range(3)))
    assert [status for status, _, _ in results] == [200, 200, 200]
    assert sim.max_concurrent_uploads == 3 and sim.uploads_in_flight == 0
    assert sim.max_unfinished_jobs == 3
    sim.reset_counters()
    assert sim.max_concurrent_uploads == 0 and sim.max_unfinished_jobs == 3
    assert sim.creates_attempted == 0 and not sim.requests


# -- control routes -----------------------------------------------------------------------


async def test_control_state_and_patch(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.config.user_secret = "top-secret-value"
    url = f"{server.root_url}/_sim"
    async with http.patch(f"{url}/config", json={"error_rate": 0.25, "job_seconds": 2}) as resp:
        assert resp.status == 200
        assert (await resp.json())["error_rate"] == 0.25
    assert sim.config.error_rate == 0.25 and sim.config.job_seconds == 2.0
    for patch, word in (
        ({"bogus": 1}, "bogus"),
        ({"drop_rate": "x"}, "drop_rate"),
        ({"drop_rate": 2.0}, "drop_rate"),
        ({"create_faults": ["boom"]}, "create_faults"),
        ({"create_delay_seconds": -1}, "create_delay_seconds"),
        ([1], "object"),
    ):
        async with http.patch(f"{url}/config", json=patch) as resp:
            assert resp.status == 400
            assert word in (await resp.json())["message"]
    assert sim.config.drop_rate == 0.0
    async with http.get(f"{url}/state") as resp:
        text = await resp.text()
    state = json.loads(text)
    assert "top-secret-value" not in text
    assert state["config"]["user_secret_set"] is True
    assert state["config"]["error_rate"] == 0.25
    assert "requests" in state and "max_concurrent_uploads" in state


# -- callbacks ----------------------------------------------------------------------------


async def test_callback_is_posted_with_signature(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.config.signature_key = "sig-key"
    received: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        signature = request.headers.get("Elements-Webhook-Signature", "")
        await received.put((await request.read(), signature))
        return web.Response()

    app = web.Application()
    app.router.add_post("/callbacks/bulk", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port = runner.addresses[0][1]
        headers = {"Elements-Async-Callback-Url": f"http://127.0.0.1:{port}/callbacks/bulk"}
        _, body, _ = await upload(
            http, server, metadata='{"callback-payload": {"k": 1}}', headers=headers
        )
        raw, signature = await asyncio.wait_for(received.get(), timeout=5)
    finally:
        await runner.cleanup()
    expected = base64.b64encode(hmac.new(b"sig-key", raw, hashlib.sha256).digest()).decode()
    assert signature == f"sha256={expected}"
    payload = json.loads(raw)
    assert payload["id"] == body["id"] and payload["status"] == "COMPLETED"
    assert payload["recordsCount"] == 10 and payload["recordsFailedCount"] == 0
    assert payload["object_name"] == "contact" and payload["callback-payload"] == {"k": 1}
    assert sim.callbacks_sent == 1


async def test_create_app_serves_without_simserver(http: aiohttp.ClientSession) -> None:
    runner = web.AppRunner(create_app(Simulator()))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/elements/api-v2/hubs/crm/objects"
        status, _, _ = await get_json(http, url)
        assert status == 200
    finally:
        await runner.cleanup()


# -- records parser -----------------------------------------------------------------------


def test_record_parser_handles_any_chunking() -> None:
    content = ('\ufeffEMAIL,name\r\nbad,"a\r\nb"\r\n\r\nok@x,"c "" d"\r\n"no-at",e').encode()
    for step in (1, 2, 3, 7, len(content)):
        parser = RecordParser(check_emails=True)
        for start in range(0, len(content), step):
            parser.feed(content[start : start + step])
        parser.close()
        assert (parser.records_count, parser.failed_count) == (3, 2)
        assert [r["recordNumber"] for r in parser.failed_records] == [1, 3]
        assert parser.failed_records[0]["record"] == {"EMAIL": "bad", "name": "a\r\nb"}


def test_record_parser_survives_garbage() -> None:
    parser = RecordParser(check_emails=True)
    parser.feed(b'\xff\xfeemail\n"unterminated\nx\x00y\n')
    parser.close()
    assert parser.records_count == 1


# -- command line -------------------------------------------------------------------------


def test_cli_arguments_build_config() -> None:
    parser = argparse.ArgumentParser()
    sim_cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--job-seconds",
            "0.5",
            "--error-rate",
            "0.1",
            "--seed",
            "3",
            "--complete-word",
            "COMPLETE",
            "--objects",
            "contact, lead",
        ]
    )
    assert (args.host, args.port) == ("127.0.0.1", 8471)
    config = sim_cli.config_from_args(args)
    assert config.job_seconds == 0.5 and config.error_rate == 0.1 and config.seed == 3
    assert config.complete_word == "COMPLETE" and config.objects == ["contact", "lead"]


async def test_cli_serves_until_sigterm(http: aiohttp.ClientSession) -> None:
    code = (
        "import argparse, sys; from daemon.sim import cli; p = argparse.ArgumentParser(); "
        "cli.add_arguments(p); sys.exit(cli.run(p.parse_args(sys.argv[1:])))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=20)).decode()
        assert line.startswith("Open Connectors simulator at http://127.0.0.1:")
        base_url = line.split(" at ", 1)[1].strip()
        status, _, _ = await get_json(http, f"{base_url}/hubs/marketing/objects")
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
