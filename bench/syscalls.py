"""System calls the daemon makes for N small files: `strace -c -f` on it during one drop.

    python -m bench.syscalls                      # 1000 files, this tree
    python -m bench.syscalls --code /tmp/old      # another checkout (git worktree add ...)

Needs strace (Debian: `apt-get install strace`). strace slows the daemon several times
over, so compare counts, not times; the counts per file show where work went.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
from pathlib import Path

from bench.common import CODE, Daemon, Sim, drop, stage_small, wait_until


async def count(files: int, out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="bulkdrop-syscalls-"))
    async with Sim(work / "sim", job_seconds=0.0) as sim:
        daemon = Daemon(work / "daemon", sim.base_url)
        names = [f"f{i:06}.csv" for i in range(files)]
        stage_small(daemon.stage, names)
        async with daemon:
            await daemon.warm_up()
            tracer = await asyncio.create_subprocess_exec(
                "strace", "-c", "-f", "-p", str(daemon.pid), "-o", str(out),
                stderr=asyncio.subprocess.DEVNULL)
            try:
                await asyncio.sleep(1)  # attached to every thread
                drop(daemon.stage, daemon.inbox, names)
                await wait_until(lambda: daemon.results() >= files + 1, 600, 0.1,
                                 daemon.check_alive, f"{files} result files")
            finally:
                tracer.send_signal(signal.SIGINT)
                await tracer.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--code", type=Path, help="run DIR/daemon instead of this tree's")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bulkdrop-syscalls.txt"))
    args = parser.parse_args()
    if args.code is not None:
        CODE["dir"] = args.code.resolve()
    asyncio.run(count(args.files, args.out))
    print(f"calls per file, {args.files} files ({CODE['dir']}):")
    for line in args.out.read_text().splitlines()[2:]:
        fields = line.split()
        if len(fields) >= 5 and fields[3].isdigit():
            print(f"  {fields[-1]:16} {int(fields[3]) / args.files:8.1f}")


if __name__ == "__main__":
    main()
