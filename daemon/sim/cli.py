"""`bulkdrop sim`: the simulator as a standalone server."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING, get_args

from daemon.sim.config import ErrorShape, JobOutcome, SimConfig, StatusShape

if TYPE_CHECKING:
    from daemon.sim.state import Simulator

DEFAULT_PORT = 8471


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SimConfig()
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    add("--port", type=int, default=DEFAULT_PORT, help="0 lets the OS pick (default: %(default)s)")
    add("--job-seconds", type=float, default=d.job_seconds, help="how long a job runs")
    add("--complete-word", default=d.complete_word, help="terminal status word for success")
    add("--objects", help="comma-separated object names for the hub (default: the API's example)")
    add("--job-outcome", choices=get_args(JobOutcome), help="force how every new job ends")
    add("--no-fail-invalid-emails", action="store_true", help="never fail records")
    add("--latency", type=float, default=0.0, help="seconds added to every API request")
    add("--error-rate", type=float, default=0.0, help="fraction of requests answered 5xx")
    add("--rate-limit-rate", type=float, default=0.0, help="fraction answered 429")
    add(
        "--retry-after-rate",
        type=float,
        default=d.retry_after_rate,
        help="fraction of 429/503 answers carrying Retry-After",
    )
    add("--retry-after-seconds", type=int, default=d.retry_after_seconds)
    add("--drop-rate", type=float, default=0.0, help="fraction of connections dropped")
    add("--seed", type=int, help="seed for the fault dice")
    add("--create-faults", default="",
        help="comma-separated faults for the next job creations, in order: 503, 429, drop "
             "(no job), lost, 504 (the job is made, the answer lost or a gateway 504)")
    add("--create-delay", type=float, default=0.0,
        help="seconds a job creation waits, the job made, before it answers")
    add("--status-shape", choices=get_args(StatusShape), default=d.status_shape,
        help="status bodies as classic (status, recordsCount ...) or v3 (jobStatus, "
             "recordCount ...) (default: %(default)s)")
    add("--error-shape", choices=get_args(ErrorShape), default=d.error_shape,
        help="error records numbered (recordNumber, message, record) or plain (the "
             "record's fields, the message in status) (default: %(default)s)")
    add("--row-base", type=int, choices=(0, 1), default=d.row_base,
        help="recordNumber of the first data row in numbered error records "
             "(default: %(default)s)")
    add("--max-upload-bytes", type=int, default=0,
        help="answer 429 to an upload over this many bytes, as the API does past 6 GB")
    add("--user-secret", help="accept only this User secret (default: any non-empty)")
    add("--element-token", help="accept only this Element token (default: any non-empty)")
    add("--signature-key", help="sign completion callbacks with this key")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Raises ValueError naming the option's field when a value is out of range."""
    config = SimConfig(
        job_seconds=args.job_seconds,
        complete_word=args.complete_word,
        fail_invalid_emails=not args.no_fail_invalid_emails,
        job_outcome=args.job_outcome,
        latency_seconds=args.latency,
        error_rate=args.error_rate,
        rate_limit_rate=args.rate_limit_rate,
        retry_after_rate=args.retry_after_rate,
        retry_after_seconds=args.retry_after_seconds,
        drop_rate=args.drop_rate,
        seed=args.seed,
        create_faults=[f.strip() for f in args.create_faults.split(",") if f.strip()],
        create_delay_seconds=args.create_delay,
        status_shape=args.status_shape,
        error_shape=args.error_shape,
        max_upload_bytes=args.max_upload_bytes,
        row_base=args.row_base,
        user_secret=args.user_secret,
        element_token=args.element_token,
        signature_key=args.signature_key,
    )
    if args.objects:
        config.objects = [name.strip() for name in args.objects.split(",") if name.strip()]
    return config


async def serve(sim: Simulator, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve until `stop` is set, announcing the base URL on stdout once listening."""
    from daemon.sim.server import SimServer  # aiohttp.web: only for `bulkdrop sim`

    async with SimServer(sim, host=host, port=port) as server:
        print(f"Open Connectors simulator at {server.base_url}", flush=True)
        await stop.wait()


async def _main(sim: Simulator, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(sim, host, port, stop)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop, 2 for bad options, 1 if it cannot listen."""
    from daemon.sim.state import Simulator

    try:
        sim = Simulator(config_from_args(args))
    except ValueError as exc:
        print(f"bulkdrop sim: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_main(sim, args.host, args.port))
    except OSError as exc:
        print(f"bulkdrop sim: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
