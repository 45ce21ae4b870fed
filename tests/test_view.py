"""The web view and its JSON API over real HTTP: what / and /api/* say of files run
through the simulator, one file's page and its downloads, paths that must never reach
the file system, and the actions: absent unless turned on, then only with the page's
CSRF token."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon import ops
from daemon.sim import SimServer
from tests.helpers import contacts_csv, drop, free_port, wait_for
from tests.procs import DaemonProc, daemons, write_config

Fetch = tuple[int, str]


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str, dict[str, str]]:
    async with http.get(url, allow_redirects=False) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def files_ready(make_settings, run_daemon, spool_root: Path,
                      **overrides: Any) -> tuple[str, Any]:
    """A daemon with its listener, and four files finished: clean, partial, all failed,
    rejected."""
    port = free_port()
    daemon = await run_daemon(make_settings(http__listen=f"127.0.0.1:{port}", **overrides))
    drop(spool_root, "contact/clean.csv", contacts_csv(3, tag="c"))
    drop(spool_root, "contact/partial.csv", contacts_csv(4, tag="p", bad_every=2))
    drop(spool_root, "contact/bad.csv", "email,first_name\nnope,A\nnever,B\n")
    drop(spool_root, "contact/sheet.xlsx", b"not a csv")
    # counted once the ledger says finished (a moment after the result is in place)
    await wait_for(lambda: sum(daemon.filer.counts.values()) == 4, what="4 files filed")
    return f"http://127.0.0.1:{port}", daemon


async def claim_of(http: aiohttp.ClientSession, base: str, name: str) -> str:
    async with http.get(f"{base}/api/files?limit=500") as resp:
        files = (await resp.json())["files"]
    (claim_id,) = [f["claim_id"] for f in files if f["file"] == name]
    return str(claim_id)


async def test_the_json_api_counts_pages_and_filters(make_settings, run_daemon,
                                                     sim: SimServer, spool_root: Path) -> None:
    base, daemon = await files_ready(make_settings, run_daemon, spool_root)
    await wait_for(lambda: daemon.inbox[0] == 0, what="a rescan of the empty inbox")
    async with aiohttp.ClientSession() as http:
        for _ in range(100):  # the API is asked once someone watches
            async with http.get(base + "/api/status") as resp:
                assert resp.status == 200
                status = await resp.json()
            if status["instances"] == {"default": "ready"}:
                break
            await asyncio.sleep(0.1)
        assert status["today"] == {"COMPLETE": 1, "partial": 1, "FAILED": 1, "REJECTED": 1}
        assert status["instances"] == {"default": "ready"} and status["ready"]
        assert sum(m["files"] for m in status["per_minute"]) == 4
        assert sum(m["records_failed"] for m in status["per_minute"]) == 2 + 2
        assert len(status["per_minute"]) == 60
        assert status["inbox"]["waiting"] == 0 and status["uploads_in_flight"] == 0
        async with http.get(base + "/api/files?limit=3") as resp:
            first = await resp.json()
        assert len(first["files"]) == 3 and first["next"]
        async with http.get(base + "/api/files", params={"before": first["next"]}) as resp:
            rest = await resp.json()
        assert len(rest["files"]) == 1 and rest["next"] is None
        names = [f["file"] for f in first["files"] + rest["files"]]
        assert sorted(names) == ["contact/bad.csv", "contact/clean.csv", "contact/partial.csv",
                                 "contact/sheet.xlsx"]
        stamps = [f["finished_at"] for f in first["files"] + rest["files"]]
        assert stamps == sorted(stamps, reverse=True), "newest first"
        async with http.get(base + "/api/files?status=COMPLETE") as resp:
            complete = (await resp.json())["files"]
        assert {f["file"]: f["partial"] for f in complete} == {
            "contact/clean.csv": False, "contact/partial.csv": True}
        partial = next(f for f in complete if f["partial"])
        assert partial["records"] == {"total": 4, "failed": 2}
        assert partial["instance"] == "default" and partial["object"] == "contact"
        for query in ("status=DONE", "before=yesterday", "limit=-1", "before=x|..%2F",
                      "limit=0", "limit=501", "limit=99999999999999999999"):
            async with http.get(f"{base}/api/files?{query}") as resp:
                assert resp.status == 400, query
        async with http.get(base + "/api/files?object=account") as resp:
            assert (await resp.json())["files"] == []
        async with http.get(base + "/api/files?status=REJECTED&object=contact") as resp:
            (rejected,) = (await resp.json())["files"]
        assert rejected["file"] == "contact/sheet.xlsx" and rejected["object"] == "contact"
        async with http.get(base + "/api/files?status=partial") as resp:
            assert [f["file"] for f in (await resp.json())["files"]] == ["contact/partial.csv"]
    # bulkdrop status counts the same, the partial one among the COMPLETE
    shown = ops.format_status(await asyncio.to_thread(ops.status, daemon.settings))
    assert "COMPLETE 2, FAILED 1, REJECTED 1" in shown
    assert "of the COMPLETE, 1 with some records failed" in shown


async def test_the_page_and_a_files_story(make_settings, run_daemon, sim: SimServer,
                                          spool_root: Path) -> None:
    base, _daemon = await files_ready(make_settings, run_daemon, spool_root)
    async with aiohttp.ClientSession() as http:
        code, page, headers = await get(http, base + "/")
        assert code == 200 and headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        for text in ("contact/partial.csv", "contact/sheet.xlsx", 'id="today-complete">1<',
                     'id="today-partial">1<', "<b>default</b>"):
            assert text in page, text
        claim_id = await claim_of(http, base, "contact/partial.csv")
        code, story, _ = await get(http, f"{base}/files/{claim_id}")
        assert code == 200
        assert "Errors (2)" in story and "Invalid email address" in story
        assert f'href="/files/{claim_id}/errors.csv"' in story
        assert f'href="/files/{claim_id}/failed.csv"' in story
        assert "<form" not in story, "no actions unless turned on"
        code, errors_csv, headers = await get(http, f"{base}/files/{claim_id}/errors.csv")
        assert code == 200 and "Invalid email address" in errors_csv
        assert headers["Content-Disposition"] == 'attachment; filename="partial.csv.errors.csv"'
        async with http.get(f"{base}/files/{claim_id}/failed.csv") as resp:
            failed_csv = await resp.read()
        done = spool_root / "done" / "contact"
        assert failed_csv == (done / "partial.csv.failed.csv").read_bytes()
        clean = await claim_of(http, base, "contact/clean.csv")
        assert (await get(http, f"{base}/files/{clean}/errors.csv"))[0] == 404
        assert (await get(http, f"{base}/files/{'0' * 20}"))[0] == 404
        for static in ("/static/view.css", "/static/view.js"):
            assert (await get(http, base + static))[0] == 200
        # A JSON file's failed objects are its failed.jsonl.
        drop(spool_root, "contact/people.jsonl",
             '{"email": "a@example.com"}\n{"email": "nope"}\n')
        await wait_for(lambda: sum(_daemon.filer.counts.values()) == 5, what="the JSON file")
        claim_id = await claim_of(http, base, "contact/people.jsonl")
        story = (await get(http, f"{base}/files/{claim_id}"))[1]
        assert f'href="/files/{claim_id}/failed.jsonl"' in story
        assert "JSON lines, 2 objects, sent as dropped" in story
        assert f'href="/files/{claim_id}/failed.csv"' not in story
        assert (await get(http, f"{base}/files/{claim_id}/failed.csv"))[0] == 404
        code, failed, headers = await get(http, f"{base}/files/{claim_id}/failed.jsonl")
        assert code == 200 and headers["Content-Type"].startswith("application/x-ndjson")
        assert failed == (done / "people.jsonl.failed.jsonl").read_text()
        assert json.loads(failed)["_bulkdrop_error"] == "Invalid email address 'nope'"


@pytest.mark.parametrize("path", [
    "/files/..%2F..%2Fetc%2Fpasswd", "/files/../../etc/passwd", "/files/%2Fetc%2Fpasswd",
    "/files/{id}/..%2F..%2F..%2Fetc%2Fpasswd", "/files/{id}%2F..%2Ferrors.csv",
    "/files/{id}/errors.csv%00", "/static/..%2Fview.py", "/static/%2E%2E/__init__.py",
    "/files//etc/passwd", "/files/{id}/result.json", "/static/view.py",
])
async def test_no_path_from_a_request_reaches_the_file_system(
        make_settings, run_daemon, sim: SimServer, spool_root: Path, path: str) -> None:
    base, _daemon = await files_ready(make_settings, run_daemon, spool_root)
    async with aiohttp.ClientSession() as http:
        claim_id = await claim_of(http, base, "contact/partial.csv")
        async with http.get(base + path.replace("{id}", claim_id),
                            allow_redirects=False) as resp:
            text = await resp.text()
    assert resp.status in (400, 404), (resp.status, text[:200])
    assert "root:" not in text and "import" not in text


async def test_a_sidecar_swapped_for_a_link_is_not_served(make_settings, run_daemon,
                                                          sim: SimServer,
                                                          spool_root: Path) -> None:
    base, _daemon = await files_ready(make_settings, run_daemon, spool_root)
    errors = spool_root / "done" / "contact" / "partial.csv.errors.csv"
    errors.unlink()
    errors.symlink_to("/etc/passwd")
    async with aiohttp.ClientSession() as http:
        claim_id = await claim_of(http, base, "contact/partial.csv")
        code, text, _ = await get(http, f"{base}/files/{claim_id}/errors.csv")
        assert code == 404 and "root:" not in text
        assert f"/files/{claim_id}/errors.csv" not in (await get(
            http, f"{base}/files/{claim_id}"))[1]


async def test_without_actions_nothing_changes_state(make_settings, run_daemon,
                                                     sim: SimServer, spool_root: Path) -> None:
    base, _daemon = await files_ready(make_settings, run_daemon, spool_root)
    async with aiohttp.ClientSession() as http:
        claim_id = await claim_of(http, base, "contact/bad.csv")
        for action in ("retry", "failed-rows"):
            async with http.post(f"{base}/files/{claim_id}/{action}",
                                 data={"csrf": "x"}, allow_redirects=False) as resp:
                assert resp.status in (404, 405)
    assert (spool_root / "failed" / "contact" / "bad.csv").exists()


async def test_actions_need_the_pages_own_token(make_settings, run_daemon, sim: SimServer,
                                                spool_root: Path) -> None:
    base, daemon = await files_ready(make_settings, run_daemon, spool_root,
                                     http__actions=True)
    failed = spool_root / "failed" / "contact" / "bad.csv"
    async with aiohttp.ClientSession() as http:
        bad = await claim_of(http, base, "contact/bad.csv")
        clean = await claim_of(http, base, "contact/clean.csv")
        _, story, _ = await get(http, f"{base}/files/{bad}")
        tokens = dict(re.findall(r'action="/files/[0-9a-f]+/([a-z-]+)">'
                                 r'<input type="hidden" name="csrf" value="([^"]+)"', story))
        assert set(tokens) == {"retry", "failed-rows"}
        assert "retry" not in (await get(http, f"{base}/files/{clean}"))[1].split("<main>")[1]
        other = dict(re.findall(r'action="/files/[0-9a-f]+/([a-z-]+)">'
                                r'<input type="hidden" name="csrf" value="([^"]+)"',
                                (await get(http, f"{base}/files/"
                                           f"{await claim_of(http, base, 'contact/partial.csv')}")
                                 )[1]))
        issued = tokens["retry"].split(".")[0]
        for token in (None, "", "123.abc", f"{issued}.{'0' * 64}", tokens["failed-rows"],
                      other.get("failed-rows", "x")):
            data = {} if token is None else {"csrf": token}
            async with http.post(f"{base}/files/{bad}/retry", data=data,
                                 allow_redirects=False) as resp:
                assert resp.status == 403, token
        assert failed.exists()
        async with http.post(f"{base}/files/{clean}/retry", data={"csrf": tokens["retry"]},
                             allow_redirects=False) as resp:
            assert resp.status == 403, "a token is for one file and one action"
        async with http.post(f"{base}/files/{bad}/retry", data={"csrf": tokens["retry"]},
                             headers={"Origin": "http://evil.example"},
                             allow_redirects=False) as resp:
            assert resp.status == 403, "a form posted from another site"
        async with http.post(f"{base}/files/{bad}/retry", data={"csrf": tokens["retry"]},
                             headers={"Origin": base}, allow_redirects=False) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == f"/files/{bad}?done=retry"
        async with http.post(f"{base}/files/{bad}/retry", data={"csrf": tokens["retry"]},
                             allow_redirects=False) as resp:
            assert resp.status == 403, "a token works once"
    # Back in inbox/, claimed again as a new file, and filed again (it fails again).
    await wait_for(lambda: daemon.filer.counts["FAILED"] == 2,
                   what="the retried file filed again")
    assert failed.exists()
    async with aiohttp.ClientSession() as http:
        # The old claim's page: the file now in its place is the new claim's, not its own.
        _, story, _ = await get(http, f"{base}/files/{bad}")
        assert "<form" not in story and "errors.csv</a>" not in story


async def test_the_view_answers_to_its_own_names_only(make_settings, run_daemon,
                                                      sim: SimServer, spool_root: Path) -> None:
    """A page of another site reaching the port through DNS rebinding gets nothing."""
    port = free_port()
    await run_daemon(make_settings(http__listen=f"127.0.0.1:{port}",
                                   http__view_hosts="ops-box, bulkdrop.example.com"))
    async with aiohttp.ClientSession() as http:
        for host, code in (("evil.example", 421), (f"evil.example:{port}", 421),
                           (f"localhost:{port}", 200), ("127.0.0.1", 200),
                           ("ops-box:8470", 200), ("BULKDROP.EXAMPLE.COM", 200)):
            for path in ("/", "/api/status"):
                async with http.get(f"http://127.0.0.1:{port}{path}",
                                    headers={"Host": host}) as resp:
                    assert resp.status == code, (host, path)
        async with http.get(f"http://127.0.0.1:{port}/healthz",
                            headers={"Host": "10.1.2.3:8470"}) as resp:
            assert resp.status == 200, "probes answer to any name"
        async with http.get(f"http://127.0.0.1:{port}/api/files?limit=²") as resp:
            assert resp.status == 400


async def test_a_sidecar_below_a_linked_folder_is_not_served(make_settings, run_daemon,
                                                             sim: SimServer,
                                                             spool_root: Path) -> None:
    base, _daemon = await files_ready(make_settings, run_daemon, spool_root)
    done = spool_root / "done"
    (done / "contact").rename(done / "real")
    (done / "contact").symlink_to(done / "real")
    async with aiohttp.ClientSession() as http:
        claim_id = await claim_of(http, base, "contact/partial.csv")
        assert (await get(http, f"{base}/files/{claim_id}/errors.csv"))[0] == 404
        assert (await get(http, f"{base}/files/{claim_id}/failed.csv"))[0] == 404
        _, story, _ = await get(http, f"{base}/files/{claim_id}")
        assert "errors.csv</a>" not in story
        assert "Invalid email address" in story, "its errors come from the ledger"


async def test_a_malformed_request_leaves_one_json_line_in_the_log(sim: SimServer,
                                                                   tmp_path: Path) -> None:
    """aiohttp's own complaint about a request line too long is a log line like any other,
    not a traceback over many lines."""
    port = free_port()
    config = write_config(tmp_path / "c.toml", sim.base_url, tmp_path / "spool",
                          http={"listen": f"127.0.0.1:{port}"})
    async with daemons() as started:
        daemon = await DaemonProc(config, tmp_path / "d.log").start()
        started.append(daemon)
        async with aiohttp.ClientSession() as http:
            await wait_for_answer(http, f"http://127.0.0.1:{port}/healthz")
            async with http.get(f"http://127.0.0.1:{port}/files/{'a' * 20000}") as resp:
                assert resp.status in (400, 404, 414, 431)
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    lines = (tmp_path / "d.log").read_text().splitlines()
    assert lines and all(json.loads(line) for line in lines), "every line is one JSON object"


async def wait_for_answer(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(200):
        try:
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not answer")
