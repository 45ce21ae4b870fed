"""2. Latency: files renamed into inbox/ one at a time; drop-to-POST p50 and p95.

Each file is written into a staging folder on the same file system, given an mtime an
hour back, then renamed into inbox/contact/, one every `--latency-gap` seconds (plus 0-50
ms of jitter) so each is measured alone. That is the realistic drop pattern (write
elsewhere, `mv` in): the file is complete when it appears, and its old mtime tells the
daemon it has settled, so it is claimed at once instead of after `settle_seconds` (1.0,
the default, kept here). A file written in place would wait those 1.0 s by design.

Drop time: the wall clock just before the rename (this process). POST time: the job's
`createdDate` at the simulator (same machine clock, millisecond precision), set when the
upload has been read, which for a 10-row file is well under a millisecond after the
request arrives. Baseline, same run: bench/minwatch.py, a bare watchfiles + aiohttp
uploader (no settle check, claim, ledger or validation).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    CpuWindow,
    Daemon,
    Row,
    Sim,
    drop,
    log,
    percentile,
    stage_small,
    stop_process,
    wait_until,
)


async def rename_one_by_one(sim: Sim, stage: Path, inbox: Path, names: list[str],
                            gap: float, check: Any) -> tuple[list[float], CpuWindow]:
    """Drop each file alone; latencies in ms (POST time minus rename time).

    The pause is *gap* plus 0-50 ms of (seeded) jitter, so the drops fall at every phase
    of the watcher's polling step instead of locking onto one.
    """
    before = (await sim.state())["jobs"]
    window = CpuWindow({"sim": sim.pid})
    dropped: dict[str, float] = {}
    jitter = random.Random(1)
    for name in names:
        dropped[name] = drop(stage, inbox, [name])
        await asyncio.sleep(gap + jitter.uniform(0, 0.05))

    async def all_there() -> bool:
        return (await sim.state())["jobs"] >= before + len(names)

    await wait_until(all_there, 30, 0.05, check, "a job for every dropped file")
    window.stop()
    created = {name: at for name, at in (await sim.job_times()).values()}
    return [(created[name] - dropped[name]) * 1000 for name in names], window


async def daemon_latency(sim: Sim, work: Path, names: list[str], gap: float
                         ) -> dict[str, Any]:
    daemon = Daemon(work, sim.base_url, spool__settle_seconds=1.0)
    stage_small(daemon.stage, names)
    async with daemon:
        await daemon.warm_up()
        await asyncio.sleep(0.5)
        cpu = CpuWindow({"daemon": daemon.pid})
        ms, window = await rename_one_by_one(sim, daemon.stage, daemon.inbox, names, gap,
                                             daemon.check_alive)
        cpu.stop()
    return {"ms": [round(v, 2) for v in ms], "p50_ms": percentile(ms, 50),
            "p95_ms": percentile(ms, 95), "max_ms": max(ms), **window.as_dict(),
            "daemon_cpu_s": round(cpu.used["daemon"], 3)}


async def baseline_latency(sim: Sim, work: Path, names: list[str], gap: float
                           ) -> dict[str, Any]:
    inbox, stage = work / "inbox", work / "stage"
    inbox.mkdir(parents=True)
    stage_small(stage, ["warmup.csv", *names])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.minwatch", "--base-url", sim.base_url, "--dir",
        str(inbox), cwd=ROOT)

    def check() -> None:
        if proc.returncode is not None:
            raise SystemExit(f"bench.minwatch exited with {proc.returncode}")

    try:
        # The watch is live once a file dropped after start has become a job.
        jobs = (await sim.state())["jobs"]
        await asyncio.sleep(0.5)
        drop(stage, inbox, ["warmup.csv"])

        async def warm() -> bool:
            return (await sim.state())["jobs"] > jobs

        await wait_until(warm, 30, 0.05, check, "the baseline uploader's warm-up job")
        await asyncio.sleep(0.5)
        ms, window = await rename_one_by_one(sim, stage, inbox, names, gap, check)
    finally:
        await stop_process(proc, 10)
    return {"ms": [round(v, 2) for v in ms], "p50_ms": percentile(ms, 50),
            "p95_ms": percentile(ms, 95), "max_ms": max(ms), **window.as_dict()}


async def run(args: argparse.Namespace, work: Path) -> tuple[list[Row], dict[str, Any]]:
    n, gap = args.latency_files, args.latency_gap
    async with Sim(work / "sim", job_seconds=0.0) as sim:
        log(f"latency: daemon, {n} files {gap:g} s apart")
        daemon = await daemon_latency(sim, work / "daemon", [f"d{i:04}.csv" for i in range(n)],
                                      gap)
        log(f"latency: minimal watcher baseline, {n} files")
        base = await baseline_latency(sim, work / "minwatch",
                                      [f"b{i:04}.csv" for i in range(n)], gap)
    share = daemon["sim_cpu_share"]
    rows = [
        Row("latency", f"drop-to-POST p50, {n} files", daemon["p50_ms"], "ms",
            "bare watchfiles+aiohttp uploader p50", base["p50_ms"], "ms", "<= 2x bare",
            daemon["p50_ms"] <= 2 * base["p50_ms"], share),
        Row("latency", f"drop-to-POST p95, {n} files", daemon["p95_ms"], "ms",
            "bare watchfiles+aiohttp uploader p95", base["p95_ms"], "ms", "<= 3x bare",
            daemon["p95_ms"] <= 3 * base["p95_ms"], share, f"max {daemon['max_ms']:.0f} ms"),
    ]
    return rows, {"daemon": daemon, "baseline": base}
