"""How long the ledger takes to open once it is checked and read end to end at start.

    python -m bench.ledger_open                  # 100,000 finished files
    python -m bench.ledger_open --files 1000000

Builds a ledger like a year of files (every file finished, with its result and four
history lines), then opens it as the daemon does after a crash: integrity_check and
every row read (a clean stop's record, which lets the next start skip that, is removed).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from daemon.ledger import SCHEMA, Ledger, utcnow

RESULT = '{"file": "contact/x.csv", "status": "COMPLETE", "errors_all": []}' + " " * 400


def build(db: Path, files: int) -> None:
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA)
    with conn:
        for i in range(files):
            claim = f"{i:020x}"
            conn.execute(
                "INSERT INTO files (claim_id, rel_path, claimed_path, state, received_at,"
                " updated_at, job_id, outcome, reason, result_json, dest_path)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (claim, f"contact/file-{i}.csv", f"processing/n/contact/{claim}__f.csv",
                 "FINISHED", utcnow(), utcnow(), str(1000 + i), "COMPLETE",
                 "job completed: 100 records", RESULT, f"done/contact/file-{i}.csv"))
            conn.executemany("INSERT INTO events (claim_id, at, state, detail)"
                             " VALUES (?, ?, ?, ?)",
                             [(claim, utcnow(), state, "detail")
                              for state in ("CLAIMED", "SUBMITTED", "FINISHING", "FINISHED")])
    conn.close()


async def open_once(db: Path) -> float:
    # The record of the last clean close would skip what is measured here.
    db.with_name(f"{db.name}.closed").unlink(missing_ok=True)
    ledger = Ledger(db)
    started = time.perf_counter()
    await ledger.open()
    took = time.perf_counter() - started
    await ledger.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bulkdrop.db"
        build(db, args.files)
        times = sorted(asyncio.run(open_once(db)) for _ in range(args.repeat))
        print(f"{args.files:,} files, ledger {db.stat().st_size / 2**20:.0f} MiB: opened in "
              f"{times[len(times) // 2]:.2f} s (median of {args.repeat}; "
              f"{', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
