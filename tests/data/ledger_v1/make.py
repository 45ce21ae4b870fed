"""Make the ledger fixture of ``tests/test_ledger.py``: a spool that a release of the
daemon left with files unfinished, written by that release's own code.

    git worktree add /tmp/release <commit>
    .venv/bin/python tests/data/ledger_v1/make.py --code /tmp/release

runs ``python -m daemon`` from ``--code`` against the simulator of this tree and kills
it (SIGKILL) when its ledger holds:

- ``contact/single.csv`` (2 rows): sent whole, its job (1001) recorded and running;
- ``contact/parts.csv`` (5 rows, ``max_rows_per_job = 2``): part 1's job (1002) ended,
  part 2's job (1003) recorded and running, part 3 not sent;
- ``contact/unsent.csv`` (1 row): claimed, its upload under way, no job recorded.

It writes ``spool/`` (the ledger and ``processing/``) and ``jobs.json`` (the jobs the
simulator had, with their bodies, so a test can make them again) next to this script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from daemon.sim import SimConfig, SimServer, Simulator  # noqa: E402
from tests.helpers import contacts_csv, drop  # noqa: E402
from tests.procs import SECRET_ENV, write_config  # noqa: E402


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


async def until(condition: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def make(code: Path, out: Path) -> None:
    sim = Simulator(SimConfig(job_seconds=3600))
    async with SimServer(sim) as server:
        work = Path(tempfile.mkdtemp())
        root = work / "spool"
        config = write_config(work / "c.toml", server.base_url, root,
                              **{"objects.contact": {"max_rows_per_job": 2}})
        db = root / ".state" / "n1" / "bulkdrop.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BULKDROP_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "run", "--config", str(config), cwd=code,
            env={**env, **SECRET_ENV}, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=(work / "d.log").open("ab"))
        try:
            drop(root, "contact/single.csv", contacts_csv(2, tag="s"))
            await until(lambda: query(db, "SELECT job_id FROM files WHERE job_id IS NOT NULL"),
                        "single.csv's job")
            sim.config.job_seconds = 0.5  # part 1 ends; part 2 is created after it
            drop(root, "contact/parts.csv", contacts_csv(5, tag="p"))
            await until(lambda: query(db, "SELECT 1 FROM parts WHERE job_id IS NOT NULL"),
                        "part 1's job")
            sim.config.job_seconds = 3600
            await until(lambda: query(db, "SELECT 1 FROM parts WHERE part = 2 AND job_id "
                                          "IS NOT NULL"), "part 2's job")
            sim.config.create_delay_seconds = 3600
            drop(root, "contact/unsent.csv", contacts_csv(1, tag="u"))
            await until(lambda: sim.uploads_in_flight == 1, "unsent.csv's upload")
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        jobs = [{"id": job.id, "hub": job.hub, "object": job.object, "name": job.name,
                 "body": (job.body or b"").decode()} for job in sim.jobs.values()]
    print(query(db, "SELECT rel_path, state, job_id FROM files"),
          query(db, "SELECT part, job_id, result_json IS NOT NULL FROM parts"))
    shutil.rmtree(out / "spool", ignore_errors=True)
    shutil.copytree(root, out / "spool", ignore=shutil.ignore_patterns("inbox", "done", "*-shm",
                                                                       "failed"))
    (out / "jobs.json").write_text(json.dumps(jobs, indent=1) + "\n")
    shutil.rmtree(work)
    print(f"wrote {out}: {len(jobs)} jobs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, required=True,
                        help="a checkout of the release that writes the ledger")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    asyncio.run(make(args.code.resolve(), args.out.resolve()))


if __name__ == "__main__":
    main()
