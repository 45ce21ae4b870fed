"""7. A year of files: the daemon on a spool that has been busy for months.

The same daemon is measured twice in one run: on an empty spool (the baseline), then on
a spool holding `--year-rows` finished files (1,000,000) in its ledger, each with four
history lines and a ~400-byte result, 90% finished over the last 85 days and 10%
91-99 days back (beyond the default 90-day retention: the daemon's first prune pass, a
minute after start, deletes them), written in the order they finished, and their CSVs
and result files in done/, laid out by day (`[spool] done_layout = "daily"`; hard links,
at most 60,000 to an inode). On each:

- throughput: `--files` small files (2,000) dropped at once, as scenario 1, three times
  (the median counts);
- `bulkdrop status` run as a user would (a new process), wall time, median of 3;
- the web view's pages (/, /api/status, /api/files?limit=100, a filtered list, a page
  far back, one file's page), slowest of 5 requests each;
- once its first prune pass has begun (a minute after start; 10% of the files finished
  91-99 days back, beyond the default 90-day retention), another drop: files/s while
  old files are deleted;
- the daemon's peak RSS after all of that;
- then `--backlog` files (100,000) are put in inbox/ and the daemon started again: the
  time from its exec to its first POST; then it is killed (SIGKILL) and started once
  more, which reads the ledger through before it goes on (information).

    python -m bench --only year --year-rows 200000     # a smaller spool
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import sqlite3
import statistics
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bench.backlog import make_backlog
from bench.common import (
    CODE,
    CpuWindow,
    Daemon,
    Row,
    Sim,
    child_env,
    drop,
    last_result_mtime,
    log,
    peak_rss_mb,
    stage_small,
    wait_until,
)
from daemon.ledger import Ledger

DAYS = 85                 # finished over this many days back (retention: 90)
RETENTION = 90            # [spool] ledger_retention_days, the default
OLD_SHARE = 0.1           # of the files finished 91-99 days back: pruned a minute after start
LINKS_PER_INODE = 60_000  # ext4 allows 65,000
BATCH = 50_000            # ledger rows per executemany
RESULT = ('{{"file": "contact/f{i}.csv", "status": "COMPLETE", "reason": "job {job} '
          'completed: 10 records", "records": {{"total": 10, "failed": 0, "succeeded": '
          '10}}, "job_id": "{job}", "errors": [], "errors_all": []}}')
ROUNDS = 3               # drops of --files files on each spool: the median counts
PAGES = ("/", "/api/status", "/api/files?limit=100", "/?status=FAILED",
         "/api/files?limit=100&status=partial&object=contact")


def _stamp(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds")


async def fill_ledger(path: Path, rows: int) -> list[str]:
    """*rows* finished files in the ledger, written in bulk; some claim ids to visit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(path)
    await ledger.open()  # its schema, as the daemon makes it
    await ledger.close()
    rng = random.Random(11)
    now = datetime.now(UTC)
    # Written in the order they finished, as the daemon writes them (history by seq).
    old = int(rows * OLD_SHARE)
    ages = sorted((rng.uniform(RETENTION + 1, RETENTION + 9) if i < old
                   else rng.uniform(60 / 86400, DAYS)) for i in range(rows))[::-1]
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    sample: list[str] = []
    with conn:
        for start in range(0, rows, BATCH):
            files, events = [], []
            for i in range(start, min(rows, start + BATCH)):
                finished = now - timedelta(days=ages[i])
                stamp = _stamp(finished)
                claim = f"{int(finished.timestamp() * 1000):012x}{i:08x}"
                outcome = rng.choices(("COMPLETE", "FAILED", "REJECTED"), (90, 6, 4))[0]
                failed = rng.choice((0, 0, 0, 1, 3)) if outcome == "COMPLETE" else None
                day = finished.astimezone().date().isoformat()
                files.append((claim, f"contact/f{i}.csv", f"processing/bench/{claim}__f{i}.csv",
                              "FINISHED", "contact", "marketing", str(10**6 + i), stamp, stamp,
                              stamp, outcome, f"job {10**6 + i} {outcome}",
                              RESULT.format(i=i, job=10**6 + i),
                              f"done/{day}/contact/f{i}.csv", stamp, 10, failed))
                events += [(claim, stamp, state, "") for state in
                           ("CLAIMED", "SUBMITTED", "FINISHING", "FINISHED")]
                if i % (rows // 20 or 1) == 0:
                    sample.append(claim)
            conn.executemany(
                "INSERT INTO files (claim_id, rel_path, claimed_path, state, object, hub,"
                " job_id, received_at, submitted_at, finished_at, outcome, reason, result_json,"
                " dest_path, updated_at, records_total, records_failed) VALUES"
                " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", files)
            conn.executemany("INSERT INTO events (claim_id, at, state, detail)"
                             " VALUES (?, ?, ?, ?)", events)
    conn.close()
    return sample


def fill_done(done: Path, files: int) -> None:
    """*files* CSVs and their result files in done/<day>/contact/, as hard links."""
    seeds = done.parent / ".bench-seeds"
    seeds.mkdir(parents=True, exist_ok=True)
    today = date.today()
    folders: dict[int, int] = {}
    for d in range(DAYS):
        path = done / (today - timedelta(days=d + 1)).isoformat() / "contact"
        path.mkdir(parents=True, exist_ok=True)
        folders[d] = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        seed = b""
        for i in range(files):
            if i % LINKS_PER_INODE == 0:
                seed = os.fsencode(seeds / f"s{i}")
                Path(os.fsdecode(seed) + ".csv").write_bytes(b"email,name\nu@example.com,U\n")
                Path(os.fsdecode(seed) + ".json").write_bytes(RESULT.format(i=i, job=i).encode())
            fd = folders[i % DAYS]
            os.link(seed + b".csv", f"f{i}.csv", dst_dir_fd=fd)
            os.link(seed + b".json", f"f{i}.csv.result.json", dst_dir_fd=fd)
    finally:
        for fd in folders.values():
            os.close(fd)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _daemon(sim: Sim, work: Path, port: int) -> Daemon:
    daemon = Daemon(work, sim.base_url, http__listen=f"127.0.0.1:{port}",
                    spool__done_layout="daily")
    daemon.done = daemon.root / "done" / date.today().isoformat() / "contact"
    return daemon


async def _status_seconds(daemon: Daemon) -> float:
    """`bulkdrop status` as a user runs it: a new process, reading the ledger."""
    times = []
    for _ in range(3):
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "status", "--config", str(daemon.config),
            cwd=CODE["dir"], env=child_env(), stdout=asyncio.subprocess.DEVNULL)
        if await proc.wait():
            raise SystemExit(f"bulkdrop status exited with {proc.returncode}")
        times.append(time.monotonic() - started)
    return statistics.median(times)


async def _pages(port: int, claims: list[str]) -> dict[str, float]:
    """The slowest of 5 requests of each page, in seconds."""
    base = f"http://127.0.0.1:{port}"
    paths = list(PAGES)
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/api/files?limit=100") as resp:
            first = await resp.json()
        for _ in range(20):  # 2,000 files back
            if not first["next"]:
                break
            async with http.get(base + "/api/files", params={
                    "limit": "100", "before": first["next"]}) as resp:
                first = await resp.json()
        if first["next"]:
            paths.append(f"/?before={first['next']}")
        paths += [f"/files/{claim}" for claim in claims[-1:]]
        slowest: dict[str, float] = {}
        for path in paths:
            times = []
            for _ in range(5):
                started = time.monotonic()
                async with http.get(base + path) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise SystemExit(f"GET {path}: HTTP {resp.status}")
                times.append(time.monotonic() - started)
            slowest[path] = max(times)
    return slowest


async def _first_post(sim: Sim, daemon: Daemon) -> float:
    """Start the daemon; seconds from its exec to its first POST. Left running."""
    jobs = (await sim.state())["jobs"]
    known = set(await sim.job_times())

    async def posted() -> bool:
        return (await sim.state())["jobs"] > jobs

    await daemon.start()
    await wait_until(posted, 120, 0.02, daemon.check_alive, "the first upload")
    times = await sim.job_times()
    return min(at for job_id, (_, at) in times.items() if job_id not in known) - daemon.started_at


def _old_rows(daemon: Daemon) -> int:
    """Finished files older than the retention still in the ledger (read-only)."""
    before = _stamp(datetime.now(UTC) - timedelta(days=RETENTION))
    db = daemon.root / ".state" / "bench" / "bulkdrop.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM files WHERE finished_at < ?",
                                (before,)).fetchone()[0])


async def _while_pruning(daemon: Daemon, files: int) -> dict[str, Any]:
    """Once the daemon's first prune pass (a minute after start) has begun: a drop of
    *files* files, and how many old files went while they were filed."""
    at_start = await asyncio.to_thread(_old_rows, daemon)
    await wait_until(lambda: _old_rows(daemon) < at_start, 180, 0.2, daemon.check_alive,
                     "the first prune pass")
    names = [f"p-{i:06}.csv" for i in range(files)]
    stage_small(daemon.stage, names)
    before = await asyncio.to_thread(_old_rows, daemon)
    want = daemon.results() + files
    first = drop(daemon.stage, daemon.inbox, names)
    await wait_until(lambda: daemon.results() >= want, 600, 0.1, daemon.check_alive,
                     f"{files} result files while pruning")
    seconds = last_result_mtime(daemon.done) - first
    after = await asyncio.to_thread(_old_rows, daemon)
    return {"files_per_s": files / seconds, "old_rows_at_start": at_start,
            "pruned_during_drop": before - after, "old_rows_left": after}


async def one(sim: Sim, work: Path, files: int, rows: int, backlog: int) -> dict[str, Any]:
    port = _free_port()
    daemon = _daemon(sim, work, port)
    claims: list[str] = []
    built = time.monotonic()
    if rows:
        log(f"year: {rows:,} ledger rows")
        claims = await fill_ledger(daemon.root / ".state" / "bench" / "bulkdrop.db", rows)
        log(f"year: {rows:,} CSVs and results in done/, hard links")
        fill_done(daemon.root / "done", rows)
    built = time.monotonic() - built
    rounds = [[f"y{r}-{i:06}.csv" for i in range(files)] for r in range(ROUNDS)]
    for names in rounds:
        stage_small(daemon.stage, names)
    rates = []
    async with daemon:
        await daemon.warm_up(limit=120)
        window = CpuWindow({"sim": sim.pid, "daemon": daemon.pid})
        for n, names in enumerate(rounds, 1):
            first = drop(daemon.stage, daemon.inbox, names)
            want = n * files + 1
            await wait_until(lambda: daemon.results() >= want, 600, 0.1,  # noqa: B023
                             daemon.check_alive, f"{n * files} result files")
            rates.append(files / (last_result_mtime(daemon.done) - first))
        window.stop()
        status_s = await _status_seconds(daemon)
        pages = await _pages(port, claims)
        pruning = await _while_pruning(daemon, files) if rows else {}
        daemon.check_alive()
        rss = peak_rss_mb(daemon.pid)
    failed = sum(1 for _ in daemon.failed.glob("*.result.json")) if daemon.failed.exists() else 0
    # The backlog start: files waiting in inbox/ when the daemon starts (after a clean
    # stop), then again after it is killed with them half taken.
    make_backlog(daemon.inbox, backlog)
    try:
        first_post = await _first_post(sim, daemon)
        os.kill(daemon.pid, signal.SIGKILL)
        await daemon.stop()
        after_kill = await _first_post(sim, daemon)
    finally:
        await daemon.stop()
    return {"rows": rows, "built_s": round(built, 1), "files": files,
            "files_per_s": statistics.median(rates), "rates": rates, "failed": failed,
            "status_s": status_s, "pages_s": pages, "peak_rss_mb": rss, "first_post_s": first_post,
            "first_post_after_kill_s": after_kill, "backlog": backlog, "pruning": pruning,
            **window.as_dict()}


async def run(args: argparse.Namespace, work: Path) -> tuple[list[Row], dict[str, Any]]:
    async with Sim(work / "sim", job_seconds=0.0) as sim:
        log(f"year: empty spool, {args.files} files")
        empty = await one(sim, work / "empty", args.files, 0, args.backlog)
        log(f"year: a year's spool, {args.files} files")
        full = await one(sim, work / "full", args.files, args.year_rows, args.backlog)
    rows_k = f"{args.year_rows:,} files"
    slow_path = max(full["pages_s"], key=full["pages_s"].get)
    slowest, base_slowest = full["pages_s"][slow_path], max(empty["pages_s"].values())
    note = (f"spool built in {full['built_s']:.0f} s; slowest page {slow_path}; "
            + ", ".join(f"{p} {s * 1000:.0f} ms" for p, s in full["pages_s"].items()))
    if full["failed"] or empty["failed"]:
        note += f"; FAILED files: {empty['failed']} empty, {full['failed']} full"
    rate, base_rate = full["files_per_s"], empty["files_per_s"]
    rows = [
        Row("year", f"daemon, {args.files} files, {rows_k} finished", rate, "files/s",
            "empty spool", base_rate, "files/s", ">= 0.9x empty", rate >= 0.9 * base_rate,
            full["sim_cpu_share"]),
        Row("year", f"daemon, {args.files} files, while pruning", full["pruning"]["files_per_s"],
            "files/s", "empty spool", base_rate, "files/s", ">= 0.9x empty",
            full["pruning"]["files_per_s"] >= 0.9 * base_rate, None,
            f"{full['pruning']['pruned_during_drop']:,} old files pruned during the drop, "
            f"{full['pruning']['old_rows_left']:,} of "
            f"{full['pruning']['old_rows_at_start']:,} left"),
        Row("year", f"bulkdrop status, {rows_k}", full["status_s"], "s", "empty spool",
            empty["status_s"], "s", "< 1 s", full["status_s"] < 1),
        Row("year", f"slowest web page, {rows_k}", slowest * 1000, "ms", "empty spool",
            base_slowest * 1000, "ms", "< 200 ms", slowest < 0.2, None, note),
        Row("year", f"peak RSS, {rows_k}", full["peak_rss_mb"], "MB", "empty spool",
            empty["peak_rss_mb"], "MB", "< 150 MB", full["peak_rss_mb"] < 150),
        Row("year", f"first POST, {args.backlog:,} waiting, {rows_k}", full["first_post_s"],
            "s", "empty spool", empty["first_post_s"], "s", "< 1 s", full["first_post_s"] < 1),
        Row("year", f"first POST after kill -9, {rows_k}", full["first_post_after_kill_s"],
            "s", "empty spool", empty["first_post_after_kill_s"], "s", "(information)", None,
            None, "the ledger is read through after an unclean stop"),
    ]
    return rows, {"empty": empty, "full": full}
