"""What writing ``<file>.failed.csv`` costs: 1,000,000 rows, 100,000 of them failed.

    python -m bench.failedrows               # each matching route, in a fresh process

For each route (row number, identifier, fields) a child process holds the 100,000 error
records as the daemon holds them when a job ends (the simulator's shapes: numbered,
or plain with the record's fields), then writes the failed-rows file in one pass over
the dropped file. Reported: the child's peak RSS (VmHWM) and its size before the error
records, and the seconds the pass took. The target is under 150 MB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

MB = 1_000_000

CHILD = """
import io, sys, time
from pathlib import Path
from daemon.csvfile import Columns, inspect
from daemon.failedrows import Span, write_failed_rows
from daemon.fileref import FileRef

def rss(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))

path, route, rows, every = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
found = inspect(path)
base = rss("VmRSS")
header = ["email", "first_name", "last_name"]
errors = []
for i in range(0, rows, every):
    record = {"email": f"user{i}", "first_name": f"First{i}", "last_name": "Last"}
    message = f"Invalid email address 'user{i}'"
    if route == "row_number":
        errors.append({"recordNumber": i + 1, "message": message, "record": record})
    else:
        errors.append({**record, "status": f"74234: {message}"})
identifier = "email" if route == "identifier" else None
held = rss("VmRSS")
started = time.perf_counter()
with open(path.with_suffix(".failed.csv"), "wb") as out:
    result = write_failed_rows(FileRef(path), found.dialect, Columns(), identifier,
                               [Span(None, 0, found.rows)], errors, out)
seconds = time.perf_counter() - started
print(base, rss("VmHWM"), result.rows, result.unmatched, f"{seconds:.2f}", held)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=10, help="every n-th row fails")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dropped.csv"
        with path.open("w") as fh:
            fh.write("email,first_name,last_name\n")
            for i in range(args.rows):
                email = f"user{i}" if i % args.every == 0 else f"user{i}@example.com"
                fh.write(f"{email},First{i},Last\n")
        size = path.stat().st_size / MB
        print(f"{args.rows:,} rows ({size:.0f} MB), {args.rows // args.every:,} failed")
        for route in ("row_number", "identifier", "fields"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), route, str(args.rows),
                 str(args.every)], check=True, capture_output=True, text=True).stdout.split()
            base, peak, held = int(out[0]), int(out[1]), int(out[5])
            rows, unmatched, seconds = out[2], out[3], out[4]
            print(f"  {route:10}  peak RSS {peak / 1024:4.0f} MiB (before the error records "
                  f"{base / 1024:.0f}, with them {held / 1024:.0f}), {rows} rows written, "
                  f"{unmatched} unmatched, {seconds} s ({size / float(seconds):.0f} MB/s)")


if __name__ == "__main__":
    main()
