"""systemd integration: sd_notify to a real datagram socket, the unit file, credentials."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.sim import SimServer
from daemon.systemd import Notifier
from tests.helpers import contacts_csv, drop, result_of, wait_for
from tests.procs import write_config

UNIT = Path(__file__).parent.parent / "config" / "bulkdrop.service"


class Datagrams:
    """A bound unix datagram socket collecting what is sent to it, with arrival times."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 65536)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in self.messages if key in m]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.sock.close()


async def test_notify_ready_status_watchdog_stopping_in_order(sim: SimServer,
                                                              tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    notify = Datagrams(address)
    root = tmp_path / "spool"
    config = write_config(tmp_path / "c.toml", sim.base_url, root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKDROP_")}
    env.update(NOTIFY_SOCKET=address, WATCHDOG_USEC="400000",  # a ping every 0.2 s
               BULKDROP_API_USER_SECRET="u", BULKDROP_API_ELEMENT_TOKEN="e")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "run", "--config", str(config), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_for(lambda: notify.with_key("READY"), what="READY=1")
        drop(root, "contact/n.csv", contacts_csv(2))
        await wait_for(lambda: any("done 1" in m.get("STATUS", "") for _, m in notify.messages),
                       what="a STATUS line counting the file")
        await wait_for(lambda: len(notify.with_key("WATCHDOG")) >= 8, what="watchdog pings")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        await wait_for(lambda: notify.with_key("STOPPING"), what="STOPPING=1")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await notify.close()
    ready_at, ready = notify.with_key("READY")[0]
    assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
    assert "jobs running" in ready["STATUS"]
    stopping_at = notify.with_key("STOPPING")[0][0]
    assert ready_at < stopping_at
    pings = [t for t, _ in notify.with_key("WATCHDOG")]
    assert all(ready_at <= t <= stopping_at for t in pings)
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert 0.1 <= statistics.median(gaps) <= 0.35, gaps
    assert result_of(root / "done" / "contact" / "n.csv")["status"] == "COMPLETE"


async def test_abstract_socket_names_are_understood(tmp_path: Path) -> None:
    name = f"bulkdrop-test-{os.getpid()}-{time.monotonic_ns()}"
    notify = Datagrams("\0" + name)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("up")
        await wait_for(lambda: notify.with_key("READY"), what="READY on the abstract socket")
        notifier.close()
    finally:
        await notify.close()
    assert Notifier({}).enabled is False


def test_unit_file_has_the_promised_settings_and_verifies(tmp_path: Path) -> None:
    text = UNIT.read_text()
    keys = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert keys["Type"] == "notify"
    for key in ("User", "Group", "StateDirectory", "ReadWritePaths"):
        assert keys.get(key), key
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"),
                       ("PrivateTmp", "yes"), ("Restart", "on-failure")):
        assert keys[key] == value, key
    credentials = re.findall(r"^LoadCredential=(\w+):", text, re.M)
    assert sorted(credentials) == ["element_token", "organization_secret", "signature_key",
                                   "user_secret"]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the keys were checked above")
    # verify wants ExecStart to exist: point it at this checkout's entry point.
    copy = tmp_path / "bulkdrop.service"
    copy.write_text(text.replace("/opt/bulkdrop/bin/bulkdrop",
                                 str(Path(sys.executable).with_name("bulkdrop"))))
    run = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0 and run.stdout + run.stderr == "", run.stdout + run.stderr


async def test_secrets_from_credentials_and_files_reach_the_api(sim: SimServer,
                                                                    tmp_path: Path) -> None:
    sim.sim.config.user_secret, sim.sim.config.element_token = "cred-user-7a1", "cred-el-5b2"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "user_secret").write_text("cred-user-7a1\n")
    token_file = tmp_path / "element_token"     # this one through BULKDROP_..._FILE
    token_file.write_text("cred-el-5b2\n")
    root = tmp_path / "spool"
    config = write_config(tmp_path / "c.toml", sim.base_url, root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKDROP_")}
    env["CREDENTIALS_DIRECTORY"] = str(creds)
    env["BULKDROP_API_ELEMENT_TOKEN_FILE"] = str(token_file)
    log = tmp_path / "d.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "run", "--config", str(config), env=env,
            stdout=out, stderr=out)
    try:
        drop(root, "contact/c.csv", contacts_csv(2))
        done = root / "done" / "contact" / "c.csv.result.json"
        await wait_for(done.exists, what="the file done with credentials from systemd")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log.read_text() + done.read_text()
    assert "cred-user-7a1" not in text and "cred-el-5b2" not in text
