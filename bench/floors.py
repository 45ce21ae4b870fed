"""The ceiling client and the floor (and variants of it) taking turns against one
simulator: CPU per file and files/s of each, medians over the rounds.

Each round runs them all, starting from a different one each time; the ceiling also runs
on uvloop (the daemon's loop and the floor's; the table's ceiling runs on asyncio's).

    python -m bench.floors                                   # ceiling, floor: 3 rounds
    python -m bench.floors --variant=--inline --variant=--without=ledger --repeat 5

A variant is the floor with options of bench/floor.py (``--inline``: commits and fsyncs
on the event loop; ``--process``: in processes of their own; ``--one-thread``;
``--without=ledger|ledger-sync|result-fsync``; ``--window=SECONDS``; several in one
quoted string): what one choice or one promise costs. Prints each run,
then the medians and their ratio to the ceiling's.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.common import Sim
from bench.throughput import ceiling, floor


async def series(files: int, repeat: int, variants: list[str]) -> dict[str, list[dict[str, Any]]]:
    kinds = ["ceiling", "ceiling on uvloop", "floor", *variants]
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="bulkdrop-floors-") as tmp:
        async with Sim(Path(tmp) / "sim", job_seconds=0.0) as sim:
            for n in range(repeat):
                turn = kinds[n % len(kinds):] + kinds[:n % len(kinds)]  # each goes first once
                for i, kind in enumerate(turn):
                    if kind.startswith("ceiling"):
                        got = await ceiling(sim, files, *(["--uvloop"] if "uvloop" in kind
                                                          else []))
                    else:
                        extra = () if kind == "floor" else tuple(shlex.split(kind))
                        got = await floor(sim, Path(tmp) / f"{n}-{i}", files, *extra)
                    runs[kind].append(got)
                    print(f"round {n + 1} {kind}: {got['files_per_s']:.0f} files/s, "
                          f"{got['cpu_s'] / files * 1000:.2f} ms of CPU a file", flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[],
                        help="the floor with these options of bench.floor (repeatable)")
    args = parser.parse_args()
    runs = asyncio.run(series(args.files, args.repeat, args.variant))
    cpu = {kind: statistics.median(r["cpu_s"] for r in got) / args.files * 1000
           for kind, got in runs.items()}
    rate = {kind: statistics.median(r["files_per_s"] for r in got) for kind, got in runs.items()}
    for kind, got in runs.items():
        each = sorted(r["cpu_s"] / args.files * 1000 for r in got)
        print(f"median {kind}: {cpu[kind]:.2f} ms a file ({each[0]:.2f}-{each[-1]:.2f}; "
              f"{cpu[kind] / cpu['ceiling']:.2f}x the ceiling), {rate[kind]:.0f} files/s "
              f"({rate[kind] / rate['ceiling']:.2f}x)")


if __name__ == "__main__":
    main()
