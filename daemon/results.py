"""What a finished file says about itself: ``<file>.result.json`` and ``<file>.errors.csv``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from daemon.answers import Records, described

COMPLETE, FAILED, REJECTED = "COMPLETE", "FAILED", "REJECTED"
ERRORS_IN_RESULT = 100  # the rest are in the errors CSV, uncapped


@dataclass(frozen=True)
class Outcome:
    status: str                        # COMPLETE | FAILED | REJECTED
    reason: str
    api_status: str | None = None
    records_total: int | None = None
    records_failed: int | None = None
    errors: Sequence[Any] = field(default_factory=list)
    errors_total: int | None = None    # when more were found than are listed
    jobs: Sequence[Any] | None = None  # a file sent in parts: one entry per job
    possible_duplicate: bool = False   # a job creation was retried after an attempt
                                       # that may have reached the API
    job_id: str | None = None          # the job it is the end of (a part's, in a plan)

    @property
    def ok(self) -> bool:
        return self.status == COMPLETE


def build_result(outcome: Outcome, *, rel: str, obj: str | None, hub: str | None,
                 job_id: str | None, sha256: str | None, size: int | None, attempts: int,
                 csv_info: dict[str, Any] | None, received_at: str, submitted_at: str | None,
                 finished_at: str, possible_duplicate: bool = False,
                 instance: str | None = None,
                 json_info: dict[str, Any] | None = None) -> dict[str, Any]:
    counted = Records(outcome.records_total, outcome.records_failed)
    records = {"total": counted.total, "failed": counted.failed,
               "succeeded": counted.succeeded}
    listed = outcome.errors[:ERRORS_IN_RESULT]
    # The API's error records, each with its message found; a file's own problems as found.
    errors = list(listed) if outcome.status == REJECTED else [described(e) for e in listed]
    result = {
        "file": rel,
        "instance": instance,
        "object": obj or None,
        "hub": hub,
        "status": outcome.status,
        "api_status": outcome.api_status,
        "job_id": job_id,
        "records": records,
        # Some records failed, not all: the file is where [objects] partial says.
        "partial": counted.some_failed,
        "errors": errors,
        "errors_total": (outcome.errors_total if outcome.errors_total is not None
                         else len(outcome.errors)),
        "reason": outcome.reason,
        "sha256": sha256,
        "bytes": size,
        "csv": csv_info,
        "json": json_info,
        "attempts": attempts,
        # True when a job creation was retried after a request that may have reached the
        # API (its answer lost, a timeout, a 5xx): the API may hold a second job.
        "possible_duplicate": possible_duplicate,
        "received_at": received_at,
        "submitted_at": submitted_at,
        "finished_at": finished_at,
    }
    if outcome.jobs is not None:
        result["jobs"] = list(outcome.jobs)
    return result


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """One level of columns: nested objects become dotted names, lists become JSON text."""
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    name = prefix or "error"
    if value is None:
        return {name: ""}
    if isinstance(value, str):
        return {name: value}
    return {name: json.dumps(value, ensure_ascii=False)}


def errors_csv(records: Iterable[Any]) -> bytes:
    """All error records as a CSV a spreadsheet opens: one row each, columns in first-seen order."""
    rows = [flatten(r) for r in records]
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8", "backslashreplace")  # an API's half characters
