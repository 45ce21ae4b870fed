"""The bulk API's answers in every shape on record (``reference/api-notes.md``): status
bodies classic and newer ("bulk v3"), the status words, and error records.

Classic status body: ``status``, ``recordsCount``, ``recordsFailedCount``,
``message``/``error``/``infoMessage``. Newer: ``jobStatus``, ``recordCount``,
``errorCount``, ``statusMessage``, ``createdDate`` (epoch ms). Error records carry
their message in ``message``, ``errorMessage``, ``error`` or ``status`` (``"74234:
Invalid prospect email address"``), with or without a row number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ENDED_WELL = frozenset({"COMPLETED", "COMPLETE"})
ENDED_BADLY = frozenset({"FAILED", "ERROR", "ABORTED", "CANCELLED", "CANCELED"})
RUNNING = frozenset({"CREATED", "QUEUED", "PENDING", "STARTED", "RUNNING", "PROCESSING",
                     "IN_PROGRESS", "CANCELLATION_PENDING"})
# Ends after which the job may have error records whatever its counts say.
ERRORS_LIKELY = frozenset({"ERROR", "ABORTED"})
MESSAGE_KEYS = ("message", "errorMessage", "error", "status")


def _first(body: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if body.get(key) is not None:
            return body[key]
    return None


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        count = None if value is None else int(value)
    except (TypeError, ValueError):
        return None
    return count if count is None or count >= 0 else None


@dataclass(frozen=True)
class JobStatus:
    """One status body, whichever its shape."""
    word: str | None       # verbatim, as the API spelled it
    count: int | None      # recordsCount / recordCount: see :func:`records`
    failed: int | None     # recordsFailedCount / errorCount; None when not given
    message: str | None    # what the API says about the job, if anything

    @property
    def upper(self) -> str:
        return (self.word or "").strip().upper()

    @property
    def ended(self) -> bool:
        return self.upper in ENDED_WELL or self.upper in ENDED_BADLY

    @property
    def ended_well(self) -> bool:
        return self.upper in ENDED_WELL

    @property
    def known(self) -> bool:
        return self.ended or self.upper in RUNNING


def read_status(body: dict[str, Any]) -> JobStatus:
    word = _first(body, "status", "jobStatus")
    message = _first(body, "message", "error", "statusMessage", "infoMessage")
    return JobStatus(None if word is None else str(word),
                     _count(_first(body, "recordsCount", "recordCount")),
                     _count(_first(body, "recordsFailedCount", "errorCount")),
                     None if message in (None, "") else str(message))


@dataclass(frozen=True)
class Records:
    total: int | None
    failed: int | None

    @property
    def succeeded(self) -> int | None:
        if self.total is None or self.failed is None:
            return None
        return self.total - self.failed

    @property
    def all_failed(self) -> bool:
        return bool(self.total) and self.failed == self.total

    @property
    def some_failed(self) -> bool:
        return bool(self.failed) and not self.all_failed


def records(count: int | None, failed: int | None, errors_read: int | None) -> Records:
    """What the job did with the records. ``recordsCount`` is the total, failed ones
    included (the API's own test suite reads it so); a body whose failed count exceeds
    it can only be counting the successes, and then the total is their sum. Without a
    failed count, the error records read are the failed ones."""
    if failed is None:
        failed = errors_read
    if count is not None and failed is not None and failed > count:
        count += failed
    return Records(count, failed)


def error_message(record: Any) -> str:
    """The message of one error record, wherever the API put it."""
    if isinstance(record, dict):
        for key in MESSAGE_KEYS:
            value = record.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if isinstance(value, str) and value.strip():
                return value.strip()
        return json.dumps(record, ensure_ascii=False, default=str)[:500]
    return str(record)


def described(record: Any) -> dict[str, Any]:
    """An error record for the result: a normalised message beside the record as sent."""
    return {"message": error_message(record), "raw": record}
