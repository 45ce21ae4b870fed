"""What one hostile line costs in memory, for [spool] max_line_length.

    python -m bench.linelimit            # limits of 1, 4 and 16 MiB characters

For each limit, the worst files a dropper can make within it, each checked (and, when it
passes, converted for upload as the daemon would) in a fresh process: the peak RSS over
that process's own start-up size. The default limit is the largest whose worst case
keeps a daemon (about 50 MB idle) near 100 MB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

MIB = 1 << 20

# Run in a child: peak RSS (VmHWM, KiB: its own, where ru_maxrss would carry the
# parent's over exec) before and after checking one file.
CHILD = """
import sys
from pathlib import Path
from daemon import csvfile
from daemon.normalise import normalised_blocks

def peak():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))

csvfile.set_line_limit(int(sys.argv[2]))
base = peak()
found = csvfile.inspect(Path(sys.argv[1]))
if not found.problems and found.dialect:
    for _ in normalised_blocks(Path(sys.argv[1]), found.dialect, csvfile.Columns()):
        pass
print(base, peak(), "rejected" if found.problems else "accepted")
"""


def files(folder: Path, limit: int) -> dict[str, Path]:
    """The worst cases for *limit* characters."""
    n = limit - 16
    cases = {
        "one line 64 MiB, no newline": b"a,b\n" + b"x" * (64 * MIB),
        "4-byte characters, just under": b"a,b\n" + ("\U0001F600" * n).encode()
        + b",1\n",
        "commas, just under": b"a,b\n" + b"," * n + b"\n1,2\n",
        "quoted fields over many lines": b"a,b\n" + b'"x\nx",' * (n // 6) + b'"x"\n',
    }
    out: dict[str, Path] = {}
    for name, data in cases.items():
        path = folder / f"{len(out)}.csv"
        path.write_bytes(data)
        out[name] = path
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits", default="1,4,16", help="limits in MiB characters")
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    print(f"{'limit':>8}  {'file':34}  {'verdict':8}  {'peak over start':>15}")
    with tempfile.TemporaryDirectory() as tmp:
        for mib in (int(x) for x in args.limits.split(",")):
            limit = mib * MIB
            for name, path in files(Path(tmp), limit).items():
                run = subprocess.run([sys.executable, "-c", CHILD, str(path), str(limit)],
                                     capture_output=True, text=True, cwd=root, check=True)
                base, peak, verdict = run.stdout.split()
                print(f"{mib:>5} Mi  {name:34}  {verdict:8}  "
                      f"{(int(peak) - int(base)) / 1024:>12.0f} MB")
                path.unlink()


if __name__ == "__main__":
    main()
