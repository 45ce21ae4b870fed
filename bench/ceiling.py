"""The throughput ceiling: a plain aiohttp client making the daemon's API calls, nothing else.

For each of N in-memory CSV bodies: create the bulk job (multipart `file` part, `?path=`)
and poll its status until it ends, with the daemon's limits: at most `--uploads` creates
at once and `--max-active` jobs created and not yet finished, first poll after
`--poll` seconds, then backing off by 1.5x up to `--poll-max` (as daemon/tracker.py).
No files, no ledger, no validation. Prints one JSON line: files, seconds, and the
CPU seconds the client used over them (cpu_s).

    python -m bench.ceiling --base-url http://127.0.0.1:PORT/elements/api-v2 --files 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp

from bench.common import AUTH, run_client, small_csv

DONE = {"COMPLETED", "COMPLETE", "FAILED", "ERROR", "ABORTED", "CANCELLED"}


async def follow(session: aiohttp.ClientSession, url: str, job_id: str, poll: float,
                 poll_max: float) -> None:
    delay = poll
    while True:
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, poll_max)
        async with session.get(f"{url}/hubs/marketing/bulk/{job_id}/status") as resp:
            body = await resp.json()
        if body.get("status") in DONE:
            return


async def run(args: argparse.Namespace) -> dict[str, float]:
    bodies = [small_csv(i, args.rows) for i in range(args.files)]
    uploads = asyncio.Semaphore(args.uploads)
    active = asyncio.Semaphore(args.max_active)
    headers = {"Authorization": AUTH, "Accept": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async def one(i: int) -> None:
            try:
                async with uploads:
                    form = aiohttp.FormData()
                    form.add_field("file", bodies[i], filename=f"c{i:06}.csv",
                                   content_type="text/csv")
                    async with session.post(f"{args.base_url}/hubs/marketing/bulk/contact",
                                            params={"path": f"/c{i:06}.csv"}, data=form) as resp:
                        resp.raise_for_status()
                        job_id = str((await resp.json())["id"])
                await follow(session, args.base_url, job_id, args.poll, args.poll_max)
            finally:
                active.release()

        started, cpu0 = time.monotonic(), time.process_time()
        tasks = []
        for i in range(args.files):  # claim order, as the daemon's claim loop does
            await active.acquire()
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu0
    # cpu_s: over the timed stretch only (the daemon's is measured over its drop too).
    return {"files": args.files, "seconds": seconds, "files_per_s": args.files / seconds,
            "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--uploads", type=int, default=4)
    parser.add_argument("--max-active", type=int, default=32)
    parser.add_argument("--poll", type=float, default=0.05)
    parser.add_argument("--poll-max", type=float, default=0.2)
    parser.add_argument("--uvloop", action="store_true",
                        help="on uvloop, as the daemon (the table's ceiling runs on asyncio's)")
    args = parser.parse_args()
    print(json.dumps(run_client(run(args), args.uvloop)), flush=True)


if __name__ == "__main__":
    main()
