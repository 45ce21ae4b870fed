"""Run bulkdrop's benchmarks against the simulator on loopback; print a table, write JSON.

    .venv/bin/python -m bench                    # everything, full size (a few minutes)
    .venv/bin/python -m bench --quick            # smoke run, about a minute
    .venv/bin/python -m bench --only latency --only idle --idle-seconds 30
    .venv/bin/python -m bench --json /tmp/r.json --markdown /tmp/r.md

Scenarios (--only NAME): throughput, latency, large, idle, backlog, jsonarray, year. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import backlog_start, idle, jsonarray, largefile, latency, throughput, year
from bench.common import BENCH, ROOT, Row, fingerprint, log, snapshot_daemon

Scenario = Callable[[argparse.Namespace, Path], Awaitable[tuple[list[Row], dict[str, Any]]]]
SCENARIOS: dict[str, Scenario] = {
    "throughput": throughput.run,
    "latency": latency.run,
    "large": largefile.run,
    "idle": idle.run,
    "backlog": backlog_start.run,
    "jsonarray": jsonarray.run,
    "year": year.run,
}
# knob: (full, quick)
SIZES: dict[str, tuple[float, float]] = {
    "files": (2000, 200),
    "curl_files": (200, 20),
    "latency_files": (50, 10),
    "latency_gap": (0.2, 0.2),
    "large_mb": (1024, 64),
    "array_mb": (1024, 64),
    "idle_seconds": (60, 5),
    "backlog": (100_000, 5000),
    "backlog_seconds": (10, 3),
    "year_rows": (1_000_000, 20_000),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", choices=list(SCENARIOS), metavar="NAME",
                   help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of ~1 min")
    p.add_argument("--files", type=int, help="throughput: files dropped at once (2000)")
    p.add_argument("--curl-files", type=int, help="throughput: files for the curl loop (200)")
    p.add_argument("--latency-files", type=int, help="latency: files renamed in (50)")
    p.add_argument("--latency-gap", type=float, help="latency: seconds between files (0.2)")
    p.add_argument("--large-mb", type=int, help="large: file size in MiB (1024)")
    p.add_argument("--array-mb", type=int, help="jsonarray: JSON array size in MiB (1024)")
    p.add_argument("--idle-seconds", type=float, help="idle: seconds measured (60)")
    p.add_argument("--backlog", type=int, help="backlog: files waiting at start (100000)")
    p.add_argument("--backlog-seconds", type=float,
                   help="backlog: seconds run after the first POST before reading RSS (10)")
    p.add_argument("--year-rows", type=int,
                   help="year: finished files in the ledger and in done/ (1000000)")
    p.add_argument("--json", type=Path, default=BENCH / "results.json", metavar="PATH",
                   help="write the results here (default: bench/results.json)")
    p.add_argument("--markdown", type=Path, metavar="PATH", help="also write the table here")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, spools)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--live", action="store_true",
                   help="run daemon/ from the working tree instead of a copy taken at start")
    args = p.parse_args(argv)
    for knob, (full, quick) in SIZES.items():
        if getattr(args, knob) is None:
            value = quick if args.quick else full
            setattr(args, knob, type(full)(value))
    return args


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    free = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.strip("\n")
    mem = next((line.split()[1] for line in free.splitlines() if line.startswith("Mem:")), "")
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": model, "memory": mem,
            "free_h": free, "kernel": platform.release(),
            "python": platform.python_version(), "curl": _curl_version()}


def _revision() -> dict[str, Any]:
    """HEAD (read-only git calls), and whether daemon/ differed from it at the start."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "daemon_modified": bool(git("status", "--porcelain", "--", "daemon"))}


def _curl_version() -> str:
    try:
        out = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return ""
    return out.split("\n", 1)[0]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def verdict(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "MISSED")


COLUMNS = ("scenario", "figure", "value", "baseline", "baseline value", "ratio", "target",
           "met", "sim CPU")


def cells(row: Row) -> list[str]:
    ratio = row.ratio
    return [row.scenario, row.figure, fmt(row.value, row.unit), row.baseline,
            fmt(row.base_value, row.base_unit), "" if ratio is None else f"{ratio:.2f}x",
            row.target, verdict(row.met),
            "" if row.sim_cpu is None else f"{row.sim_cpu * 100:.0f}%"]


def table(rows: list[Row]) -> str:
    data = [list(COLUMNS)] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in data) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in data]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {r.scenario}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + (["notes:", *notes] if notes else []))


def markdown(rows: list[Row]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(row)) + " |")
    notes = [f"- {r.scenario}: {r.note}" for r in rows if r.note]
    return "\n".join(out + ([""] + notes if notes else []))


async def run_all(args: argparse.Namespace, work: Path) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    details: dict[str, Any] = {}
    for name, scenario in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        started = time.monotonic()
        got, detail = await scenario(args, work / name)
        detail["scenario_seconds"] = round(time.monotonic() - started, 1)
        log(f"{name}: done in {detail['scenario_seconds']:.0f} s")
        rows += got
        details[name] = detail
    return rows, details


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the baselines")
    started = time.monotonic()
    when = datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="bulkdrop-bench-"))
    log(f"work folder {work}")
    revision = _revision()
    revision["daemon_fingerprint"] = (fingerprint(ROOT / "daemon") if args.live
                                      else snapshot_daemon(work / "code"))
    try:
        rows, details = asyncio.run(run_all(args, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - started
    revision["daemon_changed_during_run"] = (
        fingerprint(ROOT / "daemon") != revision["daemon_fingerprint"])
    if revision["daemon_changed_during_run"]:
        log("daemon/ changed during the run" + (": figures mix versions" if args.live else
            "; every scenario ran the copy taken at the start"))
    command = "python -m bench" + ("" if argv is None and len(sys.argv) == 1 else
                                   " " + shlex.join(sys.argv[1:] if argv is None else argv))
    info = {**machine(), **revision}
    print(f"bulkdrop {info['commit']}{' (daemon/ modified)' if info['daemon_modified'] else ''}"
          f" benchmarks, {when:%Y-%m-%d %H:%M} UTC, {info['nproc']} x {info['cpu']}, "
          f"{info['memory']} RAM, Python {info['python']}")
    print(table(rows))
    missed = [r for r in rows if r.met is False]
    print(f"targets: {sum(1 for r in rows if r.met)} met, {len(missed)} missed"
          + (": " + "; ".join(f"{r.scenario} {r.figure} ({r.target})" for r in missed)
             if missed else ""))
    print(f"total {total:.0f} s")
    out = {"date": when.isoformat(timespec="seconds"), "command": command,
           "total_seconds": round(total, 1), "machine": info,
           "sizes": {k: getattr(args, k) for k in SIZES},
           "rows": [r.as_dict() for r in rows], "details": details}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(rows) + "\n")
    log(f"wrote {args.json}")
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
