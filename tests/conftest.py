from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from daemon import logs
from daemon.config import load_settings
from daemon.service import Daemon
from daemon.settings import Settings
from daemon.sim import SimConfig, SimServer, Simulator
from tests.helpers import clean_env
from tests.procs import DaemonProc

# The same examples every run: a property test that finds a new case is a bug report to
# turn into a test of its own, not a test that fails one run in fifty.
hypothesis_settings.register_profile("bulkdrop", derandomize=True)
hypothesis_settings.load_profile("bulkdrop")


@pytest.fixture(autouse=True, scope="session")
def quiet_logs() -> None:
    """In-process daemons and the simulator log warnings only; subprocesses keep info."""
    if os.environ.get("BULKDROP_TEST_LOG"):  # a test's daemon in full, to see why it failed
        logs.configure("json", "debug", open(os.environ["BULKDROP_TEST_LOG"], "a"))  # noqa: SIM115
        return
    logs.configure("console", "warning")


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    """The Open Connectors simulator on 127.0.0.1, an OS-chosen port, fast jobs."""
    async with SimServer(Simulator(SimConfig(job_seconds=0.2, seed=1234))) as server:
        yield server


@pytest.fixture
def spool_root(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def make_settings(spool_root: Path, sim: SimServer) -> Callable[..., Settings]:
    def make(toml: str = "", **overrides: Any) -> Settings:
        """Fast test settings; *toml* is a config file's text (``[objects.*]`` tables
        live only there), *overrides* force ``section__key`` values."""
        source = None
        if toml:
            source = spool_root.parent / "settings.toml"
            source.write_text(toml)
        values: dict[str, Any] = {
            "api.base_url": sim.base_url,
            "api.user_secret": "test-user-secret",
            "api.element_token": "test-element-token",
            "spool.root": str(spool_root),
            "spool.node_id": "node-a",
            "spool.settle_seconds": 0.3,
            "spool.rescan_seconds": 2.0,
            "workers.poll_interval_seconds": 0.05,
            "workers.poll_max_interval_seconds": 0.2,
            "workers.shutdown_grace_seconds": 5,
            "http.listen": "",
        }
        values.update({k.replace("__", "."): v for k, v in overrides.items()})
        return load_settings(source, {}, forced=values)
    return make


@pytest.fixture
async def run_daemon() -> AsyncIterator[Callable[[Settings], Any]]:
    """Start daemons in this event loop; each is stopped (and checked) at the end."""
    running: list[tuple[Daemon, asyncio.Task[None]]] = []

    async def start(settings: Settings) -> Daemon:
        daemon = Daemon(settings)
        task = asyncio.create_task(daemon.serve())
        ready = asyncio.create_task(daemon.ready.wait())
        await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            task.result()
        assert daemon.ready.is_set(), "daemon did not get ready within 10 s"
        running.append((daemon, task))
        return daemon

    yield start
    for daemon, _task in running:
        daemon.request_stop()
    for _daemon, task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)


@pytest.fixture
async def spawn() -> AsyncIterator[Callable[..., Any]]:
    """Start ``python -m daemon ...``; every process is stopped at the end of the test."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(*args: str, env: dict[str, str] | None = None,
                    cwd: Path | None = None) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", *args, env=env or clean_env(), cwd=cwd,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


SlowWriter = Callable[[Path, bytes, int, float], threading.Thread]


@pytest.fixture
def slow_writer() -> Iterator[SlowWriter]:
    """Write a file slowly, in place, like a slow export: ``slow_writer(path, data, chunks,
    seconds)`` starts a thread that writes *data* to *path* in *chunks* pieces over about
    *seconds*. At the end of the test every writer is stopped (cut short if still
    writing) and joined, so a failing test never leaves one running."""
    stop = threading.Event()
    writers: list[threading.Thread] = []

    def start(path: Path, data: bytes, chunks: int, seconds: float) -> threading.Thread:
        size = len(data) // chunks + 1
        pieces = [data[i:i + size] for i in range(0, len(data), size)]

        def write() -> None:
            with open(path, "wb") as fh:
                for piece in pieces:
                    if stop.is_set():
                        return
                    fh.write(piece)
                    fh.flush()
                    stop.wait(seconds / len(pieces))

        writer = threading.Thread(target=write, name=f"slow writer of {path.name}", daemon=True)
        writers.append(writer)
        writer.start()
        return writer

    yield start
    stop.set()
    for writer in writers:
        writer.join(timeout=10)
    assert not [w.name for w in writers if w.is_alive()], "a slow writer did not stop"


@dataclass
class Users:
    """A daemon user and a dropper in a droppers' group, and a folder both can reach:
    for tests of real permissions (the daemon runs as DAEMON_UID through
    ``tests/unprivileged.py``; the test itself is root)."""
    base: Path
    daemon_uid: int = 64101
    dropper_uid: int = 64102
    droppers_gid: int = 64100

    def spool(self, name: str = "spool") -> Path:
        """A spool root as the README makes it: the daemon's, group droppers, 2775."""
        root = self.base / name
        root.mkdir()
        os.chown(root, self.daemon_uid, self.droppers_gid)
        os.chmod(root, 0o2775)
        return root

    def daemon(self, config: Path, log: Path, **kwargs: Any) -> DaemonProc:
        """The daemon as the unit runs it: its own user, in droppers, ``UMask=0002``."""
        return DaemonProc(config, log, uid=self.daemon_uid,
                          gids=(self.daemon_uid, self.droppers_gid),
                          preexec=lambda: os.umask(0o002) and None, **kwargs)

    def as_dropper(self, script: str, umask: int = 0o002) -> None:
        """Run a shell snippet as the dropper (member of droppers only)."""
        subprocess.run(["/bin/sh", "-c", script], user=self.dropper_uid,
                       group=self.droppers_gid, extra_groups=[], umask=umask, check=True,
                       cwd=self.base, timeout=30)

    def as_daemon_user(self, path: Path, mode: int) -> None:
        os.chown(path, self.daemon_uid, self.daemon_uid)
        os.chmod(path, mode)


@pytest.fixture
def users() -> Iterator[Users]:
    if os.geteuid() != 0:
        pytest.skip("switching to other users needs root")
    base = Path(tempfile.mkdtemp(prefix="bulkdrop-users-"))
    os.chmod(base, 0o755)  # below /tmp, reachable by the daemon user and the dropper
    try:
        yield Users(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
