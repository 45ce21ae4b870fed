"""How the daemon process ends: exit 0 only when asked to stop, one ``daemon.crashed``
line and a non-zero code for anything else; a graceful stop that never sends a file
twice; slow clients and long lines that cannot exhaust it."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest
import structlog

from daemon.service import Daemon, StartupError
from daemon.sim import SimServer
from daemon.spool import Spool
from tests.conftest import Users
from tests.helpers import contacts_csv, drop, finished, free_port, result_of, wait_for
from tests.procs import DaemonProc, daemons, recorded_job_ids, write_config


def _crashed(daemon: DaemonProc) -> list[dict]:
    return [e for e in daemon.events() if e.get("event") == "daemon.crashed"]


async def test_a_port_already_taken_exits_1_with_one_crash_line(sim: SimServer,
                                                                tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "c.toml", sim.base_url, tmp_path / "spool",
                              http={"listen": f"127.0.0.1:{port}"})
        async with daemons() as started:
            daemon = await DaemonProc(config, tmp_path / "d.log").start()
            started.append(daemon)
            assert await daemon.wait() == 1
    crashed = _crashed(daemon)
    assert len(crashed) == 1
    assert f"127.0.0.1:{port}" in crashed[0]["error"] and "in use" in crashed[0]["error"]


async def test_an_unreadable_config_exits_2_with_one_crash_line(sim: SimServer,
                                                                users: Users) -> None:
    config = write_config(users.base / "c.toml", sim.base_url, users.spool())
    config.chmod(0o600)  # root's: the daemon's user may not read it
    async with daemons() as started:
        daemon = await users.daemon(config, users.base / "d.log").start()
        started.append(daemon)
        assert await daemon.wait() == 2
    crashed = _crashed(daemon)
    assert len(crashed) == 1
    assert "Permission denied" in crashed[0]["error"] and str(config) in crashed[0]["error"]


async def test_anything_but_a_signal_ending_the_daemon_is_a_crash(
        make_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after start-up (here a scan that raises: a bug, since input never
    does) ends the daemon with code 1 and one daemon.crashed line, never code 0."""
    def broken(self: Spool, *args: object, **kwargs: object) -> None:
        raise RuntimeError("scan broke")

    monkeypatch.setattr(Spool, "iter_inbox", broken)
    with structlog.testing.capture_logs() as logged:
        code = await asyncio.wait_for(Daemon(make_settings()).serve_until_signalled(), 20)
    assert code == 1
    crashed = [e for e in logged if e["event"] == "daemon.crashed"]
    assert len(crashed) == 1 and "scan broke" in crashed[0]["error"]


async def test_a_stop_waits_for_answers_to_uploads_already_sent(sim: SimServer,
                                                                tmp_path: Path) -> None:
    """The API takes longer to answer than the grace: cutting those uploads would send
    them again at the next start. The stop waits for the answers instead."""
    sim.sim.config.create_delay_seconds = 3.0
    root = tmp_path / "spool"
    config = write_config(tmp_path / "c.toml", sim.base_url, root,
                          workers={"shutdown_grace_seconds": 1})
    log = tmp_path / "d.log"
    for i in range(4):
        drop(root, f"contact/slow{i}.csv", contacts_csv(3, tag=f"s{i}"))
    async with daemons() as started:
        daemon = await DaemonProc(config, log).start()
        started.append(daemon)
        await wait_for(lambda: len(sim.sim.jobs) == 4, what="4 jobs made, answers pending")
        stopped_at = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
        assert time.monotonic() - stopped_at < 8
        assert daemon.seen("daemon.awaiting_answers") == 1
        assert len(recorded_job_ids(root / ".state" / "n1" / "bulkdrop.db")) == 4
        sim.sim.config.create_delay_seconds = 0
        again = await DaemonProc(config, log).start()
        started.append(again)
        await wait_for(lambda: len(finished(root)) == 4, what="all 4 filed")
        again.signal(signal.SIGTERM)
        assert await again.wait() == 0
    assert sim.sim.creates_attempted == 4 and len(sim.sim.jobs) == 4
    assert {result_of(p)["status"] for p in finished(root)} == {"COMPLETE"}


async def test_a_stop_cuts_an_upload_still_sending_and_it_is_sent_once_later(
        sim: SimServer, tmp_path: Path) -> None:
    sim.sim.config.latency_seconds = 30  # the API reads nothing: the body cannot all go
    root = tmp_path / "spool"
    config = write_config(tmp_path / "c.toml", sim.base_url, root,
                          workers={"shutdown_grace_seconds": 1})
    log = tmp_path / "d.log"
    drop(root, "contact/big.csv", contacts_csv(400_000))  # about 16 MB
    async with daemons() as started:
        daemon = await DaemonProc(config, log).start()
        started.append(daemon)
        await wait_for(lambda: sim.sim.uploads_in_flight == 1, what="the upload under way")
        stopped_at = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
        assert time.monotonic() - stopped_at < 6
        assert daemon.seen("daemon.awaiting_answers") == 0
        sim.sim.config.latency_seconds = 0
        again = await DaemonProc(config, log).start()
        started.append(again)
        await wait_for(lambda: len(finished(root)) == 1, what="the file filed")
    assert len(sim.sim.jobs) == 1
    assert result_of(finished(root)[0])["status"] == "COMPLETE"


def _drip_limit() -> int:
    """Our own descriptors: enough for 1,100 connections, or the test cannot run."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 and hard >= 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@pytest.mark.timeout(120)
async def test_slow_clients_cannot_exhaust_the_daemon(sim: SimServer, tmp_path: Path) -> None:
    """1,100 connections dripping a byte at a time, at systemd's default 1,024
    descriptors: /healthz still answers, every file is done, the daemon stays up."""
    if _drip_limit() < 1300:
        pytest.skip("needs 1,300 descriptors for the slow clients")
    port = free_port()
    root = tmp_path / "spool"
    config = write_config(tmp_path / "c.toml", sim.base_url, root,
                          http={"listen": f"127.0.0.1:{port}"})

    def at_1024() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    writers: list[asyncio.StreamWriter] = []

    async def drip() -> None:
        while True:
            for writer in list(writers):
                if writer.is_closing():
                    writers.remove(writer)
                    continue
                with contextlib.suppress(OSError):
                    writer.write(b"x")
            await asyncio.sleep(0.5)

    async with daemons() as started, aiohttp.ClientSession() as http:
        daemon = await DaemonProc(config, tmp_path / "d.log", preexec=at_1024).start()
        started.append(daemon)
        await wait_for(lambda: daemon.seen("daemon.started"), what="the daemon started")
        dripping = asyncio.create_task(drip())
        try:
            for _ in range(1100):
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    writers.append(writer)
            for i in range(50):
                drop(root, f"contact/f{i:02}.csv", contacts_csv(2, tag=str(i)))
            for _ in range(5):
                async with http.get(f"http://127.0.0.1:{port}/healthz",
                                    timeout=aiohttp.ClientTimeout(total=5)) as answer:
                    assert answer.status == 200
            await wait_for(lambda: len(finished(root)) == 50, timeout=60, what="50 files filed")
            fds = daemon.open_fds()
            assert fds < 1024 - 100, f"{fds} descriptors open"
        finally:
            dripping.cancel()
            for writer in writers:
                writer.close()
        assert {result_of(p)["status"] for p in finished(root)} == {"COMPLETE"}
        assert daemon.running
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0


async def test_a_line_of_256_mib_is_rejected_in_flat_memory(sim: SimServer,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "spool"
    config = write_config(tmp_path / "c.toml", sim.base_url, root)
    staged = tmp_path / "long.csv"
    with staged.open("wb") as fh:
        fh.write(b"email,first_name\n")
        block = b"x" * (1 << 20)
        for _ in range(256):
            fh.write(block)
    async with daemons() as started:
        daemon = await DaemonProc(config, tmp_path / "d.log").start()
        started.append(daemon)
        await wait_for(lambda: daemon.seen("daemon.started"), what="the daemon started")
        (root / "inbox" / "contact").mkdir(parents=True, exist_ok=True)
        staged.rename(root / "inbox" / "contact" / "long.csv")
        rejected = root / "failed" / "contact" / "long.csv"
        await wait_for(lambda: rejected.with_name("long.csv.result.json").exists(),
                       timeout=60, what="the file rejected")
        peak_kib = daemon.peak_rss_kib()
    result = result_of(rejected)
    assert result["status"] == "REJECTED"
    assert "line 2: a line longer than 1,048,576 characters" in result["reason"]
    print(f"\npeak RSS with a 256 MiB line: {peak_kib // 1024} MiB")
    assert peak_kib < 110 * 1024, f"peak RSS {peak_kib // 1024} MiB"
    assert sim.sim.creates_attempted == 0


async def test_a_cancelled_serve_still_drains_before_the_ledger_closes(
        make_settings, sim: SimServer, spool_root: Path) -> None:
    """The phased shutdown runs whatever ends serve(): here a cancel, with jobs being
    followed. Nothing is left running, the ledger closes last, and the next start follows
    the recorded jobs instead of sending the files again."""
    sim.sim.config.job_seconds = 600
    settings = make_settings()
    daemon = Daemon(settings)
    serving = asyncio.create_task(daemon.serve())
    try:
        await wait_for(daemon.ready.is_set, what="ready")
        for i in range(2):
            drop(spool_root, f"contact/c{i}.csv", contacts_csv(2, tag=str(i)))
        await wait_for(lambda: len(daemon.instance().jobs.active) == 2, what="2 jobs followed")
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(serving, 15)
        assert daemon.tasks.running == [] and not daemon.instance().jobs.active
        assert daemon.ledger._conn is None, "the ledger is closed, after everything else"
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    sim.sim.config.job_seconds = 0.2
    for job in sim.sim.jobs.values():
        job.job_seconds = 0.2
    again = Daemon(settings)
    serving = asyncio.create_task(again.serve())
    try:
        await wait_for(lambda: len(finished(spool_root)) == 2, timeout=30, what="2 filed")
    finally:
        again.request_stop()
        await asyncio.wait_for(serving, 15)
    assert len(sim.sim.jobs) == 2, "followed by their recorded ids, not sent again"
    assert {result_of(spool_root / "done" / "contact" / f"c{i}.csv")["status"]
            for i in range(2)} == {"COMPLETE"}


async def test_a_second_daemon_as_the_same_node_does_not_start(make_settings, run_daemon,
                                                                sim: SimServer) -> None:
    """It would take the first one's files in processing/ as its own to recover."""
    settings = make_settings()
    first = await run_daemon(settings)
    second = Daemon(settings)
    with pytest.raises(StartupError, match="already runs as node 'node-a' on this spool"):
        await second.serve()
    assert first.ready.is_set() and not first.stop_event.is_set()
