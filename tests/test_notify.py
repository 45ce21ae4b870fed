"""Notifications of finished files, against a real aiohttp receiver on 127.0.0.1: signed,
delivered at least once (a receiver that answers 503 for a while gets each exactly as
many times as it refused plus one), resumed after a restart, and configured with errors
that name their key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from daemon import ops
from daemon.config import load_settings
from daemon.settings import ConfigError
from daemon.sim import SimServer
from tests.helpers import contacts_csv, drop, free_port, wait_for

KEY = "hook-5ecret"


class Receiver:
    """A webhook endpoint that checks signatures and answers 503 to the first *refuse*
    requests of each file."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.tries: dict[str, int] = {}
        self.refuse = 0
        self.bad_signatures = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + base64.b64encode(
            hmac.new(KEY.encode(), body, hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, request.headers.get("X-Bulkdrop-Signature", "")):
            self.bad_signatures += 1
            return web.Response(status=401)
        data = json.loads(body)
        assert data["sent_at"] == request.headers["X-Bulkdrop-Timestamp"]
        self.tries[data["file"]] = self.tries.get(data["file"], 0) + 1
        if self.tries[data["file"]] <= self.refuse:
            return web.Response(status=503, headers={"Retry-After": "0"})
        self.got.append(data)
        return web.json_response({"ok": True})


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    hooks = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hooks.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield hooks, f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


def target(url: str, **extra: Any) -> str:
    lines = ["[[notify.targets]]", 'name = "ops"', f'url = "{url}"',
             f'signature_key = "{KEY}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


async def test_each_notification_is_delivered_once_it_is_taken(
        make_settings, run_daemon, sim: SimServer, spool_root: Path,
        receiver: tuple[Receiver, str]) -> None:
    hooks, url = receiver
    hooks.refuse = 2  # each file's first two attempts get 503
    daemon = await run_daemon(make_settings(target(url)))
    drop(spool_root, "contact/bad.csv", "email,first_name\nnope,A\nnever,B\n")   # FAILED
    drop(spool_root, "contact/sheet.xlsx", b"not a csv")                          # REJECTED
    drop(spool_root, "contact/some.csv", contacts_csv(4, tag="s", bad_every=2))   # partial
    drop(spool_root, "contact/clean.csv", contacts_csv(2, tag="c"))               # COMPLETE
    await wait_for(lambda: len(hooks.got) == 3, timeout=30, what="3 notifications")
    assert {d["file"]: d["event"] for d in hooks.got} == {
        "contact/bad.csv": "FAILED", "contact/sheet.xlsx": "REJECTED",
        "contact/some.csv": "partial"}
    assert hooks.tries == {"contact/bad.csv": 3, "contact/sheet.xlsx": 3, "contact/some.csv": 3}
    assert hooks.bad_signatures == 0
    bad = next(d for d in hooks.got if d["file"] == "contact/bad.csv")
    assert bad["status"] == "FAILED" and bad["instance"] == "default"
    assert bad["dest"] == "failed/contact/bad.csv" and bad["records"]["failed"] == 2
    assert "errors_all" not in bad and bad["errors"][0]["message"]
    await wait_for(lambda: daemon.outbox is not None and daemon.outbox.pending == 0,
                   what="nothing pending")
    registry = daemon.metrics.registry
    assert registry.get_sample_value("bulkdrop_notifications_total",
                                     {"target": "ops", "outcome": "sent"}) == 3
    assert registry.get_sample_value("bulkdrop_notifications_total",
                                     {"target": "ops", "outcome": "retry"}) == 6


async def test_pending_notifications_are_sent_after_a_restart(
        make_settings, run_daemon, sim: SimServer, spool_root: Path,
        receiver: tuple[Receiver, str]) -> None:
    hooks, url = receiver
    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    first = await run_daemon(make_settings(target(down)))
    drop(spool_root, "contact/bad.csv", "email\nnope\n")
    await wait_for(lambda: first.filer.counts["FAILED"] == 1, what="bad.csv filed")
    await wait_for(lambda: first.metrics.registry.get_sample_value(
        "bulkdrop_notifications_total", {"target": "ops", "outcome": "retry"}),
        what="a refused attempt")
    report = await asyncio.to_thread(ops.status, first.settings)
    assert report["notifications_pending"] == 1
    assert "notifications: 1 waiting to be sent" in ops.format_status(report)
    first.request_stop()
    await wait_for(lambda: first.stop_event.is_set() and first.sending is not None
                   and first.sending.done(), what="the first daemon stopped")
    # The same spool and ledger, the target up at its address now.
    await run_daemon(make_settings(target(url), spool__node_id="node-a"))
    await wait_for(lambda: len(hooks.got) == 1, timeout=30, what="the notification")
    assert hooks.got[0]["file"] == "contact/bad.csv"


@pytest.mark.parametrize(("toml", "key", "words"), [
    ('[[notify.targets]]\nurl = "ftp://x"\n', "notify.targets[1].url", "http"),
    ('[[notify.targets]]\nurl = "http://x"\non = ["DONE"]\n', "notify.targets[1].on",
     "partial"),
    ('[[notify.targets]]\nurl = "http://x"\nformat = "xml"\n', "notify.targets[1].format",
     "slack"),
    ('[[notify.targets]]\nurl = "http://x"\nurl_ = 1\n', "notify.targets[1].url_",
     "did you mean"),
    ('[[notify.targets]]\nurl = "http://x"\ninstances = ["crm"]\n',
     "notify.targets[1].instances", "no instance 'crm'"),
    ('[notify]\nretry_deadline_seconds = 0\n', "notify.retry_deadline_seconds", "> 0"),
    ('[[notify.targets]]\nname = "a"\nurl = "http://x"\n[[notify.targets]]\nname = "a"\n'
     'url = "http://y"\n', "notify.targets", "two targets"),
])
def test_a_bad_notify_setting_names_its_key(tmp_path: Path, toml: str, key: str,
                                            words: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[api]\nbase_url = "http://127.0.0.1:9"\n' + toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert caught.value.key == key and words in str(caught.value), str(caught.value)


def test_a_targets_key_comes_from_the_environment_too(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[api]\nbase_url = "http://127.0.0.1:9"\n'
                    '[[notify.targets]]\nname = "ops-hook"\nurl = "http://x"\n')
    settings = load_settings(path, {"BULKDROP_NOTIFY_OPS_HOOK_SIGNATURE_KEY": "k-7q2x"})
    assert settings.notify.targets[0].signature_key.reveal() == "k-7q2x"
    assert "k-7q2x" not in repr(settings.notify)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {"BULKDROP_NOTIFY_OPS_SIGNATURE_KEY": "k"})
    assert caught.value.key == "BULKDROP_NOTIFY_OPS_SIGNATURE_KEY"
