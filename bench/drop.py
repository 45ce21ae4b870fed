"""Drop N small files into one daemon, repeatedly: files/s and the daemon's CPU, no baselines.

The quick loop for trying a change to the daemon: the throughput scenario's daemon half
(same settings, same files, simulator in its own process), repeated, with the median.

    python -m bench.drop                              # 2000 files, 3 runs
    python -m bench.drop --set workers.max_active_jobs=64 --repeat 5
    python -m bench.drop --code /tmp/old              # the daemon/ of another checkout
    python -m bench.drop --code . --code /tmp/old --repeat 4   # alternate the two

`--code DIR` runs `DIR/daemon` (e.g. `git worktree add /tmp/old <commit>`). Given more
than once, the versions take turns run by run (A B A B ...), so each sees the same machine
state, and each gets its own median.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    CODE,
    CpuWindow,
    Daemon,
    Sim,
    drop,
    last_result_mtime,
    stage_small,
    wait_until,
)


def user_system_seconds(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def setting(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"expected section.key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.replace(".", "__", 1), value


async def one_run(work: Path, files: int, settings: dict[str, Any]) -> dict[str, float]:
    async with Sim(work / "sim", job_seconds=0.0) as sim:
        daemon = Daemon(work / "daemon", sim.base_url, **settings)
        names = [f"f{i:06}.csv" for i in range(files)]
        stage_small(daemon.stage, names)
        async with daemon:
            await daemon.warm_up()
            user0, system0 = user_system_seconds(daemon.pid)
            window = CpuWindow({"sim": sim.pid, "daemon": daemon.pid})
            first = drop(daemon.stage, daemon.inbox, names)
            await wait_until(lambda: daemon.results() >= files + 1, 600, 0.1,
                             daemon.check_alive, f"{files} result files")
            window.stop()
            user1, system1 = user_system_seconds(daemon.pid)
            last = last_result_mtime(daemon.done)
    return {"files_per_s": files / (last - first), "daemon_user_s": user1 - user0,
            "daemon_system_s": system1 - system0, **window.as_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--set", type=setting, action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="a daemon setting (repeatable)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (its path is printed); delete it later")
    parser.add_argument("--code", type=Path, action="append", default=[],
                        help="run DIR/daemon instead of this tree's; repeat to alternate")
    args = parser.parse_args()
    codes = [code.resolve() for code in args.code] or [CODE["dir"]]
    rates: dict[Path, list[float]] = {code: [] for code in codes}
    # Deleted only at the end (or never, with --keep): on ext4 without a journal, creating
    # files is slower for minutes after many deletions (see bench/README.md), which would
    # skew the runs that follow.
    with contextlib.ExitStack() as stack:
        if args.keep:
            tmp = tempfile.mkdtemp(prefix="bulkdrop-drop-")
            print(f"work folder: {tmp}", flush=True)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bulkdrop-drop-"))
        for run in range(1, args.repeat + 1):
            for n, code in enumerate(codes):
                CODE["dir"] = code
                got = asyncio.run(one_run(Path(tmp) / f"{run}-{n}", args.files, dict(args.set)))
                rates[code].append(got["files_per_s"])
                label = f" {code}" if len(codes) > 1 else ""
                print(f"run {run}{label}: {got['files_per_s']:.0f} files/s, daemon CPU "
                      f"{got['daemon_user_s']:.2f} s user + {got['daemon_system_s']:.2f} s "
                      f"system ({got['daemon_cpu_share']:.2f} of a core), simulator "
                      f"{got['sim_cpu_share']:.2f} of a core", flush=True)
    for code, runs in rates.items():
        label = f" {code}" if len(codes) > 1 else ""
        print(f"median{label} {statistics.median(runs):.0f} files/s over {len(runs)} runs")


if __name__ == "__main__":
    main()
