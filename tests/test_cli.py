"""The command line as users run it: real subprocesses, real signals, the simulator on loopback."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
from pathlib import Path

import aiohttp
import pytest

from daemon.sim import SimServer
from tests.helpers import (
    SECRETS,
    clean_env,
    contacts_csv,
    drop,
    finish,
    free_port,
    result_of,
    wait_for,
)


class Lines:
    """Collects a process's stream line by line while the test goes on."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self.task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode())

    def text(self) -> str:
        return "".join(self.lines)


async def test_missing_base_url_exits_2_naming_the_key(spawn, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[spool]\nroot = "%s"\n' % (tmp_path / "spool"))
    code, _, err = await finish(await spawn("run", "--config", str(config)))
    assert code == 2
    assert "api.base_url" in err


@pytest.mark.parametrize(("toml", "env", "named"), [
    ('[api]\nbase_url = "http://x"\n[spool]\nsettle = 3\n', {}, "spool.settle"),
    ('[api]\nbase_url = "http://x"\n', {"BULKDROP_WORKERS_UPLOADS": "many"},
     "BULKDROP_WORKERS_UPLOADS"),
    ('[api]\nbase_url = "http://x"\n[workers]\nuploads = "4"\n', {}, "workers.uploads"),
])
async def test_bad_config_exits_2_naming_the_key(spawn, tmp_path: Path, toml: str,
                                                 env: dict[str, str], named: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    code, out, err = await finish(await spawn("run", "--config", str(config), env=clean_env(**env)))
    assert code == 2
    assert named in err
    assert not (tmp_path / "spool").exists()


async def test_objects_lists_the_hub(spawn, sim: SimServer) -> None:
    env = clean_env(BULKDROP_API_BASE_URL=sim.base_url, **SECRETS)
    code, out, err = await finish(await spawn("objects", env=env))
    assert code == 0, err
    assert out.split() == ["activities", "contact", "campaign", "list", "account"]


async def test_objects_with_refused_credentials_says_so(spawn, sim: SimServer) -> None:
    sim.sim.config.user_secret = "the-right-one"
    env = clean_env(BULKDROP_API_BASE_URL=sim.base_url, **SECRETS)
    code, out, err = await finish(await spawn("objects", env=env))
    assert code == 1
    assert "HTTP 401" in err and "api.user_secret" in err
    assert SECRETS["BULKDROP_API_USER_SECRET"] not in out + err


async def test_sim_serves_alone_and_stops_on_sigterm(spawn) -> None:
    port = free_port()
    proc = await spawn("sim", "--port", str(port))
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert f"http://127.0.0.1:{port}/elements/api-v2" in first.decode()
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/elements/api-v2/hubs/marketing/objects"
        async with session.get(url) as resp:
            assert resp.status == 401
        async with session.get(url, headers={"Authorization": "User u, Element e"}) as resp:
            assert resp.status == 200
            assert "contact" in await resp.json()
    proc.send_signal(signal.SIGTERM)
    code, _, _ = await finish(proc)
    assert code == 0


async def test_sandbox_runs_a_file_through_and_stops_on_ctrl_c(spawn, tmp_path: Path) -> None:
    proc = await spawn("run", "--sandbox", env=clean_env(BULKDROP_SPOOL_SETTLE_SECONDS="0.2"),
                       cwd=tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    await wait_for(lambda: "drop CSV files into" in out.text(), what="sandbox banner")
    inbox = tmp_path / "spool" / "inbox"
    assert f"{inbox}/contact/" in out.text() and f"{inbox}/marketing/contact/" in out.text()
    for folder in ("contact", "marketing/contact"):
        assert (inbox / folder).is_dir(), "the folders it names exist"
    drop(tmp_path / "spool", "people.csv", contacts_csv(5))   # default_object = contact
    drop(tmp_path / "spool", "marketing/contact/leads.csv", contacts_csv(3))
    done = tmp_path / "spool" / "done"
    for rel in ("people.csv", "marketing/contact/leads.csv"):
        await wait_for(lambda rel=rel: (done / f"{rel}.result.json").exists(), timeout=30,
                       what=f"sandbox result of {rel}")
    # the ledger says finished a moment after the result is in place: then it is logged
    await wait_for(lambda: err.text().count("file.finished") >= 2, what="both logged")
    people, leads = result_of(done / "people.csv"), result_of(done / "marketing/contact/leads.csv")
    assert people["status"] == leads["status"] == "COMPLETE"
    assert people["object"] == leads["object"] == "contact"
    assert (people["instance"], leads["instance"]) == ("crm", "marketing")
    assert (people["hub"], leads["hub"]) == ("crm", "marketing")
    view = re.search(r"web view: (http://127\.0\.0\.1:\d+/)", out.text())
    assert view is not None, out.text()
    async with aiohttp.ClientSession() as http, http.get(view[1] + "api/status") as resp:
        assert resp.status == 200
        assert (await resp.json())["today"]["COMPLETE"] == 2
    # A file that fails is notified to the simulator's webhook sink.
    sink = re.search(r"curl (http://127\.0\.0\.1:\d+/_sim/webhooks)", out.text())
    assert sink is not None, out.text()
    drop(tmp_path / "spool", "contact/nobody.csv", "email\nnot-an-email\n")

    await wait_for(lambda: "sim.webhook" in err.text() and err.text().count(
        "file.finished") >= 3, timeout=30, what="the notification")
    async with aiohttp.ClientSession() as http, http.get(sink[1]) as resp:
        got = [w["body"] for w in await resp.json()]
    assert [(b["file"], b["event"]) for b in got] == [("contact/nobody.csv", "FAILED")]
    # The other commands find the sandbox's spool and simulator from its folder.
    code, shown, _ = await finish(await spawn("status", "--sandbox", env=clean_env(),
                                              cwd=tmp_path))
    assert code == 0 and "COMPLETE 2" in shown and str(tmp_path / "spool") in shown
    assert "crm (default): COMPLETE 1, FAILED 1" in shown and "marketing: COMPLETE 1" in shown
    assert "daemon: ready" in shown or "daemon: not ready" in shown, "it asked the sandbox"
    code, listed, _ = await finish(await spawn("objects", "--sandbox", env=clean_env(),
                                               cwd=tmp_path))
    assert code == 0 and "[crm] hub crm" in listed and "[marketing] hub marketing" in listed
    assert listed.split().count("contact") == 2
    code, listed, _ = await finish(await spawn("objects", "--sandbox", "--instance",
                                               "marketing", env=clean_env(), cwd=tmp_path))
    assert code == 0 and "contact" in listed.split() and "[" not in listed
    code, _, said = await finish(await spawn("objects", "--sandbox", "--instance", "nope",
                                             env=clean_env(), cwd=tmp_path))
    assert code == 2 and "instances: crm, marketing" in said
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    await asyncio.gather(out.task, err.task)
    assert '"event": "daemon.stopped"' in err.text()
    code, _, said = await finish(await spawn("objects", "--sandbox", env=clean_env(),
                                             cwd=tmp_path))
    assert code == 2 and "start `bulkdrop run --sandbox`" in said


async def test_daemon_logs_json_lines_with_context_and_no_secrets(spawn, sim: SimServer,
                                                                 tmp_path: Path) -> None:
    root = tmp_path / "spool"
    config = tmp_path / "bulkdrop.toml"
    config.write_text(f'[api]\nbase_url = "{sim.base_url}"\n'
                      f'[spool]\nroot = "{root}"\nsettle_seconds = 0.2\nnode_id = "n1"\n'
                      '[workers]\npoll_interval_seconds = 0.05\n'
                      'poll_max_interval_seconds = 0.2\n[http]\nlisten = ""\n')
    proc = await spawn("run", "--config", str(config), env=clean_env(**SECRETS))
    assert proc.stderr is not None
    err = Lines(proc.stderr)
    await wait_for(lambda: "daemon.started" in err.text(), what="start")
    drop(root, "contact/good.csv", contacts_csv(3, bad_every=2))
    drop(root, "contact/bad.xlsx", b"nope")
    await wait_for(lambda: (root / "done/contact/good.csv.result.json").exists()
                   and (root / "failed/contact/bad.xlsx.result.json").exists(), what="results")
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    await err.task

    events = [json.loads(line) for line in err.lines]     # every line is one JSON object
    names = [e["event"] for e in events]
    for name in ("daemon.started", "file.claimed", "job.created", "file.finished",
                 "daemon.stopping", "daemon.stopped"):
        assert name in names
    started = next(e for e in events if e["event"] == "daemon.started")
    # The command line runs on uvloop where it is installed (a dependency on Linux);
    # in-process tests run on asyncio's loop.
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    assert started["event_loop"] == ("uvloop" if has_uvloop else "asyncio")
    good = [e for e in events if e.get("file") == "contact/good.csv"]
    assert {"file.claimed", "job.created", "file.finished"} <= {e["event"] for e in good}
    assert all(e.get("job_id") for e in good if e["event"] in ("job.created", "file.finished"))
    everything = err.text() + "".join(p.read_text(errors="replace") for p in root.rglob("*")
                                      if p.is_file() and ".state" not in p.parts)
    for secret in SECRETS.values():
        assert secret not in everything
    assert sim.sim.jobs, "the daemon did talk to the simulator with those secrets"


async def test_validate_reports_and_exits_0_or_3(spawn, tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_bytes("email;name\r\na@x;Zoë\r\n".encode("cp1252"))
    code, out, _ = await finish(await spawn("validate", str(good)))
    assert code == 0
    assert "semicolon-separated, cp1252, CRLF" in out and "rows: 1" in out
    assert "converted to comma-separated UTF-8" in out

    config = tmp_path / "c.toml"
    config.write_text('[objects.contact]\nrequire_columns = ["phone"]\n')
    code, out, _ = await finish(await spawn("validate", str(good), "--object", "contact",
                                             "--config", str(config)))
    assert code == 3
    assert "line 1: required column 'phone' is missing" in out and "result: rejected" in out


async def test_validate_refuses_what_is_not_a_file_without_hanging(spawn,
                                                                   tmp_path: Path) -> None:
    fifo = tmp_path / "export.csv"
    os.mkfifo(fifo)  # named by mistake: opening it for reading would wait for a writer
    code, _, err = await finish(await spawn("validate", str(fifo)))
    assert code == 1 and "a named pipe (FIFO)" in err


async def test_validate_warns_about_columns_the_object_lacks(spawn, sim: SimServer,
                                                             tmp_path: Path) -> None:
    file = tmp_path / "export.csv"
    file.write_text("C_EmailAddress,firstName\na@x,Ann\n")
    env = clean_env(BULKDROP_API_BASE_URL=sim.base_url, **SECRETS)
    code, out, _ = await finish(await spawn("validate", str(file), "--object", "contact",
                                             env=env))
    assert code == 0, "a warning, not a rejection"
    assert "warning: column 'C_EmailAddress' is not a field of 'contact'" in out
    assert "firstName" not in out.split("warning")[1].split("(fields")[0]

    config = tmp_path / "c.toml"
    config.write_text('[objects.contact]\nrename_columns = { C_EmailAddress = "email" }\n')
    code, out, _ = await finish(await spawn("validate", str(file), "--object", "contact",
                                             "--config", str(config), env=env))
    assert code == 0 and "warning" not in out
    # A JSON file's top-level keys, as sent.
    objects = tmp_path / "export.jsonl"
    objects.write_text('{"C_EmailAddress": "a@x", "firstName": "Ann", "nick": "A"}\n')
    code, out, _ = await finish(await spawn("validate", str(objects), "--object", "contact",
                                             "--config", str(config), env=env))
    assert code == 0 and "objects: 1" in out
    assert [line.split(" (fields")[0] for line in out.splitlines() if "warning" in line] == [
        "warning: key 'nick' is not a field of 'contact'"]
