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
    # What libraries log through the standard library (aiohttp's server on a malformed
    # request, say) comes out the same way: one line, its traceback a field of it.
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _Relay)] + [_Relay()]
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)


class _Relay(logging.Handler):
    """Standard-library records as structlog lines: event ``library.log``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger()
            context: dict[str, Any] = {"logger": record.name, "message": record.getMessage()}
            if record.exc_info:
                context["exc_info"] = record.exc_info
            log.log(record.levelno, "library.log", **context)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def get_logger(**context: Any) -> Any:
    """A lazy logger: safe at import time, it takes the configuration in force when used."""
    return structlog.get_logger(**context)


def describe_error(exc: BaseException) -> str:
    """One line naming an error: the first of an exception group (asyncio's TaskGroup,
    anyio's in watchfiles) rather than the group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
