"""The request rate under load: one API at ``[api] requests_per_second``, many files.

    python -m bench.ratelimit                  # 500 small files at 20 requests/s

Daemon and simulator in one process on loopback. Reported: the most requests any
sliding second held at the simulator (must not pass the limit), the requests per file,
and files/s against what the limit allows (the limit over the requests per file).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from daemon import logs
from daemon.config import load_settings
from daemon.ratelimit import busiest_second
from daemon.service import Daemon
from daemon.sim import SimConfig, SimServer, Simulator


async def run(files: int, per_second: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "spool"
        async with SimServer(Simulator(SimConfig(job_seconds=1.0, keep_bodies=False))) as sim:
            settings = load_settings(None, {}, forced={
                "api.base_url": sim.base_url, "api.user_secret": "u", "api.element_token": "e",
                "api.requests_per_second": per_second, "spool.root": str(root),
                "spool.node_id": "bench", "spool.settle_seconds": 0.2, "http.listen": "",
                "workers.poll_interval_seconds": 1.0, "workers.poll_max_interval_seconds": 2.0,
                "workers.max_active_jobs": 64})
            daemon = Daemon(settings)
            serving = asyncio.create_task(daemon.serve())
            await daemon.ready.wait()
            inbox = root / "inbox" / "contact"
            inbox.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            for i in range(files):
                tmp_file = inbox / f".f{i}.tmp"
                tmp_file.write_text(f"email,name\nu{i}@example.com,U{i}\n")
                tmp_file.rename(inbox / f"f{i}.csv")
            done = root / "done" / "contact"
            while len(list(done.glob("*.result.json"))) < files:  # noqa: ASYNC110 - as a user sees it
                await asyncio.sleep(0.2)
            seconds = time.monotonic() - started
            daemon.request_stop()
            await serving
            times = list(sim.sim.request_times)
    per_file = len(times) / files
    allowed = per_second / per_file
    rate = files / seconds
    print(f"{files} files at requests_per_second = {per_second}: {len(times)} requests "
          f"({per_file:.2f} a file), busiest second {busiest_second(times)} requests; "
          f"{rate:.2f} files/s, the limit allows {allowed:.2f} ({rate / allowed:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--per-second", type=int, default=20)
    args = parser.parse_args()
    logs.configure("json", "warning")
    asyncio.run(run(args.files, args.per_second))


if __name__ == "__main__":
    main()
