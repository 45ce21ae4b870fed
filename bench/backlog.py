"""Backlog benchmark: N files already in inbox/ when the daemon starts.

Measures, for the daemon as a real subprocess against the simulator on loopback:
- seconds from process start to the first upload request the simulator sees,
- files filed per second once running,
- the daemon's peak RSS (VmHWM), against a baseline run with a small backlog in the
  same invocation, so the ratio shows whether memory grows with the backlog.

    .venv/bin/python bench/backlog.py                 # 100,000 files vs 100
    .venv/bin/python bench/backlog.py --files 20000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon import logs  # noqa: E402
from daemon.sim import SimConfig, SimServer, Simulator  # noqa: E402


def make_backlog(inbox: Path, n: int) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    old = time.time() - 3600  # written long ago: settled at once
    for i in range(n):
        path = inbox / f"f{i:06}.csv"
        path.write_bytes(b"email,name\nu%d@example.com,U\n" % i)
        os.utime(path, (old, old))


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


async def run_once(n: int, seconds: float) -> dict[str, float]:
    sim = Simulator(SimConfig(job_seconds=0.05, keep_bodies=False))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "spool"
        make_backlog(root / "inbox" / "contact", n)
        async with SimServer(sim) as server:
            config = Path(tmp) / "c.toml"
            config.write_text(
                f'[api]\nbase_url = "{server.base_url}"\n'
                f'[spool]\nroot = "{root}"\nnode_id = "bench"\nsettle_seconds = 1.0\n'
                '[workers]\nuploads = 4\nmax_active_jobs = 32\npoll_interval_seconds = 0.05\n'
                'poll_max_interval_seconds = 0.2\n[http]\nlisten = ""\n[log]\nlevel = "warning"\n')
            env = {**os.environ, "BULKDROP_API_USER_SECRET": "u",
                   "BULKDROP_API_ELEMENT_TOKEN": "e"}
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "daemon", "run", "--config", str(config), env=env,
                stderr=asyncio.subprocess.DEVNULL)
            while sim.creates_attempted == 0:
                if time.monotonic() - started > 60:
                    raise SystemExit("no upload within 60 s")
                await asyncio.sleep(0.005)
            first = time.monotonic() - started
            begun, done_before = time.monotonic(), sum(1 for j in sim.jobs.values() if j.reported)
            await asyncio.sleep(seconds)
            filed = sum(1 for j in sim.jobs.values() if j.reported) - done_before
            rate = filed / (time.monotonic() - begun)
            rss = peak_rss_kib(proc.pid)
            proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
    return {"first_upload_s": first, "files_per_s": rate, "peak_rss_mib": rss / 1024,
            "exit": code}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logs.configure("json", "warning")
    rows: dict[int, list[dict[str, float]]] = {args.baseline: [], args.files: []}
    for _ in range(args.repeat):
        for n in rows:
            rows[n].append(await run_once(n, args.seconds))
    med = {n: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
           for n, runs in rows.items()}
    for n, m in med.items():
        print(f"{n:>7} files: first upload {m['first_upload_s']:.2f} s, "
              f"{m['files_per_s']:.1f} files/s, peak RSS {m['peak_rss_mib']:.1f} MiB "
              f"(median of {args.repeat})")
    base, big = med[args.baseline], med[args.files]
    rss = big["peak_rss_mib"] / base["peak_rss_mib"]
    first = big["first_upload_s"] / base["first_upload_s"]
    print(f"ratio {args.files}/{args.baseline}: peak RSS x{rss:.2f}, first upload x{first:.2f}"
          " (files/s is meaningful for the large backlog only: the small one runs dry)")


if __name__ == "__main__":
    asyncio.run(main())
