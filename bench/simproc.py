"""The simulator as the benchmarks run it: `bulkdrop sim` with its log at warning.

Same options and behaviour as `python -m daemon sim`; the only difference is that the
simulator's per-job info lines (two per job, rendered by structlog's default console
renderer when nothing configures it) are not written, so the simulator spends its CPU on
the API and not on logging. It prints its base URL on stdout once listening.

    python -m bench.simproc --port 0 --job-seconds 0 --no-fail-invalid-emails
"""

from __future__ import annotations

import argparse
import sys

from daemon import logs
from daemon.sim import cli


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_arguments(parser)
    args = parser.parse_args()
    logs.configure("json", "warning")
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
