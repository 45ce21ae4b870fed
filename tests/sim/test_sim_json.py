"""JSON-lines uploads to the simulator over real HTTP on 127.0.0.1: chosen by the file
part's Content-Type or name, counted and failed as CSV uploads are."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from daemon.sim import SimServer, Simulator
from daemon.sim.records import JsonLinesParser
from tests.sim.helpers import (
    AUTH,
    get_json,
    status_until_terminal,
    to_csv,
    upload,
)

CONTACTS = [
    {"Email": "ann@example.com", "name": "Ann"},
    {"Email": "bob.example.com", "name": "Bob", "tags": ["a", {"b": 1}]},
    {"id": 3, "work_EMAIL": "   ", "home email": None},
    {"id": 4, "workEmail": "carol-at-example", "address": {"email": "nested, not checked"}},
    {"id": 5, "email": 42, "name": "Dan"},
]
CONTACTS_JSONL = "".join(json.dumps(c) + "\n" for c in CONTACTS).encode()


@pytest.fixture(autouse=True)
def quick_jobs(sim: Simulator) -> None:
    sim.config.job_seconds = 0.02


async def upload_file(
    http: aiohttp.ClientSession,
    server: SimServer,
    content: bytes | AsyncIterator[bytes],
    filename: str,
    content_type: str,
    metadata: str | None = None,
) -> str:
    data = aiohttp.FormData()
    if metadata is not None:
        data.add_field("metaData", metadata, content_type="application/json")
    data.add_field("file", content, filename=filename, content_type=content_type)
    async with http.post(
        f"{server.base_url}/hubs/marketing/bulk/contact",
        params={"path": f"/{filename}"},
        data=data,
        headers=AUTH,
    ) as response:
        assert response.status == 200
        job_id: str = (await response.json())["id"]
        return job_id


async def outcome(
    http: aiohttp.ClientSession, server: SimServer, job_id: str
) -> tuple[int, int, list[dict[str, Any]]]:
    """The job followed to its end: records, failed records and the failed ones listed."""
    _, final = await status_until_terminal(http, server, job_id)
    assert final["status"] == "COMPLETED"
    status, errors, _ = await get_json(
        http, f"{server.base_url}/hubs/marketing/bulk/{job_id}/errors", pageSize="1000"
    )
    assert status == 200
    return final["recordsCount"], final["recordsFailedCount"], errors


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [
        ("contacts.txt", "application/json"),
        ("contacts", "Application/JSON; charset=utf-8"),
        ("contacts.json", "application/octet-stream"),
        ("contacts.JSONL", "text/plain"),
        ("contacts.NdJson", "text/csv"),
    ],
)
async def test_json_lines_fail_bad_emails(
    filename: str, content_type: str, server: SimServer, http: aiohttp.ClientSession
) -> None:
    job_id = await upload_file(http, server, CONTACTS_JSONL, filename, content_type)
    records, failed, errors = await outcome(http, server, job_id)
    assert (records, failed) == (5, 2)
    assert errors == [
        {
            "recordNumber": 2,
            "message": "Invalid email address 'bob.example.com'",
            "record": CONTACTS[1],
        },
        {
            "recordNumber": 4,
            "message": "Invalid email address 'carol-at-example'",
            "record": CONTACTS[3],
        },
    ]


async def test_json_chosen_by_metadata_sent_first(
    server: SimServer, http: aiohttp.ClientSession
) -> None:
    job_id = await upload_file(
        http, server, CONTACTS_JSONL, "contacts.txt", "text/plain", metadata='{"format": "json"}'
    )
    assert (await outcome(http, server, job_id))[:2] == (5, 2)


async def test_malformed_lines_fail_with_an_empty_record(
    server: SimServer, http: aiohttp.ClientSession
) -> None:
    lines = [
        '{"email": "ok@example.com"}',
        '{"email": "ok@example.com",}',
        '["not", "an", "object"]',
        '"just a string"',
        '{"email": "x@y"} trailing',
        '{"email": "nope"}',
    ]
    job_id = await upload_file(
        http, server, "\n".join(lines).encode(), "broken.jsonl", "application/json"
    )
    records, failed, errors = await outcome(http, server, job_id)
    assert (records, failed) == (6, 5)
    assert [e["recordNumber"] for e in errors] == [2, 3, 4, 5, 6]
    for error in errors[:4]:
        assert error["message"].startswith("Malformed JSON record: ")
        assert error["record"] == {}
    assert "an array" in errors[1]["message"]
    assert errors[4]["record"] == {"email": "nope"}


async def test_crlf_blank_lines_and_bom(server: SimServer, http: aiohttp.ClientSession) -> None:
    content = (
        "\ufeff"
        '{"Email": "\u00e9lodie@example.com"}\r\n'
        "\r\n"
        "   \t\r\n"
        '{"Email": "caf\u00e9"}\r\n'
        "\n"
        '{"Email": ""}'  # the last line has no newline
    ).encode()

    # Sent in pieces cut inside the BOM, a two-byte character and a CRLF.
    cuts = [0, 1, content.index("\u00e9".encode()) + 1, content.index(b"\r\n") + 1, len(content)]

    async def chunks() -> AsyncIterator[bytes]:
        for start, end in zip(cuts, cuts[1:], strict=False):
            yield content[start:end]

    job_id = await upload_file(http, server, chunks(), "crlf.ndjson", "application/x-ndjson")
    records, failed, errors = await outcome(http, server, job_id)
    assert (records, failed) == (3, 1)
    assert errors == [
        {
            "recordNumber": 2,
            "message": "Invalid email address 'caf\u00e9'",
            "record": {"Email": "caf\u00e9"},
        }
    ]


async def test_without_email_checks_lines_are_only_counted(
    sim: Simulator, server: SimServer, http: aiohttp.ClientSession
) -> None:
    sim.config.fail_invalid_emails = False
    content = CONTACTS_JSONL + b"\r\n[not json\n\n"
    job_id = await upload_file(http, server, content, "contacts.jsonl", "application/json")
    assert await outcome(http, server, job_id) == (6, 0, [])


async def test_csv_upload_unchanged(server: SimServer, http: aiohttp.ClientSession) -> None:
    _, body, _ = await upload(http, server)
    assert (await outcome(http, server, body["id"])) == (10, 0, [])
    content = to_csv([["Id", "Work Email"], ["1", "a@b"], ["2", '{"x": 1}']])
    job_id = await upload_file(http, server, content, "people.csv", "text/csv")
    records, failed, errors = await outcome(http, server, job_id)
    assert (records, failed) == (2, 1)
    assert errors == [
        {
            "recordNumber": 2,
            "message": """Invalid email address '{"x": 1}'""",
            "record": {"Id": "2", "Work Email": '{"x": 1}'},
        }
    ]


def test_json_lines_parser_handles_any_chunking() -> None:
    content = '\ufeff{"email": "b\u00e9d"}\r\n\r\n[1]\n{"e": 1}\n{"EMAIL": "ok@x"}'.encode()
    for step in range(1, len(content) + 1):
        parser = JsonLinesParser(check_emails=True)
        for start in range(0, len(content), step):
            parser.feed(content[start : start + step])
        parser.close()
        assert (parser.records_count, parser.failed_count) == (4, 2)
        assert [r["recordNumber"] for r in parser.failed_records] == [1, 2]
        assert parser.failed_records[0]["record"] == {"email": "b\u00e9d"}
