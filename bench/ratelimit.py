"""The request rate under load: one connector instance at ``requests_per_second``, many
files, beside another instance without a limit.

    python -m bench.ratelimit                  # 500 small files at 20 requests/s

Daemon and simulator in one process on loopback; the two instances have tokens of their
own, so the simulator tells their requests apart. Reported for the limited one: the
most requests any sliding second held at the simulator (must not pass the limit), the
requests per file, and files/s against what the limit allows (the limit over the
requests per file); for the other, its busiest second and how soon its files were done
(its files are not held to the first one's rate).
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
from daemon.sim.gate import token_space

INSTANCES = {"limited": "limited-token", "free": "free-token"}


async def run(files: int, per_second: int, others: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "spool"
        async with SimServer(Simulator(SimConfig(job_seconds=1.0, keep_bodies=False))) as sim:
            settings = load_settings(None, {}, forced={
                "api.base_url": sim.base_url, "spool.root": str(root),
                "spool.node_id": "bench", "spool.settle_seconds": 0.2, "http.listen": "",
                "workers.poll_interval_seconds": 1.0, "workers.poll_max_interval_seconds": 2.0,
                "workers.max_active_jobs": 64}, instances={
                name: {"user_secret": "u", "element_token": token,
                       "requests_per_second": per_second if name == "limited" else 0}
                for name, token in INSTANCES.items()})
            daemon = Daemon(settings)
            serving = asyncio.create_task(daemon.serve())
            await daemon.ready.wait()
            started = time.monotonic()
            ended: dict[str, float] = {}
            for name, count in (("limited", files), ("free", others)):
                inbox = root / "inbox" / name / "contact"
                inbox.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    tmp_file = inbox / f".f{i}.tmp"
                    tmp_file.write_text(f"email,name\nu{i}@example.com,U{i}\n")
                    tmp_file.rename(inbox / f"f{i}.csv")
            while len(ended) < 2:
                for name, count in (("limited", files), ("free", others)):
                    done = root / "done" / name / "contact"
                    if name not in ended and done.exists() and len(
                            list(done.glob("*.result.json"))) >= count:
                        ended[name] = time.monotonic() - started
                await asyncio.sleep(0.2)  # as a user sees it
            daemon.request_stop()
            await serving
            times = list(sim.sim.request_times)
            spaces = list(sim.sim.request_spaces)
    of = {name: [t for t, s in zip(times, spaces, strict=True) if s == token_space(token)]
          for name, token in INSTANCES.items()}
    limited = of["limited"]
    per_file = len(limited) / files
    allowed = per_second / per_file
    rate = files / ended["limited"]
    print(f"limited: {files} files at requests_per_second = {per_second}: {len(limited)} "
          f"requests ({per_file:.2f} a file), busiest second {busiest_second(limited)} "
          f"requests; {rate:.2f} files/s, the limit allows {allowed:.2f} "
          f"({rate / allowed:.2f}x)")
    print(f"free: {others} files without a limit, beside it: busiest second "
          f"{busiest_second(of['free'])} requests; all done after {ended['free']:.1f} s "
          f"(the limited one after {ended['limited']:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--per-second", type=int, default=20)
    parser.add_argument("--others", type=int, default=100,
                        help="files of the instance without a limit")
    args = parser.parse_args()
    logs.configure("json", "warning")
    asyncio.run(run(args.files, args.per_second, args.others))


if __name__ == "__main__":
    main()
