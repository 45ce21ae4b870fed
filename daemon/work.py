"""What is known about one claimed file while it is being carried: its ledger row, in
memory, plus what its checks found."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from daemon import csvfile, jsonfile
from daemon.ledger import Row
from daemon.spool import Claimed

# What reading a file for its checks found (CSV or JSON).
Inspection = csvfile.Inspection | jsonfile.JsonInspection


@dataclass
class Work:
    claimed: Claimed
    received_at: str
    instance: str | None = None        # the connector instance it goes to
    obj: str | None = None
    hub: str | None = None
    job_id: str | None = None          # its (first part's) job, once created
    attempts: int = 0
    submitted_at: str | None = None
    possible_duplicate: bool = False   # a job creation was retried after an attempt that
                                       # may have reached the API
    sha256: str | None = None
    inspection: Inspection | None = None
    size: int | None = None
    unreadable: OSError | None = None  # it could not be read for its checks
    problem: str | None = None         # it never becomes a job (not a file, a bad name)
    retry_reason: str | None = None    # the last attempt may have made a job: why
    log: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.problem = self.problem or self.claimed.problem

    @classmethod
    def resumed(cls, row: Row, claimed: Claimed, instance: str | None) -> Work:
        return cls(claimed, row.received_at, instance, row.object, row.hub, row.job_id,
                   row.attempts, row.submitted_at,
                   possible_duplicate=bool(row.possible_duplicate))

    @property
    def examined(self) -> bool:
        """Read for its checks already (a new claim is, in the claim's trip to a thread)."""
        return (self.sha256 is not None or self.unreadable is not None
                or self.problem is not None)

    @property
    def rel(self) -> str:
        return str(self.claimed.rel)

    @property
    def rel_path(self) -> PurePosixPath:
        return self.claimed.rel

    @property
    def upload_copy(self) -> Path | None:
        """A JSON array's copy as JSON lines, which its upload reads."""
        found = self.inspection
        return found.copy if isinstance(found, jsonfile.JsonInspection) else None

    @property
    def rows(self) -> int | None:
        return self.inspection.rows if self.inspection else None
