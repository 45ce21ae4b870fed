"""structlog set-up: JSON lines for machines, readable lines on a terminal.

Event names are fixed strings (``file.claimed``, ``job.created`` ...) so that people
and tests can search for them; context such as ``file`` and ``job_id`` is bound once
and travels as keys, never formatted into the message.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog to *stream* (stderr): console on a TTY (or when asked), else JSON."""
    out = stream if stream is not None else sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=out.isatty()) if console
                     else structlog.processors.JSONRenderer(sort_keys=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    """A lazy logger: safe at import time, it takes the configuration in force when used."""
    return structlog.get_logger(**context)


def describe_error(exc: BaseException) -> str:
    """One line naming an error: the first of an exception group (asyncio's TaskGroup,
    anyio's in watchfiles) rather than the group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
