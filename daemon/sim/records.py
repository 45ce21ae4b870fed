"""Incremental CSV record counting and the simulator's failing-record rule.

The body arrives in chunks and may be larger than we keep in memory, so records are
parsed as bytes come in. A record ends at a newline once it holds an even number of
quote characters (RFC 4180 escapes a quote by doubling it); each complete record is
then parsed with the csv module. Malformed input is counted as best we can, never raised.
"""

from __future__ import annotations

import codecs
import csv
from typing import Any

# Failed records kept per job for the errors endpoint; the count is always exact.
MAX_KEPT_FAILURES = 100_000


class RecordParser:
    """Feed body bytes with `feed`, then call `close`; read the counts afterwards."""

    def __init__(self, check_emails: bool) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._check_emails = check_emails
        self._tail = ""  # text after the last newline seen
        self._pending: list[str] = []  # physical lines of a record still inside quotes
        self._pending_quotes = 0
        self._header: list[str] | None = None
        self._email_columns: list[int] = []
        self.records_count = 0
        self.failed_count = 0
        self.failed_records: list[dict[str, Any]] = []

    def feed(self, data: bytes) -> None:
        text = self._tail + self._decoder.decode(data)
        lines = text.split("\n")
        self._tail = lines.pop()
        for line in lines:
            self._line(line + "\n")

    def close(self) -> None:
        text = self._tail + self._decoder.decode(b"", final=True)
        self._tail = ""
        if text:
            self._line(text)
        if self._pending:
            self._record(self._pending)
            self._pending = []

    def _line(self, line: str) -> None:
        quotes = line.count('"')
        if not self._pending and quotes % 2 == 0:
            self._record([line])
            return
        self._pending.append(line)
        self._pending_quotes += quotes
        if self._pending_quotes % 2 == 0:
            self._record(self._pending)
            self._pending = []
            self._pending_quotes = 0

    def _record(self, lines: list[str]) -> None:
        if len(lines) == 1 and not lines[0].strip("\r\n"):
            return  # blank line
        if self._header is not None and not (self._check_emails and self._email_columns):
            self.records_count += 1  # fast path: nothing to look at in the fields
            return
        try:
            row = next(csv.reader(lines), [])
        except csv.Error:
            row = []
        if self._header is None:
            self._header = row
            self._email_columns = [i for i, h in enumerate(row) if "email" in h.lower()]
            return
        self.records_count += 1
        self._check(row)

    def _check(self, row: list[str]) -> None:
        assert self._header is not None
        for i in self._email_columns:
            value = row[i] if i < len(row) else ""
            if value.strip() and "@" not in value:
                self.failed_count += 1
                if len(self.failed_records) < MAX_KEPT_FAILURES:
                    self.failed_records.append(
                        {
                            "recordNumber": self.records_count,
                            "message": f"Invalid email address '{value}'",
                            "record": {
                                h: row[j] if j < len(row) else ""
                                for j, h in enumerate(self._header)
                            },
                        }
                    )
                return
