"""3. Large file: one big CSV (default 1 GiB): the daemon's peak RSS and its upload rate.

The file is bench/csv_upload.py's contact rows (comma-separated UTF-8, CRLF, so the
daemon sends it byte for byte). It is dropped settled (staged, mtime an hour back,
renamed in). The daemon first reads the whole file once to validate it, then uploads it.

- upload MB/s: file bytes / (first POST seen at the simulator -> job created), against
  `curl -F file=@...` of the same file to the same simulator: bytes / curl's time_total.
- end to end MB/s: file bytes / (drop -> job created), validation included; shown for
  information beside the same curl figure.
- peak RSS: VmHWM of the daemon after the file is filed; the baseline is its VmHWM after
  start-up and one small file. A file this large is checked on two cores, its second
  half by a child process: that process's VmHWM, sampled while the file is checked, is
  shown beside (information).

The simulator runs with `--no-fail-invalid-emails` (its record counter's fast path); it
still decodes and splits every line in Python, which bounds what any client can reach;
its CPU share during each upload is reported. Files sit in the page cache.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

from bench.common import (
    AUTH,
    MB,
    MIB,
    OLD,
    CpuWindow,
    Daemon,
    Row,
    Sim,
    children_peak_rss_mb,
    count_results,
    log,
    peak_rss_mb,
    wait_until,
)
from bench.csv_upload import generate

CURL = "/usr/bin/curl"


async def daemon_upload(sim: Sim, work: Path, src: Path, size: int) -> dict[str, Any]:
    # One job: the file is a little over 1 GiB, max_bytes_per_job's default, and in parts
    # it would be measured and rendered, not sent as dropped (see bench/README.md).
    daemon = Daemon(work, sim.base_url, objects__contact__max_bytes_per_job=4 << 30)
    async with daemon:
        await daemon.warm_up()
        rss_base = peak_rss_mb(daemon.pid)
        state = await sim.state()
        creates, jobs = state["creates_attempted"], state["jobs"]
        staged = daemon.stage / src.name
        os.link(src, staged)
        os.utime(staged, (time.time() - OLD,) * 2)
        cpu = CpuWindow({"daemon": daemon.pid, "sim": sim.pid})
        dropped_wall, dropped = time.time(), time.monotonic()
        os.rename(staged, daemon.inbox / src.name)

        child_peak = 0.0  # the second half of the checks runs in a child process

        async def posting() -> bool:
            nonlocal child_peak
            child_peak = max(child_peak, children_peak_rss_mb(daemon.pid))
            return (await sim.state())["creates_attempted"] > creates

        posted = await wait_until(posting, 3600, 0.02, daemon.check_alive, "the upload")
        rss_at_post = peak_rss_mb(daemon.pid)
        upload = CpuWindow({"daemon": daemon.pid, "sim": sim.pid})

        async def created() -> bool:
            return (await sim.state())["jobs"] > jobs

        await wait_until(created, 3600, 0.02, daemon.check_alive, "the job")
        upload.stop()
        times = await sim.job_times()
        job_id = max(times, key=int)
        job_at = times[job_id][1]
        await wait_until(lambda: count_results(daemon.done) + count_results(daemon.failed) > 1,
                         600, 0.05, daemon.check_alive, "the result file")
        cpu.stop()
        rss = peak_rss_mb(daemon.pid)
        job = next(j for j in await sim.control("GET", "/_sim/jobs") if j["id"] == job_id)
        failed = count_results(daemon.failed)
    # The job time is wall clock (the simulator's); the POST was seen on this monotonic
    # clock: put both on the wall clock via the drop.
    posted_wall = dropped_wall + (posted - dropped)
    upload_s = job_at - posted_wall
    whole_s = job_at - dropped_wall
    return {"bytes": size, "job_bytes": job["bytes"], "records": job["recordsCount"],
            "failed": failed, "validate_s": posted_wall - dropped_wall, "upload_s": upload_s,
            "whole_s": whole_s, "upload_mb_s": size / MB / upload_s,
            "whole_mb_s": size / MB / whole_s, "peak_rss_mb": rss,
            "peak_rss_at_first_post_mb": rss_at_post, "rss_after_start_mb": rss_base,
            "check_child_peak_rss_mb": child_peak,
            "daemon_cpu_s": cpu.used["daemon"],
            "upload_sim_cpu_share": upload.share("sim"),
            "upload_daemon_cpu_share": upload.share("daemon")}


async def curl_upload(sim: Sim, src: Path, size: int, part_type: str = "") -> dict[str, Any]:
    """`curl -F file=@src` (with *part_type*, the part's Content-Type) to the simulator."""
    window = CpuWindow({"sim": sim.pid})
    typed = f";type={part_type}" if part_type else ""
    proc = await asyncio.create_subprocess_exec(
        CURL, "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "-F",
        f"file=@{src}{typed}", "-H", f"Authorization: {AUTH}",
        f"{sim.base_url}/hubs/marketing/bulk/contact?path=/{src.name}",
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    window.stop()
    code, seconds = out.decode().split()
    if code != "200":
        raise SystemExit(f"curl upload: HTTP {code}")
    return {"bytes": size, "seconds": float(seconds), "mb_s": size / MB / float(seconds),
            **window.as_dict()}


async def run(args: argparse.Namespace, work: Path) -> tuple[list[Row], dict[str, Any]]:
    work.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (nothing else runs yet)
    src = work / "large.csv"
    started = time.monotonic()
    rows = generate(src, Path(os.devnull), args.large_mb * MIB)
    size = src.stat().st_size
    log(f"large: generated {size / MB:,.0f} MB, {rows:,} rows, "
        f"in {time.monotonic() - started:.1f} s")
    try:
        async with Sim(work / "sim", job_seconds=0.0) as sim:
            log("large: daemon")
            daemon = await daemon_upload(sim, work / "daemon", src, size)
            log("large: curl -F")
            curl = await curl_upload(sim, src, size)
    finally:
        src.unlink(missing_ok=True)
    label = f"{size / MB:,.0f} MB, {rows:,} rows"
    note = ""
    if daemon["records"] != rows or daemon["job_bytes"] != size or daemon["failed"]:
        note = (f"CHECK: job has {daemon['records']:,} records, {daemon['job_bytes']:,} bytes, "
                f"failed={daemon['failed']}")
    out = [
        Row("large", f"peak RSS, {label}", daemon["peak_rss_mb"], "MB",
            "daemon after start + 1 small file", daemon["rss_after_start_mb"], "MB",
            "<= 100 MB", daemon["peak_rss_mb"] <= 100, None, note),
        Row("large", "peak RSS of the checks' child process", daemon["check_child_peak_rss_mb"],
            "MB", "daemon's own peak", daemon["peak_rss_mb"], "MB", "(information)", None,
            None, "sampled every 20 ms while the file is checked; 0: none seen"),
        Row("large", "upload MB/s (first POST -> job)", daemon["upload_mb_s"], "MB/s",
            "curl -F, same file", curl["mb_s"], "MB/s", ">= 0.5x curl",
            daemon["upload_mb_s"] >= 0.5 * curl["mb_s"], daemon["upload_sim_cpu_share"],
            f"sim CPU share during curl {curl['sim_cpu_share']:.2f}; daemon CPU share "
            f"{daemon['upload_daemon_cpu_share']:.2f}"),
        Row("large", "end-to-end MB/s (drop -> job)", daemon["whole_mb_s"], "MB/s",
            "curl -F, same file", curl["mb_s"], "MB/s", ">= 0.6x curl",
            daemon["whole_mb_s"] >= 0.6 * curl["mb_s"], None,
            f"includes {daemon['validate_s']:.1f} s of validation before the POST"),
    ]
    return out, {"daemon": daemon, "curl": curl, "rows": rows}
