"""Render a results file of `python -m bench` as Markdown (as in bench/README.md).

    .venv/bin/python -m bench.report [bench/results.json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from bench.__main__ import fmt, markdown
from bench.common import BENCH, Row


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    names = {f.name for f in fields(Row)}
    rows = [Row(**{k: v for k, v in r.items() if k in names}) for r in results["rows"]]
    code = f"`{m['commit']}`"
    if m.get("daemon_modified"):
        code += (f" plus uncommitted changes to daemon/ (fingerprint "
                 f"`{m['daemon_fingerprint']}`)")
    lines = [
        f"- date: {results['date']}",
        f"- command: `{results['command']}` (from the repository root, the venv's python)",
        f"- machine: {m['nproc']} CPUs (`nproc`), `{m['cpu']}` (/proc/cpuinfo model name), "
        f"{m['memory']} RAM, Linux {m['kernel']}, Python {m['python']}",
        f"- code: {code}",
        f"- total run time: {results['total_seconds']:.0f} s",
        "",
        "```",
        "$ free -h",
        m["free_h"],
        "```",
        "",
        markdown(rows),
        "",
    ]
    for row in rows:
        if row.met is not None:
            lines.append(f"- {'met' if row.met else '**missed**'}: {row.scenario}, "
                         f"{row.figure}: {_value(row)} (target {row.target})")
    return "\n".join(lines)


def _value(row: Row) -> str:
    text = fmt(row.value, row.unit)
    if row.ratio is not None and "x" in row.target:
        text += f" = {row.ratio:.2f}x {row.baseline}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?", default=BENCH / "results.json")
    args = parser.parse_args()
    print(render(json.loads(args.results.read_text())))


if __name__ == "__main__":
    main()
