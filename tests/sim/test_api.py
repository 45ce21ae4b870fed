"""The simulator's bulk API over real HTTP on 127.0.0.1: auth, jobs from upload to their
end, failed records paged, the callback when a job ends."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from daemon.sim import SimServer, Simulator
from tests.sim.helpers import (
    AUTH,
    SAMPLE_CSV,
    assert_error_body,
    get_json,
    status_until_terminal,
    to_csv,
    upload,
)

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
    assert final["recordsCount"] == 10
    assert final.get("recordsFailedCount") == (None if ending == "ERROR" else 0)
    if ending == "ERROR":
        assert final["message"] and final["error"]
    if ending == "ABORTED":  # its reason in "error" only, as on record
        assert final["error"] and "message" not in final


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
