"""The latency baseline: the least a file-event-driven uploader has to do.

Watches one folder with watchfiles (the library the daemon uses, at a 5 ms step instead
of the daemon's 50 ms step and 100 ms debounce), and POSTs every file that appears as a
bulk job at once: no settling, no claim, no ledger, no validation. Runs until SIGTERM;
the benchmark drops a warm-up file first and waits for its job, so the watch is live.

    python -m bench.minwatch --base-url http://127.0.0.1:PORT/elements/api-v2 --dir D
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import aiohttp
import watchfiles

from bench.common import AUTH


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    headers = {"Authorization": AUTH, "Accept": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async def post(path: Path) -> None:
            form = aiohttp.FormData()
            # Read on the loop: a 10-row file, and the least work an uploader can do.
            form.add_field("file", path.read_bytes(), filename=path.name,  # noqa: ASYNC240
                           content_type="text/csv")
            async with session.post(f"{args.base_url}/hubs/marketing/bulk/contact",
                                    params={"path": f"/{path.name}"}, data=form) as resp:
                await resp.read()

        async for changes in watchfiles.awatch(args.dir, stop_event=stop, watch_filter=None,
                                               debounce=args.debounce, step=args.step):
            for change, raw in changes:
                path = Path(raw)
                if change == watchfiles.Change.added and path.suffix == ".csv":
                    await post(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--step", type=int, default=5, help="watchfiles step, ms")
    parser.add_argument("--debounce", type=int, default=50, help="watchfiles debounce, ms")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
