"""The web view's cost: a browser's polling of a daemon whose ledger holds 100,000 files.

    python -m bench.webview                    # 100,000 rows, 30 s idle, 30 s polled
    python -m bench.webview --today            # ... all of them finished today

The ledger is filled before the daemon starts (finished files spread over the last 24
hours, a mix of outcomes, some with failed records); the daemon and the simulator run
in processes of their own. Measured: the daemon's CPU share over a window with nobody
watching, then over a window in which one page polls as ``view.js`` does (``/api/status``
and ``/api/files?limit=100`` every 2 s), and the time those requests take.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from bench.common import CpuWindow, Daemon, Sim, log
from daemon.ledger import Ledger


async def fill_ledger(path: Path, rows: int, today: bool = False) -> None:
    """*rows* finished files over the last 24 hours (*today*: all since midnight, the
    worst case for today's counts), as the daemon would have left them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(path)
    await ledger.open()
    await ledger.close()
    rng = random.Random(7)
    now = datetime.now(UTC)
    midnight = now.astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    span = (now - midnight).total_seconds() - 60 if today else 86400
    records = []
    for i in range(rows):
        finished = now - timedelta(seconds=rng.uniform(0, span))
        stamp = finished.isoformat(timespec="milliseconds")
        outcome = rng.choices(("COMPLETE", "FAILED", "REJECTED"), (90, 6, 4))[0]
        failed = rng.choice((0, 0, 0, 1, 3)) if outcome == "COMPLETE" else None
        records.append((f"{int(finished.timestamp() * 1000):012x}{i:08x}", f"contact/f{i}.csv",
                        f"processing/bench/{i}", "FINISHED", "contact", "marketing",
                        str(1000 + i), stamp, stamp, stamp, outcome, f"job {i} {outcome}",
                        f"done/contact/f{i}.csv", stamp, 10, failed))
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO files (claim_id, rel_path, claimed_path, state, object, hub, job_id,"
            " received_at, submitted_at, finished_at, outcome, reason, dest_path, updated_at,"
            " records_total, records_failed) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
    conn.close()


async def poll(base: str, seconds: float, timings: list[float]) -> None:
    """What one open page asks, every 2 s."""
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.monotonic()
            for path in ("/api/status", "/api/files?limit=100"):
                async with http.get(base + path) as resp:
                    await resp.read()
                    assert resp.status == 200, path
            timings.append(time.monotonic() - started)
            await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - started)))


async def run(rows: int, seconds: float, today: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        async with Sim(work / "sim", job_seconds=0.0) as sim:
            port = _free_port()
            daemon = Daemon(work / "daemon", sim.base_url, http__listen=f"127.0.0.1:{port}",
                            workers__poll_interval_seconds=5.0,
                            workers__poll_max_interval_seconds=60.0)
            log(f"filling the ledger with {rows:,} files")
            await fill_ledger(daemon.root / ".state" / "bench" / "bulkdrop.db", rows, today)
            async with daemon:
                await daemon.warm_up()
                await asyncio.sleep(2.0)
                base = f"http://127.0.0.1:{port}"
                async with aiohttp.ClientSession() as http, http.get(base + "/") as resp:
                    first_page = len(await resp.read())
                log(f"idle: {seconds:g} s")
                idle = CpuWindow({"daemon": daemon.pid})
                await asyncio.sleep(seconds)
                idle.stop()
                log(f"polled as by one open page: {seconds:g} s")
                timings: list[float] = []
                polled = CpuWindow({"daemon": daemon.pid})
                await poll(base, seconds, timings)
                polled.stop()
                daemon.check_alive()
    extra = polled.share("daemon") - idle.share("daemon")
    which = " (all today)" if today else ""
    print(f"{rows:,} ledger rows{which}; / is {first_page:,} bytes. Daemon CPU: idle "
          f"{idle.share('daemon') * 100:.2f}% of a core, polled every 2 s "
          f"{polled.share('daemon') * 100:.2f}% (the page costs {extra * 100:.2f}% of a "
          f"core); one poll (status + 100 files) median {statistics.median(timings) * 1000:.1f}"
          f" ms, slowest {max(timings) * 1000:.1f} ms over {len(timings)} polls")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--today", action="store_true",
                        help="every row finished today (the worst case for today's counts)")
    args = parser.parse_args()
    asyncio.run(run(args.rows, args.seconds, args.today))


if __name__ == "__main__":
    main()
