"""The checks alone, in one process: MB/s of ``csvfile.inspect`` and
``jsonfile.inspect`` on generated files, the median of ``--repeat`` runs each.

    python -m bench.checks                     # this tree's daemon/
    python -m bench.checks --code /tmp/old     # another checkout's, e.g. a worktree

The files (made once in ``--dir``, about 260 MB and 60 MB): plain CSV rows (comma,
CRLF, no quotes: the fast path's), the same contacts with quoted fields
(bench/csv_upload.py's, the large-file scenario's), and 300,000 JSON objects as JSON
lines and as an indented array.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

MB = 1_000_000


def make_files(folder: Path) -> dict[str, Path]:
    from bench.csv_upload import generate

    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / name for name in
             ("plain.csv", "quoted.csv", "objects.jsonl", "objects.json")}
    if not files["plain.csv"].exists():
        row = "user{0}@example.com,First{0},Last{0},Acme Inc,+1-555-{0:07d},Springfield,US\r\n"
        with files["plain.csv"].open("wb") as fh:
            fh.write(b"email,first_name,last_name,company,phone,city,country\r\n")
            for start in range(0, 3_000_000, 100_000):
                fh.write("".join(row.format(i) for i in range(start, start + 100_000)).encode())
    if not files["quoted.csv"].exists():
        generate(files["quoted.csv"], folder / "quoted.tsv", 128 * 1024 * 1024)
    if not files["objects.jsonl"].exists():
        objects = [json.dumps({"email": f"user{i}@example.com", "first_name": "Fïrst",
                               "last_name": f"Last{i}", "company": "Acme",
                               "address": {"city": "Köln", "zip": str(i)}, "tags": ["a", "b"],
                               "score": i * 1.5, "subscribed": True}, ensure_ascii=False)
                   for i in range(300_000)]
        files["objects.jsonl"].write_text("\n".join(objects) + "\n", encoding="utf-8")
        files["objects.json"].write_text("[\n  " + ",\n  ".join(objects) + "\n]\n",
                                         encoding="utf-8")
    return files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", type=Path, help="the checkout whose daemon/ is measured")
    p.add_argument("--dir", type=Path, default=Path("/tmp/bulkdrop-bench-checks"))
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    files = make_files(args.dir)  # (bench.csv_upload puts this tree first on the path)
    if args.code is not None:
        for name in [m for m in sys.modules if m == "daemon" or m.startswith("daemon.")]:
            del sys.modules[name]
        sys.path.insert(0, str(args.code.resolve()))
    csvfile = importlib.import_module("daemon.csvfile")
    checked: dict[str, Any] = {"csv": csvfile.inspect}
    with contextlib.suppress(ImportError):  # a checkout before JSON files has none
        checked["json"] = importlib.import_module("daemon.jsonfile").inspect
    print(f"daemon/ of {Path(str(csvfile.__file__)).parent.parent}")
    for name, path in files.items():
        inspect = checked.get("json" if name.startswith("objects") else "csv")
        if inspect is None:
            continue
        size = path.stat().st_size
        seconds = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            found = inspect(path)
            seconds.append(time.perf_counter() - started)
        print(f"{name:14} {size / MB:6.0f} MB  {size / MB / statistics.median(seconds):6.1f} MB/s"
              f"  (rows {found.rows:,}, problems {found.problems_total})")


if __name__ == "__main__":
    main()
