"""5. Backlog: `--backlog` files (100,000) already in inbox/ when the daemon starts.

Time from the daemon's exec to its first POST (the first job's `createdDate` at the
simulator), and its peak RSS after `--backlog-seconds` of work, against the same
measured with 100 files in the same run. The files are those of bench/backlog.py
(one row each, mtime an hour back) in inbox/contact/.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

from bench.backlog import make_backlog
from bench.common import CpuWindow, Daemon, Row, Sim, log, peak_rss_mb, wait_until

BASELINE_FILES = 100


async def one(sim: Sim, work: Path, files: int, seconds: float) -> dict[str, Any]:
    daemon = Daemon(work, sim.base_url)
    started = time.monotonic()
    make_backlog(daemon.inbox, files)
    made = time.monotonic() - started
    jobs = (await sim.state())["jobs"]
    known = set(await sim.job_times())

    async def posted() -> bool:
        return (await sim.state())["jobs"] > jobs

    async with daemon:
        window = CpuWindow({"daemon": daemon.pid, "sim": sim.pid})
        await wait_until(posted, 120, 0.02, daemon.check_alive, "the first upload")
        times = await sim.job_times()
        first = min(at for job_id, (_, at) in times.items() if job_id not in known)
        first_s = first - daemon.started_at
        await asyncio.sleep(seconds)
        daemon.check_alive()
        rss = peak_rss_mb(daemon.pid)
        window.stop()
        filed = daemon.results()
        created = (await sim.state())["jobs"] - jobs
    shutil.rmtree(work, ignore_errors=True)
    return {"files": files, "made_s": made, "first_post_s": first_s, "peak_rss_mb": rss,
            "jobs_created": created, "files_filed": filed, **window.as_dict()}


async def run(args: argparse.Namespace, work: Path) -> tuple[list[Row], dict[str, Any]]:
    n, seconds = args.backlog, args.backlog_seconds
    async with Sim(work / "sim", job_seconds=0.0) as sim:
        log(f"backlog: {BASELINE_FILES} files")
        base = await one(sim, work / "small", BASELINE_FILES, seconds)
        log(f"backlog: {n:,} files")
        big = await one(sim, work / "big", n, seconds)
        log(f"backlog: made {n:,} files in {big['made_s']:.1f} s")
    note = (f"{big['files_filed']:,} filed in the first {big['wall_s']:.0f} s; "
            f"daemon CPU share {big['daemon_cpu_share']:.2f}")
    rows = [
        Row("backlog", f"first POST, {n:,} files waiting", big["first_post_s"], "s",
            f"{BASELINE_FILES} files waiting", base["first_post_s"], "s", "< 1 s",
            big["first_post_s"] < 1, big["sim_cpu_share"]),
        Row("backlog", f"peak RSS, {n:,} files waiting", big["peak_rss_mb"], "MB",
            f"{BASELINE_FILES} files waiting", base["peak_rss_mb"], "MB", "<= 250 MB",
            big["peak_rss_mb"] <= 250, big["sim_cpu_share"], note),
    ]
    return rows, {"baseline": base, "backlog": big}
