"""The operator's commands as users run them (subprocesses) against a real ledger,
real folders and the simulator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from daemon.sim import SimServer
from tests.helpers import SECRETS, clean_env, contacts_csv, drop, finish, result_of, wait_for


def _config(tmp_path: Path, root: Path, base_url: str = "http://127.0.0.1:9") -> Path:
    config = tmp_path / "c.toml"
    config.write_text(f'[api]\nbase_url = "{base_url}"\n[spool]\nroot = "{root}"\n'
                      'node_id = "node-a"\n[workers]\npoll_interval_seconds = 0.05\n')
    return config


async def test_status_reads_the_ledger_and_the_inbox(spawn, make_settings, run_daemon,
                                                     spool_root: Path, tmp_path: Path) -> None:
    daemon = await run_daemon(make_settings())
    drop(spool_root, "contact/s1.csv", contacts_csv(2))
    drop(spool_root, "contact/s2.xlsx", b"no")
    await wait_for(lambda: sum(daemon.filer.counts.values()) == 2, what="two filed")
    daemon.request_stop()
    waiting = drop(spool_root, "contact/later.csv", contacts_csv(1))
    code, out, err = await finish(await spawn(
        "status", "--json", "--config", str(_config(tmp_path, spool_root))))
    assert code == 0, err
    report = json.loads(out)
    assert report["counts"] == {"COMPLETE": 1, "REJECTED": 1}
    assert {r["rel_path"] for r in report["latest"]} == {"contact/s1.csv", "contact/s2.xlsx"}
    assert report["inbox"]["waiting"] == 1
    assert report["inbox"]["oldest"]["file"] == "contact/later.csv"
    code, out, _ = await finish(await spawn("status", "--config",
                                             str(_config(tmp_path, spool_root))))
    assert "COMPLETE 1, FAILED 0, REJECTED 1" in out and "contact/later.csv" in out
    assert waiting.exists()


async def test_retry_moves_failed_files_back_under_their_route(spawn, make_settings,
                                                               run_daemon, spool_root: Path,
                                                               tmp_path: Path) -> None:
    await run_daemon(make_settings())
    drop(spool_root, "contact/h.csv", b"email,name\n")        # header only: rejected
    failed = spool_root / "failed" / "contact" / "h.csv"
    await wait_for(lambda: failed.with_name("h.csv.result.json").exists(), what="rejected")
    failed.write_bytes(b"email,name\na@x,A\n")                  # a person fixes it in place
    code, out, err = await finish(await spawn("retry", "--all", "--config",
                                               str(_config(tmp_path, spool_root))))
    assert code == 0, err
    assert "inbox/contact/h.csv" in out
    done = spool_root / "done" / "contact" / "h.csv"
    await wait_for(lambda: done.with_name("h.csv.result.json").exists(), what="done on retry")
    assert result_of(done)["status"] == "COMPLETE"
    assert not list((spool_root / "failed").rglob("h.csv*"))
    code, _, err = await finish(await spawn("retry", "/etc/passwd", "--config",
                                             str(_config(tmp_path, spool_root))))
    assert code == 1 and "is not below" in err


async def test_submit_wait_exit_codes(spawn, sim: SimServer, tmp_path: Path) -> None:
    sim.sim.config.job_seconds = 0.1
    env = clean_env(BULKDROP_API_BASE_URL=sim.base_url, **SECRETS)
    cases = [("clean.csv", contacts_csv(3), 0, "COMPLETE"),
             ("some-bad.csv", contacts_csv(4, bad_every=2), 4, "COMPLETE"),
             ("x-sim-error.csv", contacts_csv(2), 3, "FAILED"),
             ("empty.csv", "", 3, "REJECTED"),
             ("objects.json", '[{"email": "a@example.com"}, {"email": "b"}]', 4, "COMPLETE"),
             ("bad.jsonl", '{"email": "a@example.com"},\n', 3, "REJECTED")]
    for name, content, _, _ in cases:
        (tmp_path / name).write_text(content)
    # Each its own process, all at once: nothing is shared but the simulator.
    procs = [await spawn("submit", str(tmp_path / name), "--object", "contact", "--wait",
                         env=env) for name, *_ in cases]
    ended = await asyncio.gather(*map(finish, procs))
    for (name, _, expected, status), (code, out, err) in zip(cases, ended, strict=True):
        assert code == expected, (name, err)
        assert json.loads(out)["status"] == status
        if name == "objects.json":  # sent as JSON lines, said to be JSON
            job = sim.sim.jobs[json.loads(out)["job_id"]]
            assert job.body == b'{"email": "a@example.com"}\n{"email": "b"}\n'
            assert job.metadata == {"format": "json"}
            assert job.content_type == "application/json" and job.failed_count == 1
    code, out, _ = await finish(await spawn("submit", str(tmp_path / "clean.csv"),
                                             "--object", "contact", env=env))
    assert code == 0 and json.loads(out)["job_id"] in sim.sim.jobs


async def test_config_shows_values_origins_and_masks_secrets(spawn, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "element_token").write_text("cred-token-1\n")
    config = tmp_path / "c.toml"
    config.write_text('[api]\nbase_url = "http://example.invalid/elements/api-v2"\n'
                      '[workers]\nuploads = 7\n[objects.contact]\nmax_rows_per_job = 5\n')
    env = clean_env(BULKDROP_API_USER_SECRET="env-secret-2", BULKDROP_WORKERS_MAX_ACTIVE_JOBS="9",
               CREDENTIALS_DIRECTORY=str(creds))
    code, out, _ = await finish(await spawn("config", "--config", str(config), env=env))
    assert code == 0
    lines = dict(line.split(" = ", 1) for line in out.splitlines() if " = " in line)
    assert lines["workers.uploads"] == "7  # file"
    assert lines["workers.max_active_jobs"] == "9  # env BULKDROP_WORKERS_MAX_ACTIVE_JOBS"
    assert lines["api.user_secret"] == '"***"  # env BULKDROP_API_USER_SECRET'
    assert lines["api.element_token"].startswith('"***"  # credential ')
    assert lines["api.organization_secret"] == '""  # default'
    assert lines["objects.contact.max_rows_per_job"] == "5  # file"
    assert "env-secret-2" not in out and "cred-token-1" not in out


def test_retry_never_follows_a_link_in_the_inbox(tmp_path: Path) -> None:
    """A dropper who puts a link where the file's inbox folder goes gets nothing moved
    through it."""
    from daemon import ops
    from daemon.spool import Spool

    spool = Spool(tmp_path / "spool", "n1")
    spool.ensure_layout()
    (spool.failed / "contact").mkdir()
    failed = spool.failed / "contact" / "bad.csv"
    failed.write_text("email\nnope\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (spool.inbox / "contact").symlink_to(elsewhere)
    with pytest.raises(OSError):
        ops.retry(spool, failed)
    assert failed.exists() and list(elsewhere.iterdir()) == []
    (spool.inbox / "contact").unlink()
    moved = ops.retry(spool, failed)
    assert moved == spool.inbox / "contact" / "bad.csv" and moved.read_text() == "email\nnope\n"
    assert not failed.exists()


def test_retry_failed_rows_says_what_is_missing(tmp_path: Path) -> None:
    from daemon import ops
    from daemon.spool import Spool

    spool = Spool(tmp_path / "spool", "n1")
    spool.ensure_layout()
    clean = spool.done / "clean.csv"
    clean.write_text("email\na@example.com\n")
    clean.with_name("clean.csv.result.json").write_text(json.dumps({"file": "clean.csv"}))
    with pytest.raises(ValueError, match="has no failed rows"):
        ops.retry_failed_rows(spool, clean)
    with pytest.raises(ValueError, match="no such filed file"):
        ops.retry_failed_rows(spool, spool.done / "nosuch.csv")
    with pytest.raises(ValueError, match="the sandbox's with --sandbox"):
        ops.retry_failed_rows(spool, tmp_path / "elsewhere.csv")
