"""1. Throughput: N small files (10 rows each) dropped at once, simulator job delay 0.

Files per second from the first drop to the last result file written, against
(a) the ceiling, bench/ceiling.py: the same API calls from a plain aiohttp client with the
    daemon's concurrency, run once before and once after the daemon (their mean counts),
(b) bench/curl_loop.sh: a sequential shell loop of curl create + status calls,
(c) the floor, bench/floor.py: the ceiling's calls plus what a lean Python uploader
    does to keep the daemon's durability design (claim, read, ledger, result fsync,
    filing), once after the ceiling's second run: near what a design of the daemon
    could reach (information).
Then the same number of files split between two connector instances, against two
ceiling clients run at once (each with one instance's limits).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH,
    ROOT,
    CpuWindow,
    Daemon,
    Row,
    Sim,
    count_results,
    drop,
    last_result_mtime,
    log,
    stage_small,
    wait_until,
)

UPLOADS, MAX_ACTIVE, POLL, POLL_MAX = 4, 32, 0.05, 0.2


def children_cpu() -> float:
    """CPU seconds of every child process waited for so far (curl, bash, the client)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def ceiling(sim: Sim, files: int, *extra: str) -> dict[str, Any]:
    window = CpuWindow({"sim": sim.pid})
    client0 = children_cpu()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.ceiling", "--base-url", sim.base_url, "--files",
        str(files), "--uploads", str(UPLOADS), "--max-active", str(MAX_ACTIVE), "--poll",
        str(POLL), "--poll-max", str(POLL_MAX), *extra, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode:
        raise SystemExit(f"bench.ceiling exited with {proc.returncode}")
    window.stop()
    result = json.loads(out)
    stats = window.as_dict()
    # Over the client's own timed stretch, not counting its interpreter's start-up.
    stats["sim_cpu_share"] = round(window.used["sim"] / result["seconds"], 3)
    # The client's CPU includes its start-up (imports, building the bodies).
    stats["client_cpu_s"] = round(children_cpu() - client0, 3)
    return {**result, **stats}


async def curl_loop(sim: Sim, folder: Path, files: int) -> dict[str, Any]:
    names = [f"k{i:06}.csv" for i in range(files)]
    stage_small(folder, names, start=10_000_000)
    window = CpuWindow({"sim": sim.pid})
    client0 = children_cpu()
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec("bash", str(BENCH / "curl_loop.sh"),
                                                sim.base_url, str(folder))
    if await proc.wait():
        raise SystemExit(f"curl_loop.sh exited with {proc.returncode}")
    seconds = time.monotonic() - started
    window.stop()
    return {"files": files, "seconds": seconds, "files_per_s": files / seconds,
            "client_cpu_s": round(children_cpu() - client0, 3), **window.as_dict()}


async def daemon_run(sim: Sim, work: Path, files: int) -> dict[str, Any]:
    daemon = Daemon(work, sim.base_url)
    names = [f"f{i:06}.csv" for i in range(files)]
    stage_small(daemon.stage, names)
    async with daemon:
        await daemon.warm_up()
        window = CpuWindow({"sim": sim.pid, "daemon": daemon.pid})
        first = drop(daemon.stage, daemon.inbox, names)
        await wait_until(lambda: daemon.results() >= files + 1, 600, 0.1, daemon.check_alive,
                         f"{files} result files")
        window.stop()
        last = last_result_mtime(daemon.done)
        failed = sum(1 for p in daemon.failed.glob("*.result.json"))
        state = await sim.state()
    seconds = last - first
    return {"files": files, "seconds": seconds, "files_per_s": files / seconds,
            "failed": failed, "max_concurrent_uploads": state["max_concurrent_uploads"],
            "max_unfinished_jobs": state["max_unfinished_jobs"], **window.as_dict()}


async def floor(sim: Sim, folder: Path, files: int, *extra: str) -> dict[str, Any]:
    """bench/floor.py over *files* small files staged in *folder*; *extra*: its options."""
    stage_small(folder / "inbox", [f"l{i:06}.csv" for i in range(files)])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.floor", "--base-url", sim.base_url, "--dir", str(folder),
        "--uvloop", "--uploads", str(UPLOADS), "--max-active", str(MAX_ACTIVE), "--poll",
        str(POLL), "--poll-max", str(POLL_MAX), *extra, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode:
        raise SystemExit(f"bench.floor exited with {proc.returncode}")
    result: dict[str, Any] = json.loads(out)
    return result


async def ceiling_pair(sim: Sim, files: int) -> dict[str, Any]:
    """Two ceiling clients at once, each with one instance's limits: *files* in all."""
    started = time.monotonic()
    one, two = await asyncio.gather(ceiling(sim, files // 2), ceiling(sim, files - files // 2))
    seconds = time.monotonic() - started
    return {"files": files, "seconds": seconds, "files_per_s": files / seconds,
            "cpu_s": one["cpu_s"] + two["cpu_s"]}


async def two_instances(sim: Sim, work: Path, files: int) -> dict[str, Any]:
    """*files* split between two connector instances ([instances.a] and [instances.b],
    each with the limits of scenario 1), dropped at once."""
    limits = {f"instances__{name}__{key}": value for name in "ab" for key, value in (
        ("base_url", sim.base_url), ("user_secret", "u"), ("element_token", f"e{name}"),
        ("uploads", UPLOADS), ("max_active_jobs", MAX_ACTIVE))}
    daemon = Daemon(work, sim.base_url, **limits)
    halves = {"a": [f"a{i:06}.csv" for i in range(files // 2)],
              "b": [f"b{i:06}.csv" for i in range(files - files // 2)]}
    for names in halves.values():
        stage_small(daemon.stage, names)
    inboxes = {name: daemon.root / "inbox" / name / "contact" for name in halves}
    for inbox in inboxes.values():
        inbox.mkdir(parents=True, exist_ok=True)
    dones = [daemon.root / "done" / name / "contact" for name in halves]
    async with daemon:
        await daemon.warm_up()
        window = CpuWindow({"sim": sim.pid, "daemon": daemon.pid})
        first = drop(daemon.stage, inboxes["a"], halves["a"][:1])
        for name, names in halves.items():
            drop(daemon.stage, inboxes[name], names[1:] if name == "a" else names)
        await wait_until(lambda: sum(count_results(d) for d in dones) >= files, 600, 0.1,
                         daemon.check_alive, f"{files} result files of two instances")
        window.stop()
    seconds = max(last_result_mtime(d) for d in dones) - first
    return {"files": files, "seconds": seconds, "files_per_s": files / seconds,
            **window.as_dict()}


async def run(args: argparse.Namespace, work: Path) -> tuple[list[Row], dict[str, Any]]:
    async with Sim(work / "sim", job_seconds=0.0) as sim:
        log(f"throughput: ceiling, {args.files} jobs")
        before = await ceiling(sim, args.files)
        log(f"throughput: daemon, {args.files} files")
        daemon = await daemon_run(sim, work / "daemon", args.files)
        log(f"throughput: ceiling again, {args.files} jobs")
        after = await ceiling(sim, args.files)
        log(f"throughput: floor, {args.files} files")
        lean = await floor(sim, work / "floor", args.files)
        log(f"throughput: curl loop, {args.curl_files} files")
        curl = await curl_loop(sim, work / "curl", args.curl_files)
        log(f"throughput: two instances, {args.files} files; two ceiling clients at once")
        pair_before = await ceiling_pair(sim, args.files)
        pair = await two_instances(sim, work / "pair", args.files)
        pair_after = await ceiling_pair(sim, args.files)
    ceiling_rate = (before["files_per_s"] + after["files_per_s"]) / 2
    pair_rate = (pair_before["files_per_s"] + pair_after["files_per_s"]) / 2
    ceiling_sim = (before["sim_cpu_share"] + after["sim_cpu_share"]) / 2
    rate = daemon["files_per_s"]
    # CPU per file over the timed stretch: the daemon's process against the client's.
    cpu_file = daemon["daemon_cpu_s"] / args.files * 1000
    ceiling_cpu_file = (before["cpu_s"] + after["cpu_s"]) / (2 * args.files) * 1000
    floor_cpu_file = lean["cpu_s"] / args.files * 1000
    client_share = (before["client_cpu_s"] + after["client_cpu_s"]) / (
        before["seconds"] + after["seconds"])
    note = (f"sim CPU share: ceiling {ceiling_sim:.2f}, curl loop {curl['sim_cpu_share']:.2f}; "
            f"CPU share of the daemon {daemon['daemon_cpu_share']:.2f}, of the ceiling client "
            f"{client_share:.2f} (with its start-up), of bash+curl "
            f"{curl['client_cpu_s'] / curl['seconds']:.2f}")
    if daemon["failed"]:
        note += f"; {daemon['failed']} files FAILED"
    rows = [
        Row("throughput", f"daemon, {args.files} files", rate, "files/s",
            "ceiling: aiohttp client", ceiling_rate, "files/s", ">= 0.9x ceiling",
            rate >= 0.9 * ceiling_rate, daemon["sim_cpu_share"], note),
        Row("throughput", "daemon CPU per file", cpu_file, "ms", "ceiling client",
            ceiling_cpu_file, "ms", "<= 1.5x ceiling", cpu_file <= 1.5 * ceiling_cpu_file),
        Row("throughput", f"daemon, {args.files} files", rate, "files/s",
            f"curl loop, {args.curl_files} files", curl["files_per_s"], "files/s",
            ">= 10x curl loop", rate >= 10 * curl["files_per_s"], daemon["sim_cpu_share"]),
        Row("throughput", f"two instances, {args.files} files", pair["files_per_s"],
            "files/s", "ceiling: two clients at once", pair_rate, "files/s",
            ">= 0.85x ceiling", pair["files_per_s"] >= 0.85 * pair_rate, pair["sim_cpu_share"],
            f"CPU share of the daemon {pair['daemon_cpu_share']:.2f}"),
        # What keeping the promises costs at least, in Python (bench/floor.py).
        Row("throughput", "floor: lean durable client", lean["files_per_s"], "files/s",
            "ceiling: aiohttp client", ceiling_rate, "files/s", "(information)", None),
        Row("throughput", "floor: CPU per file", floor_cpu_file, "ms", "ceiling client",
            ceiling_cpu_file, "ms", "(information)", None),
        Row("throughput", "daemon CPU per file", cpu_file, "ms", "floor client",
            floor_cpu_file, "ms", "(information)", None),
        # How far the same concurrency can go at all: the ceiling against the curl loop.
        Row("throughput", "ceiling: aiohttp client", ceiling_rate, "files/s",
            f"curl loop, {args.curl_files} files", curl["files_per_s"], "files/s",
            "(information)", None, ceiling_sim),
    ]
    return rows, {"daemon": daemon, "ceiling_before": before, "ceiling_after": after,
                  "ceiling_files_per_s": ceiling_rate, "floor": lean, "curl_loop": curl,
                  "two_instances": pair, "ceiling_pair_before": pair_before,
                  "ceiling_pair_after": pair_after}
