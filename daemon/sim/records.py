"""Incremental record counting for CSV and JSON-lines uploads, and the simulator's
failing-record rule.

The body arrives in chunks and may be larger than we keep in memory, so records are
parsed as bytes come in, a line at a time. A CSV record ends at a newline once it holds
an even number of quote characters (RFC 4180 escapes a quote by doubling it); each
complete record is then parsed with the csv module. A JSON-lines record is one line.
Malformed input is counted as best we can, never raised.
"""

from __future__ import annotations

import codecs
import csv
import json
from typing import Any

# Failed records kept per job for the errors endpoint; the count is always exact.
MAX_KEPT_FAILURES = 100_000
# What a JSON line that is not an object holds, named for its failure message.
_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number",
          bool: "a boolean", type(None): "null"}


class BodyParser:
    """Feed body bytes with `feed`, then call `close`; read the counts afterwards."""

    def __init__(self, check_emails: bool) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._check_emails = check_emails
        self._tail = ""  # text after the last newline seen
        self.records_count = 0
        self.failed_count = 0
        self.failed_records: list[dict[str, Any]] = []

    def feed(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _lines(self, data: bytes) -> list[str]:
        """The complete lines so far, without their "\\n"; the rest waits for more."""
        lines = (self._tail + self._decoder.decode(data)).split("\n")
        self._tail = lines.pop()
        return lines

    def _rest(self) -> str:
        """What follows the last newline once the body has ended."""
        text = self._tail + self._decoder.decode(b"", final=True)
        self._tail = ""
        return text

    def _fail(self, message: str, record: dict[str, Any]) -> None:
        """Fail the record counted last."""
        self.failed_count += 1
        if len(self.failed_records) < MAX_KEPT_FAILURES:
            self.failed_records.append(
                {"recordNumber": self.records_count, "message": message, "record": record}
            )


class RecordParser(BodyParser):
    """CSV: a header row, then a record per row; blank lines are skipped."""

    def __init__(self, check_emails: bool) -> None:
        super().__init__(check_emails)
        self._pending: list[str] = []  # physical lines of a record still inside quotes
        self._pending_quotes = 0
        self._header: list[str] | None = None
        self._email_columns: list[int] = []

    def feed(self, data: bytes) -> None:
        for line in self._lines(data):
            self._line(line + "\n")

    def close(self) -> None:
        text = self._rest()
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
                record = {h: row[j] if j < len(row) else "" for j, h in enumerate(self._header)}
                self._fail(f"Invalid email address '{value}'", record)
                return


class JsonLinesParser(BodyParser):
    """JSON lines: an object a line, each non-blank line a record ("\\r\\n" is fine too).

    A line that is not a JSON object is a record that fails, with an empty "record".
    """

    def feed(self, data: bytes) -> None:
        self._count(self._lines(data))

    def close(self) -> None:
        self._count([self._rest()])

    def _count(self, lines: list[str]) -> None:
        if not self._check_emails:
            # Fast path: no JSON is parsed, so a malformed line counts like any other.
            self.records_count += sum(1 for line in lines if line and not line.isspace())
            return
        for line in lines:
            if line and not line.isspace():
                self.records_count += 1
                self._check(line)

    def _check(self, line: str) -> None:
        record = self._parse(line)
        if record is None:
            return
        for key, value in record.items():
            if not isinstance(value, str) or "email" not in key.lower():
                continue
            if value.strip() and "@" not in value:
                self._fail(f"Invalid email address '{value}'", record)
                return

    def _parse(self, line: str) -> dict[str, Any] | None:
        """The object on `line`, or None once the record has failed as malformed."""
        try:
            value = json.loads(line)
        except ValueError as exc:
            problem = str(exc)
        except RecursionError:
            problem = "nested too deeply"
        else:
            if isinstance(value, dict):
                return value
            problem = f"expected an object, got {_KINDS.get(type(value), 'a value')}"
        self._fail(f"Malformed JSON record: {problem}", {})
        return None
