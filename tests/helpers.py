"""Shared test helpers: waiting with a deadline, dropping and claiming files, reading
results, asking a running daemon (HTTP, ``bulkdrop status``)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from daemon.placing import RESULT_SUFFIX, SIDECARS
from daemon.settings import Settings
from daemon.spool import Claimed, Spool

DATA = Path(__file__).parent / "data"


async def wait_for(condition: Callable[[], Any], timeout: float = 20.0,
                   interval: float = 0.02, what: str = "condition") -> Any:
    """Poll *condition* until truthy; fail the test with *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            if os.environ.get("BULKDROP_TEST_TASKS"):  # where every task of this loop waits
                for task in asyncio.all_tasks():
                    print(f"--- {task.get_name()}:", *_awaiting(task), sep="\n  ")
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def _awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The chain of awaits a suspended task is in, outermost first."""
    chain, coro = [], task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) \
            or getattr(coro, "ag_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) \
            or getattr(coro, "ag_await", None)
    return chain


def result_of(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.with_name(path.name + ".result.json").read_text())
    return data


async def result_when_filed(root: Path, where: str, rel: str,
                            timeout: float = 20) -> dict[str, Any]:
    """The result of *rel* once it is filed under *where* (done or failed)."""
    path = root / where / rel
    await wait_for(lambda: path.with_name(path.name + ".result.json").exists(), timeout,
                   what=f"{where}/{rel}")
    return result_of(path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finished(root: Path) -> list[Path]:
    """Every filed data file below done/ and failed/ whose result is there too (the file
    is placed a moment before its sidecars), not the sidecars themselves."""
    return sorted(p for base in (root / "done", root / "failed") if base.exists()
                  for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and not p.name.endswith(SIDECARS)
                  and p.with_name(p.name + RESULT_SUFFIX).exists())


def litter(root: Path) -> list[Path]:
    """Hidden files left in done/ or failed/ (an interrupted write that was never redone)."""
    return [p for base in (root / "done", root / "failed") if base.exists()
            for p in base.rglob(".*")]


def drop(root: Path, rel: str, data: bytes | str) -> Path:
    """Drop a file the way careful tools do: write elsewhere, rename into inbox/."""
    target = root / "inbox" / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".drop-{os.getpid()}-{time.monotonic_ns()}.tmp")  # any name fits
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.rename(target)
    return target


def contacts_csv(n: int, tag: str = "", bad_every: int = 0) -> str:
    rows = ["email,first_name,last_name"]
    for i in range(n):
        email = f"user{i}{tag}@example.com" if not bad_every or i % bad_every else f"user{i}"
        rows.append(f"{email},First{i},Last{tag}")
    return "\n".join(rows) + "\n"


SECRETS = {"BULKDROP_API_USER_SECRET": "u-5ecret-7f3a",
           "BULKDROP_API_ELEMENT_TOKEN": "el-t0ken-91c",
           "BULKDROP_API_ORGANIZATION_SECRET": "org-5ecret-22b"}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without BULKDROP_* settings, plus *extra*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKDROP_")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    """Wait (30 s at most) for a process started with pipes: (exit code, stdout, stderr)."""
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def new_spool(tmp_path: Path, node: str = "n1") -> Spool:
    spool = Spool(tmp_path / "spool", node)
    spool.ensure_layout()
    return spool


def claimed_file(spool: Spool, rel: str, data: bytes = b"a,b\n1,2\n") -> Claimed:
    """A file dropped under *rel* and claimed into processing/."""
    path = spool.inbox / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    claimed = spool.claim(path)
    assert claimed is not None
    return claimed


def left_in_processing(settings: Settings, rel: str, data: str) -> tuple[Spool, Path]:
    """A file left in processing/<node>/ by an earlier run."""
    spool = Spool(settings.spool.root, settings.spool.node_id)
    spool.ensure_layout()
    dropped = drop(settings.spool.root, rel, data)
    claimed = spool.claim(dropped)
    assert claimed is not None
    return spool, claimed.path


async def http_get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    """GET *url*: (status, body as text)."""
    async with http.get(url) as answer:
        return answer.status, await answer.text()


def bulkdrop_status(config: Path) -> str:
    """``bulkdrop status`` as an operator runs it (as root, beside the daemon)."""
    run = subprocess.run([sys.executable, "-m", "daemon", "status", "--config", str(config)],
                         capture_output=True, text=True, timeout=30, env=clean_env())
    return run.stdout + run.stderr
