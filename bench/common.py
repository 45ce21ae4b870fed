"""Pieces the benchmarks share: the simulator and the daemon as subprocesses, /proc
counters, staging and dropping files, waiting for results.

The benchmark process itself only drops files, watches for results and reads counters
(the simulator's `/_sim/state`, `/proc/<pid>/stat` and `/proc/<pid>/status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
MB = 1_000_000
MIB = 1024 * 1024
AUTH = "User u, Element e"
SECRETS = {"BULKDROP_API_USER_SECRET": "u", "BULKDROP_API_ELEMENT_TOKEN": "e"}
OLD = 3600.0  # files are dropped with an mtime this many seconds back: settled at once
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Where the daemon and simulator subprocesses import `daemon` from: the working tree, or
# the snapshot of it taken when the run started (see snapshot_daemon).
CODE = {"dir": ROOT}


# -- the code under test ------------------------------------------------------------------

def fingerprint(package: Path) -> str:
    """sha256 over the paths and contents of the package's .py files."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def snapshot_daemon(dest: Path) -> str:
    """Copy daemon/ into *dest* and run every subprocess from that copy.

    Others may edit the working tree while a run goes on; with the copy, every scenario
    measures the same code, the code as it was when the run started. The fingerprint.
    """
    shutil.copytree(ROOT / "daemon", dest / "daemon",
                    ignore=shutil.ignore_patterns("__pycache__"))
    CODE["dir"] = dest
    return fingerprint(dest / "daemon")


def child_env(**extra: str) -> dict[str, str]:
    """Environment of a subprocess started in CODE["dir"]: `bench` still importable."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


# -- /proc counters -----------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) in MB (10^6 bytes)."""
    return _status_kib(pid, "VmHWM") * 1024 / MB


def children_peak_rss_mb(pid: int) -> float:
    """The largest peak RSS (VmHWM, MB) among the processes *pid* has running now (a
    child started from any of its threads); 0 when it has none."""
    peak = 0.0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                peak = max(peak, peak_rss_mb(int(child)))
            except (OSError, ValueError):
                continue  # it ended meanwhile
    return peak


def rss_mb(pid: int) -> float:
    return _status_kib(pid, "VmRSS") * 1024 / MB


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches summed over every thread: wake-ups."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


@dataclass
class CpuWindow:
    """CPU seconds of some processes over a stretch of wall-clock time."""
    pids: dict[str, int]
    start: float = field(default_factory=time.monotonic)
    cpu0: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    used: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> CpuWindow:
        self.wall = time.monotonic() - self.start
        self.used = {name: cpu_seconds(pid) - self.cpu0[name] for name, pid in self.pids.items()}
        return self

    def share(self, name: str) -> float:
        """CPU seconds per wall second: 1.0 is one core busy all the time."""
        return self.used[name] / self.wall if self.wall else 0.0

    def as_dict(self) -> dict[str, float]:
        out = {"wall_s": round(self.wall, 3)}
        for name in self.pids:
            out[f"{name}_cpu_s"] = round(self.used[name], 3)
            out[f"{name}_cpu_share"] = round(self.share(name), 3)
        return out


# -- processes ----------------------------------------------------------------------------

async def stop_process(proc: asyncio.subprocess.Process, grace: float = 30.0) -> int:
    """SIGTERM, then SIGKILL after *grace* seconds; the exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


class Sim:
    """The simulator in its own process (`python -m bench.simproc`), and a client for it."""

    def __init__(self, workdir: Path, job_seconds: float = 0.0, check_emails: bool = False):
        self.workdir = workdir
        self.job_seconds = job_seconds
        self.check_emails = check_emails
        self.proc: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.base_url = self.root_url = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def __aenter__(self) -> Sim:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = ["--host", "127.0.0.1", "--port", "0", "--job-seconds", str(self.job_seconds)]
        if not self.check_emails:
            args.append("--no-fail-invalid-emails")
        with open(self.workdir / "sim.log", "wb") as log:  # noqa: ASYNC230 (tiny, local)
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.simproc", *args, cwd=CODE["dir"], env=child_env(),
                stdout=asyncio.subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode()
        if " at " not in line:
            raise SystemExit(f"the simulator did not start: {line!r}, see {self.workdir}")
        self.base_url = line.rsplit(" at ", 1)[1].strip()
        self.root_url = self.base_url.removesuffix("/elements/api-v2")
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        # Bodies of up to 16 MiB are kept for tests by default: not wanted here.
        await self.control("PATCH", "/_sim/config", json={"keep_bodies": False})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            await stop_process(self.proc, 10)

    async def control(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self.session is not None
        async with self.session.request(method, self.root_url + path, **kwargs) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def state(self) -> dict[str, Any]:
        return await self.control("GET", "/_sim/state")

    async def job_times(self) -> dict[str, tuple[str, float]]:
        """Job id -> (multipart file name, creation time as a Unix timestamp, ms precision).

        `/_sim/jobs` names the files; the API's job list has `createdDate`.
        """
        jobs = await self.control("GET", "/_sim/jobs")
        listing = await self.control(
            "GET", "/elements/api-v2/hubs/marketing/bulk/jobs",
            params={"pageSize": str(len(jobs) + 10_000)}, headers={"Authorization": AUTH})
        created = {str(j["id"]): datetime.fromisoformat(j["createdDate"]).timestamp()
                   for j in listing}
        # A daemon at work makes jobs between the two requests: only those in both.
        return {str(j["id"]): (j["filename"] or j["name"] or "", created[str(j["id"])])
                for j in jobs if str(j["id"]) in created}

    def cpu(self) -> float:
        return cpu_seconds(self.pid)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


class Daemon:
    """`python -m daemon run --config c.toml` in its own process, with its own spool.

    *settings* override the defaults below as {"section.key": value}.
    """

    DEFAULTS: dict[str, Any] = {
        "spool.node_id": "bench",
        "workers.uploads": 4,
        "workers.max_active_jobs": 32,
        "workers.poll_interval_seconds": 0.05,
        "workers.poll_max_interval_seconds": 0.2,
        "workers.shutdown_grace_seconds": 5,
        "http.listen": "",
        "log.level": "warning",
        "log.format": "json",
    }

    def __init__(self, workdir: Path, base_url: str, **settings: Any) -> None:
        self.workdir = workdir
        self.root = workdir / "spool"
        self.inbox = self.root / "inbox" / "contact"
        self.done = self.root / "done" / "contact"
        self.failed = self.root / "failed" / "contact"
        self.stage = self.root / "stage"   # same file system as inbox/: renames are atomic
        for folder in (self.inbox, self.stage):
            folder.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "bulkdrop.toml"
        values = {**self.DEFAULTS, "api.base_url": base_url, "spool.root": str(self.root),
                  **{k.replace("__", "."): v for k, v in settings.items()}}
        sections: dict[str, list[str]] = {}
        for key, value in values.items():
            section, name = key.split(".", 1)
            sections.setdefault(section, []).append(f"{name} = {toml_value(value)}")
        self.config.write_text("".join(f"[{s}]\n" + "\n".join(lines) + "\n"
                                       for s, lines in sections.items()))
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> float:
        """Start the process; the wall-clock time just before the exec."""
        env = child_env(**SECRETS)
        self.started_at = time.time()
        with open(self.workdir / "daemon.log", "ab") as log:  # noqa: ASYNC230 (tiny, local)
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "daemon", "run", "--config", str(self.config), env=env,
                cwd=CODE["dir"], stdout=asyncio.subprocess.DEVNULL, stderr=log)
        return self.started_at

    async def stop(self) -> int:
        return await stop_process(self.proc) if self.proc is not None else 0

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            log = (self.workdir / "daemon.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"the daemon exited with {self.proc.returncode}:\n{log}")

    def results(self) -> int:
        """Result files in done/contact/ and failed/contact/."""
        return count_results(self.done) + count_results(self.failed)

    async def warm_up(self, limit: float = 60.0) -> None:
        """Drop one file and wait for its result: the daemon is up, connected and warm."""
        before = self.results()
        stage_small(self.stage, ["warmup.csv"])
        drop(self.stage, self.inbox, ["warmup.csv"])
        await wait_until(lambda: self.results() > before, limit, 0.02, self.check_alive,
                         "the warm-up file was not filed")
        if count_results(self.failed):
            raise SystemExit(f"the warm-up file failed: see {self.failed}")


# -- files --------------------------------------------------------------------------------

def small_csv(i: int, rows: int = 10) -> bytes:
    """A small, valid contact file; *i* makes its rows (and its sha256) unique."""
    lines = ["email,first_name,last_name,company"]
    lines += [f"user{i}.{r}@example.com,First{r},Last{i},Company {i % 97}" for r in range(rows)]
    return ("\r\n".join(lines) + "\r\n").encode()


def stage_small(stage: Path, names: Iterable[str], rows: int = 10, start: int = 0) -> None:
    """Write small CSV files into *stage*, with an mtime an hour back."""
    stage.mkdir(parents=True, exist_ok=True)
    old = time.time() - OLD
    for i, name in enumerate(names, start):
        path = stage / name
        path.write_bytes(small_csv(i, rows))
        os.utime(path, (old, old))


def drop(stage: Path, inbox: Path, names: Iterable[str]) -> float:
    """Rename files from *stage* into *inbox*; the wall-clock time of the first rename."""
    first = 0.0
    for name in names:
        at = time.time()
        os.rename(stage / name, inbox / name)
        first = first or at
    return first


def count_results(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if e.name.endswith(".result.json"))
    except FileNotFoundError:
        return 0


def last_result_mtime(folder: Path, exclude: str = "warmup.csv") -> float:
    """The latest mtime of a result file: when the last one was written."""
    return max(e.stat().st_mtime for e in os.scandir(folder)
               if e.name.endswith(".result.json") and not e.name.startswith(exclude))


async def wait_until(ready: Callable[[], bool | Awaitable[bool]], limit: float,
                     interval: float, check: Callable[[], None] | None = None,
                     what: str = "condition") -> float:
    """Poll until *ready()* is true; the monotonic time it was seen true."""
    deadline = time.monotonic() + limit
    while True:
        value = ready()
        if not isinstance(value, bool):
            value = await value
        if value:
            return time.monotonic()
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {limit:g} s: {what}")
        await asyncio.sleep(interval)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def run_client(main: Coroutine[Any, Any, T], on_uvloop: bool) -> T:
    """Run a benchmark client's *main* on asyncio's loop, or on uvloop (the daemon's)."""
    if not on_uvloop:
        return asyncio.run(main)
    import uvloop
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the table ----------------------------------------------------------------------------

@dataclass
class Row:
    """One figure of the table, its baseline from the same run and its target."""
    scenario: str
    figure: str
    value: float
    unit: str
    baseline: str = ""
    base_value: float | None = None
    base_unit: str = ""
    target: str = ""
    met: bool | None = None
    sim_cpu: float | None = None   # simulator CPU share (1.0 = one core) while measured
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.base_value is None or not self.base_value:
            return None
        return self.value / self.base_value

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["ratio"] = None if self.ratio is None else round(self.ratio, 3)
        return out
