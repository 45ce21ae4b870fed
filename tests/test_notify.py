"""Notifications of finished files, against a real aiohttp receiver on 127.0.0.1: signed,
delivered at least once (a receiver that answers 503 for a while gets each exactly as
many times as it refused plus one), resumed after a restart, and configured with errors
that name their key."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from daemon import ops
from daemon.config import load_settings
from daemon.settings import ConfigError
from daemon.sim import SimServer
from tests.helpers import clean_env, contacts_csv, drop, finish, free_port, wait_for
from tests.procs import DaemonProc, daemons, write_config

KEY = "hook-5ecret"


class Receiver:
    """A webhook endpoint that checks signatures and answers 503 to the first *refuse*
    requests of each file."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.tries: dict[str, int] = {}
        self.refuse = 0
        self.bad_signatures = 0
        self.delay = 0.0
        self.arrived = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived += 1
        body = await request.read()
        expected = "sha256=" + base64.b64encode(
            hmac.new(KEY.encode(), body, hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, request.headers.get("X-Bulkdrop-Signature", "")):
            self.bad_signatures += 1
            return web.Response(status=401)
        data = json.loads(body)
        assert data["sent_at"] == request.headers["X-Bulkdrop-Timestamp"]
        if self.delay:
            await asyncio.sleep(self.delay)
        if "text" in data:  # a Slack message: no file field of its own
            self.got.append(data)
            return web.Response(text="ok")
        self.tries[data["file"]] = self.tries.get(data["file"], 0) + 1
        if self.tries[data["file"]] <= self.refuse:
            return web.Response(status=503, headers={"Retry-After": "0"})
        self.got.append(data)
        return web.json_response({"ok": True})


@contextlib.asynccontextmanager
async def serving(hooks: Receiver, port: int) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", hooks.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    hooks = Receiver()
    async with serving(hooks, free_port()) as url:
        yield hooks, url


def target(url: str, **extra: Any) -> str:
    lines = ["[[notify.targets]]", 'name = "ops"', f'url = "{url}"',
             f'signature_key = "{KEY}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


async def test_each_notification_is_delivered_once_it_is_taken(
        make_settings, run_daemon, sim: SimServer, spool_root: Path,
        receiver: tuple[Receiver, str]) -> None:
    hooks, url = receiver
    hooks.refuse = 1  # each file's first attempt gets 503
    daemon = await run_daemon(make_settings(target(url)))
    drop(spool_root, "contact/bad.csv", "email,first_name\nnope,A\nnever,B\n")   # FAILED
    drop(spool_root, "contact/sheet.xlsx", b"not a csv")                          # REJECTED
    drop(spool_root, "contact/some.csv", contacts_csv(4, tag="s", bad_every=2))   # partial
    drop(spool_root, "contact/clean.csv", contacts_csv(2, tag="c"))               # COMPLETE
    await wait_for(lambda: len(hooks.got) == 3, timeout=30, what="3 notifications")
    assert {d["file"]: d["event"] for d in hooks.got} == {
        "contact/bad.csv": "FAILED", "contact/sheet.xlsx": "REJECTED",
        "contact/some.csv": "partial"}
    assert hooks.tries == {"contact/bad.csv": 2, "contact/sheet.xlsx": 2, "contact/some.csv": 2}
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
                                     {"target": "ops", "outcome": "retry"}) == 3


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
    await wait_for(first.stopped.is_set, what="the first daemon stopped")
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


async def test_a_kill_between_filing_and_sending_loses_no_notification(
        sim: SimServer, tmp_path: Path) -> None:
    """kill -9 with the file filed and its notification not yet taken: the next start
    sends it."""
    hooks, port = Receiver(), free_port()
    root = tmp_path / "spool"
    config = write_config(tmp_path / "c.toml", sim.base_url, root)
    config.write_text(config.read_text() + target(f"http://127.0.0.1:{port}/hook"))
    db = root / ".state" / "n1" / "bulkdrop.db"

    def pending() -> int:
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        except sqlite3.Error:
            return 0  # not made yet
        try:
            return int(conn.execute("SELECT count(*) FROM notifications"
                                    " WHERE state = 'PENDING'").fetchone()[0])
        except sqlite3.Error:
            return 0
        finally:
            conn.close()

    async with daemons() as started:
        first = await DaemonProc(config, tmp_path / "d1.log").start()
        started.append(first)
        drop(root, "contact/bad.csv", "email\nnope\n")
        await wait_for(lambda: pending() == 1 and first.seen("notify.retry") >= 1,
                       timeout=30, what="filed, its notification refused once")
        first.signal(signal.SIGKILL)
        await first.wait()
        async with serving(hooks, port):
            second = await DaemonProc(config, tmp_path / "d2.log").start()
            started.append(second)
            await wait_for(lambda: len(hooks.got) == 1, timeout=30, what="the notification")
            await wait_for(lambda: pending() == 0, what="nothing pending")
    assert hooks.got[0]["file"] == "contact/bad.csv" and hooks.got[0]["event"] == "FAILED"


async def test_a_slow_receiver_never_slows_the_files(make_settings, run_daemon,
                                                     sim: SimServer, spool_root: Path,
                                                     receiver: tuple[Receiver, str]) -> None:
    """200 files with every one notified to a receiver taking 2 s an answer, against 200
    with no notifications, in the same daemon's spool: filing keeps its pace."""
    hooks, url = receiver
    hooks.delay = 2.0
    seconds = {}
    for run, toml in (("off", ""), ("slow", target(url, on=["COMPLETE"]))):
        settings = make_settings(toml, spool__root=str(spool_root / run))
        daemon = await run_daemon(settings)
        started = time.monotonic()
        for i in range(200):
            drop(spool_root / run, f"contact/f{i}.csv", contacts_csv(1, tag=f"{run}{i}"))
        await wait_for(lambda d=daemon: d.filer.counts["COMPLETE"] == 200, timeout=60,
                       what=f"200 files filed ({run})")
        seconds[run] = time.monotonic() - started
    assert hooks.arrived, "notifications were being sent meanwhile"
    assert seconds["slow"] < seconds["off"] * 1.5 + 1.0, seconds


async def test_slack_messages_and_notify_test(spawn, make_settings, run_daemon,
                                              sim: SimServer, spool_root: Path,
                                              receiver: tuple[Receiver, str],
                                              tmp_path: Path) -> None:
    hooks, url = receiver
    await run_daemon(make_settings(target(url, format="slack")))
    drop(spool_root, "contact/bad.csv", "email,first_name\nnope,A\n")
    await wait_for(lambda: len(hooks.got) == 1, what="the Slack message")
    text = hooks.got[0]["text"]
    assert text.startswith("*FAILED*: `contact/bad.csv` (default / contact)")
    assert "1 records, 1 failed" in text and "Invalid email address 'nope'" in text
    config = tmp_path / "notify.toml"
    config.write_text(f'[api]\nbase_url = "{sim.base_url}"\n' + target(url))
    code, out, _ = await finish(await spawn("notify", "test", "--config", str(config),
                                            env=clean_env()))
    assert code == 0 and out.startswith("ops: HTTP 200 (sent)")
    assert hooks.got[-1]["file"] == "contact/sample.csv" and hooks.got[-1]["test"] is True
    code, _, said = await finish(await spawn("notify", "test", "--config", str(config),
                                             "--target", "nope", env=clean_env()))
    assert code == 2 and "targets: ops" in said


async def test_what_is_given_up_and_where_the_file_is(make_settings, run_daemon,
                                                      sim: SimServer, spool_root: Path) -> None:
    """A 404 and a redirect are given up at once; an endless Retry-After is held to the
    deadline and then given up; a file filed under a free name is notified with it."""
    seen: dict[str, int] = {}
    bodies: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        data = json.loads(await request.read())
        seen[data["file"]] = seen.get(data["file"], 0) + 1
        if data["file"].endswith("gone.csv"):
            return web.Response(status=404)
        if data["file"].endswith("moved.csv"):
            return web.Response(status=302, headers={"Location": "http://x.example/a/SECRET"})
        if data["file"].endswith("later.csv"):
            return web.Response(status=503, headers={"Retry-After": "99999999999999"})
        bodies.append(data)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        daemon = await run_daemon(make_settings(
            "[notify]\nretry_deadline_seconds = 2\n" + target(f"http://127.0.0.1:{port}/hook")))
        (spool_root / "failed" / "contact").mkdir(parents=True, exist_ok=True)
        (spool_root / "failed" / "contact" / "taken.csv").write_text("an older file\n")
        for name in ("gone", "moved", "later", "taken"):
            drop(spool_root, f"contact/{name}.csv", "email\nnope\n")
        registry = daemon.metrics.registry
        await wait_for(lambda: registry.get_sample_value(
            "bulkdrop_notifications_total", {"target": "ops", "outcome": "gave_up"}) == 3
            and len(bodies) == 1, timeout=30, what="three given up, one sent")
    finally:
        await runner.cleanup()
    assert seen["contact/gone.csv"] == 1 and seen["contact/moved.csv"] == 1
    assert bodies[0]["dest"] == "failed/contact/taken-1.csv", "the name it was filed under"
    assert (spool_root / "failed" / "contact" / "taken.csv").read_text() == "an older file\n"
