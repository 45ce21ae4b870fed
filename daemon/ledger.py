"""The job ledger: every claimed file's state, its jobs and its history, in one SQLite
database per node; all the ledger's SQL is in this file.

Each write is durable before it returns (see :mod:`daemon.store`): once ``record_job``
returns, a crash or power loss cannot forget the job id; a write that fails for a reason
that passes is tried again until it succeeds, so a job id is never dropped for want of
space and its file is never uploaded again. A ledger that cannot be read at open is set
aside and a new one started (the files in processing/ are then claimed afresh).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from daemon.logs import get_logger
from daemon.store import Database

log = get_logger()

# States of one claimed file, in order. FINISHED rows are history. (SUBMITTING is no
# longer written; older ledgers may hold it, and it is resumed like CLAIMED.)
CLAIMED, SUBMITTING, SUBMITTED, FINISHING, FINISHED = (
    "CLAIMED", "SUBMITTING", "SUBMITTED", "FINISHING", "FINISHED")
UNFINISHED = (CLAIMED, SUBMITTING, SUBMITTED, FINISHING)

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    claim_id     TEXT PRIMARY KEY,
    rel_path     TEXT NOT NULL,
    claimed_path TEXT NOT NULL,
    state        TEXT NOT NULL,
    object       TEXT,
    hub          TEXT,
    job_id       TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    received_at  TEXT NOT NULL,
    submitted_at TEXT,
    finished_at  TEXT,
    outcome      TEXT,
    api_status   TEXT,
    reason       TEXT,
    result_json  TEXT,
    dest_path    TEXT,
    updated_at   TEXT NOT NULL,
    problem      TEXT,
    possible_duplicate INTEGER NOT NULL DEFAULT 0,
    instance     TEXT,
    records_total  INTEGER,
    records_failed INTEGER
);
CREATE TABLE IF NOT EXISTS parts (
    claim_id    TEXT NOT NULL,
    part        INTEGER NOT NULL,
    first_row   INTEGER NOT NULL,
    rows        INTEGER NOT NULL,
    job_id      TEXT,
    submitted_at TEXT,
    result_json TEXT,
    possible_duplicate INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (claim_id, part)
);
CREATE TABLE IF NOT EXISTS notifications (
    claim_id   TEXT NOT NULL,
    target     TEXT NOT NULL,
    event      TEXT NOT NULL,
    payload    TEXT NOT NULL,
    state      TEXT NOT NULL DEFAULT 'PENDING',
    attempts   INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    next_at    TEXT NOT NULL,
    last_error TEXT,
    PRIMARY KEY (claim_id, target)
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications(state, next_at);
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    claim_id TEXT NOT NULL,
    at       TEXT NOT NULL,
    state    TEXT NOT NULL,
    detail   TEXT
);
"""
# Columns added since the first release: (table, column, declaration) for older ledgers.
ADDED_COLUMNS = (
    ("files", "problem", "TEXT"),
    ("files", "possible_duplicate", "INTEGER NOT NULL DEFAULT 0"),
    ("parts", "possible_duplicate", "INTEGER NOT NULL DEFAULT 0"),
    ("files", "instance", "TEXT"),  # NULL: a single-instance ledger's, i.e. [api]'s
    ("files", "records_total", "INTEGER"),
    ("files", "records_failed", "INTEGER"),
)
BACKFILLED = {"records_total": "$.records.total", "records_failed": "$.records.failed"}
# Made after the columns (an older ledger gets them first): the web view's pages of
# finished files, newest first, and its counts, read from the index alone.
# files_counts also finds files by state (it took the place of files_state(state)), and
# `bulkdrop status` counts from it alone.
INDEXES = ("CREATE INDEX IF NOT EXISTS files_finished"
           " ON files(finished_at, outcome, records_failed);"
           "CREATE INDEX IF NOT EXISTS files_counts"
           " ON files(state, instance, outcome, records_failed);"
           "DROP INDEX IF EXISTS files_state;")


def utcnow() -> str:
    """Now in UTC as ISO 8601 with milliseconds, e.g. ``2026-01-02T03:04:05.678+00:00``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Part:
    part: int            # 1-based
    first_row: int       # 0-based index of its first data row
    rows: int
    job_id: str | None
    submitted_at: str | None
    result_json: str | None  # set once the part's job has ended
    possible_duplicate: bool = False


@dataclass(frozen=True)
class Row:
    claim_id: str
    rel_path: str
    claimed_path: str
    state: str
    object: str | None
    hub: str | None
    job_id: str | None
    attempts: int
    received_at: str
    submitted_at: str | None
    finished_at: str | None
    outcome: str | None
    api_status: str | None
    reason: str | None
    result_json: str | None
    dest_path: str | None
    problem: str | None = None         # why it never becomes a job (found at its claim)
    possible_duplicate: bool = False   # its job was created after a retry that may have
                                       # reached the API
    instance: str | None = None        # its connector instance (NULL: [api], "default",
                                       # the one of a single-instance ledger; "": none)


class Ledger(Database):
    """Every claimed file's state, its jobs and its history (see :mod:`daemon.store`)."""

    def prepare(self, conn: sqlite3.Connection) -> bool:
        created = not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='files'").fetchone()
        conn.executescript(SCHEMA)
        for table, column, declaration in ADDED_COLUMNS:
            names = {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}
            if column not in names:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
                if column in BACKFILLED:  # from what finished files recorded before
                    conn.execute(f"UPDATE files SET {column} = json_extract(result_json,"
                                 f" '{BACKFILLED[column]}') WHERE json_valid(result_json)")
        conn.executescript(INDEXES)
        return created

    def _submit(self, claim_id: str, state: str, detail: str | None, sql: str,
                params: tuple[Any, ...]) -> asyncio.Future[None]:
        """Queue a row change and its history line; the future is done once durable."""
        return self.submit([(sql, params), (
            "INSERT INTO events (claim_id, at, state, detail) VALUES (?, ?, ?, ?)",
            (claim_id, utcnow(), state, detail))])

    async def _commit(self, claim_id: str, state: str, detail: str | None, sql: str,
                      params: tuple[Any, ...]) -> None:
        """Change a row and add its history line; return once that is durable (tried
        again while the disk is full or failing: every write is repeatable)."""
        await self._submit(claim_id, state, detail, sql, params)

    def add_claim(self, claim_id: str, rel_path: str, claimed_path: str,
                  received_at: str, problem: str | None = None,
                  instance: str | None = None) -> asyncio.Future[None]:
        """Record a new claim. Queued before this returns; await the result for durability."""
        return self._submit(
            claim_id, CLAIMED, rel_path,
            "INSERT OR IGNORE INTO files (claim_id, rel_path, claimed_path, state,"
            " received_at, updated_at, problem, instance) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (claim_id, rel_path, claimed_path, CLAIMED, received_at, utcnow(), problem,
             instance))

    async def record_job(self, claim_id: str, job_id: str, submitted_at: str, obj: str,
                         hub: str, attempts: int, possible_duplicate: bool = False,
                         instance: str | None = None) -> None:
        """The file's job, with the instance that made it (its job is followed there)."""
        await self._commit(
            claim_id, SUBMITTED, job_id,
            "UPDATE files SET state=?, job_id=?, submitted_at=?, object=?, hub=?, attempts=?,"
            " possible_duplicate=?, instance=?, updated_at=? WHERE claim_id=?",
            (SUBMITTED, job_id, submitted_at, obj, hub, attempts, int(possible_duplicate),
             instance, utcnow(), claim_id))

    async def mark_finishing(self, claim_id: str, outcome: str, api_status: str | None,
                             reason: str, result_json: str, dest_path: str | None,
                             records: tuple[int | None, int | None] = (None, None),
                             notify: Sequence[tuple[str, str, str]] = (),
                             route: tuple[str | None, str | None] = (None, None)) -> None:
        """The file's end and where it goes, and, in the same commit, a notification for
        each target that wants it (target, event, payload): sent after, at least once."""
        now = utcnow()
        await self.submit([
            ("UPDATE files SET state=?, outcome=?, api_status=?, reason=?, result_json=?,"
             " dest_path=?, records_total=?, records_failed=?, object=coalesce(object, ?),"
             " hub=coalesce(hub, ?), updated_at=? WHERE claim_id=?",
             (FINISHING, outcome, api_status, reason, result_json, dest_path, *records,
              *route, now, claim_id)),
            *(("INSERT OR IGNORE INTO notifications (claim_id, target, event, payload,"
               " created_at, next_at) VALUES (?, ?, ?, ?, ?, ?)",
               (claim_id, target, event, payload, now, now))
              for target, event, payload in notify),
            ("INSERT INTO events (claim_id, at, state, detail) VALUES (?, ?, ?, ?)",
             (claim_id, now, FINISHING, outcome))])

    # -- notifications: the outbox --------------------------------------------------------

    async def record_notifications(self, claim_id: str,
                                   notify: Sequence[tuple[str, str, str]]) -> None:
        """Notifications of a file filed before they were recorded with it (idempotent)."""
        if notify:
            now = utcnow()
            await self.submit([(
                "INSERT OR IGNORE INTO notifications (claim_id, target, event, payload,"
                " created_at, next_at) VALUES (?, ?, ?, ?, ?, ?)",
                (claim_id, target, event, payload, now, now))
                for target, event, payload in notify])

    async def due_notifications(self, now: str, limit: int) -> list[dict[str, Any]]:
        rows = await self.run(self.query,
                              "SELECT n.claim_id, n.target, n.event, n.payload, n.attempts,"
                              " n.created_at, f.dest_path FROM notifications n"
                              " JOIN files f ON f.claim_id = n.claim_id"
                              " WHERE n.state = 'PENDING' AND n.next_at <= ?"
                              " AND f.state = 'FINISHED'"  # the file is where dest says
                              " ORDER BY n.next_at LIMIT ?", (now, limit))
        return [dict(r) for r in rows]

    async def next_notification_at(self) -> tuple[str | None, int]:
        """When the next pending notification is due, and how many are pending."""
        rows = await self.run(self.query,
                              "SELECT min(n.next_at) AS due, count(*) AS n FROM notifications n"
                              " JOIN files f ON f.claim_id = n.claim_id"
                              " WHERE n.state = 'PENDING' AND f.state = 'FINISHED'")
        return rows[0]["due"], rows[0]["n"]

    async def notification_done(self, claim_id: str, target: str, state: str,
                                attempts: int, error: str | None) -> None:
        # Its body is not kept once it is done with (history keeps the rest).
        await self.submit([("UPDATE notifications SET state=?, attempts=?, last_error=?,"
                            " payload='' WHERE claim_id=? AND target=?",
                            (state, attempts, error, claim_id, target))])

    async def notification_later(self, claim_id: str, target: str, attempts: int,
                                 next_at: str, error: str) -> None:
        await self.submit([("UPDATE notifications SET attempts=?, next_at=?, last_error=?"
                            " WHERE claim_id=? AND target=?",
                            (attempts, next_at, error, claim_id, target))])

    async def record_dest(self, claim_id: str, dest_path: str) -> None:
        await self._commit(
            claim_id, FINISHING, dest_path,
            "UPDATE files SET dest_path=?, updated_at=? WHERE claim_id=?",
            (dest_path, utcnow(), claim_id))

    async def mark_finished(self, claim_id: str, finished_at: str) -> None:
        await self._commit(
            claim_id, FINISHED, None,
            "UPDATE files SET state=?, finished_at=?, updated_at=? WHERE claim_id=?",
            (FINISHED, finished_at, utcnow(), claim_id))

    async def prune(self, before: str, batch: int) -> tuple[int, int]:
        """Delete up to *batch* files FINISHED before *before* (with their parts and
        notifications; none with a notification still pending), and up to *batch* of
        the oldest history lines from before then: one short transaction. How many
        files and lines went."""
        def prune() -> tuple[int, int]:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                ids = [r[0] for r in self.conn.execute(
                    # +state: by files_finished, the oldest first, not every FINISHED
                    # row through files_counts and a sort (1,000,000 of them a batch).
                    "SELECT claim_id FROM files WHERE finished_at < ? AND +state = ?"
                    " AND claim_id NOT IN (SELECT claim_id FROM notifications"
                    " WHERE state = 'PENDING') ORDER BY finished_at LIMIT ?",
                    (before, FINISHED, batch))]
                for table in ("parts", "notifications", "files"):
                    self.conn.executemany(f"DELETE FROM {table} WHERE claim_id = ?",
                                          [(i,) for i in ids])
                # History is appended in time order, the oldest lines first: only a
                # window of them is looked at (a clock set back leaves a few behind).
                lines = self.conn.execute(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq <"
                    " (SELECT min(seq) FROM events) + ? AND at < ? LIMIT ?)",
                    (20 * batch, before, batch)).rowcount
            return len(ids), lines
        return await self.run(prune)

    async def keep_pruned(self, days: int, stop: asyncio.Event, first: float = 60.0,
                          every: float = 3600.0, batch: int = 500) -> None:
        """Until *stop*: *first* seconds after start, then every *every*, delete what
        finished more than *days* ago, *batch* rows a transaction, pausing between
        them so the files' own writes go first. *days* 0: nothing is ever deleted."""
        if days <= 0:
            return
        delay = first
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            before = (datetime.now(UTC) - timedelta(days=days)).isoformat(
                timespec="milliseconds")
            files = lines = 0
            while not stop.is_set():
                started = time.monotonic()
                pruned, gone = await self.prune(before, batch)
                files, lines = files + pruned, lines + gone
                if pruned < batch and gone < batch:
                    break
                # A fifth of the ledger's thread at most: a backlog of old rows (the
                # first start with a retention) goes over minutes, the files' writes first.
                await asyncio.sleep(max(0.05, 4 * (time.monotonic() - started)))
            if files or lines:
                log.info("ledger.pruned", files=files, history_lines=lines,
                         finished_before=before, retention_days=days)
            delay = every

    async def unfinished(self) -> list[Row]:
        return await self.run(self._select, "SELECT * FROM files WHERE state IN (?, ?, ?, ?)"
                               " ORDER BY claim_id", UNFINISHED)

    # -- a file sent as several jobs (objects.<name>.max_rows_per_job) -----------------

    async def plan_parts(self, claim_id: str, spans: list[tuple[int, int]]) -> None:
        """Record how the file is cut (first data row, rows) before any part is sent."""
        def plan() -> None:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany(
                    "INSERT OR IGNORE INTO parts (claim_id, part, first_row, rows)"
                    " VALUES (?, ?, ?, ?)",
                    [(claim_id, i, first, rows) for i, (first, rows) in enumerate(spans, 1)])
        await self.run(plan)

    async def record_part_job(self, claim_id: str, part: int, job_id: str,
                              submitted_at: str, possible_duplicate: bool = False,
                              instance: str | None = None) -> None:
        await self.submit([
            ("UPDATE parts SET job_id=?, submitted_at=?, possible_duplicate=?"
             " WHERE claim_id=? AND part=?",
             (job_id, submitted_at, int(possible_duplicate), claim_id, part)),
            ("UPDATE files SET instance=?, updated_at=? WHERE claim_id=?",
             (instance, utcnow(), claim_id)),
            ("INSERT INTO events (claim_id, at, state, detail) VALUES (?, ?, ?, ?)",
             (claim_id, utcnow(), SUBMITTED, f"part {part}: {job_id}"))])

    async def finish_part(self, claim_id: str, part: int, result_json: str) -> None:
        await self._commit(
            claim_id, SUBMITTED, f"part {part} ended",
            "UPDATE parts SET result_json=? WHERE claim_id=? AND part=?",
            (result_json, claim_id, part))

    async def parts(self, claim_id: str) -> list[Part]:
        rows = await self.run(self.query, "SELECT * FROM parts WHERE claim_id=? ORDER BY part",
                               (claim_id,))
        return [Part(r["part"], r["first_row"], r["rows"], r["job_id"], r["submitted_at"],
                     r["result_json"], bool(r["possible_duplicate"])) for r in rows]

    def _select(self, sql: str, params: tuple[Any, ...]) -> list[Row]:
        names = Row.__dataclass_fields__.keys()
        return [Row(**{k: r[k] for k in names}) for r in self.query(sql, params)]


def read_summary(path: Path, latest: int = 10) -> dict[str, Any]:
    """Counts by state and the latest files, read-only (safe while the daemon runs).
    Read from indexes alone: a ledger of 1,000,000 files answers in ~0.15 s."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        names = {r["name"] for r in conn.execute("PRAGMA table_info(files)")}
        instance = "instance" if "instance" in names else "NULL"
        failed = "records_failed" if "records_failed" in names else "NULL"
        counts: dict[str, int] = {}
        by_instance: dict[str, dict[str, int]] = {}
        partial = 0  # completed with some records failed (in COMPLETE too)
        # Grouped by the columns of the index files_counts, in its order: a scan of it.
        for state, inst, outcome, n, some_failed in conn.execute(
                f"SELECT state, {instance}, outcome, count(*),"
                f" count(CASE WHEN {failed} > 0 THEN 1 END) FROM files"
                f" GROUP BY state, {instance}, outcome"):
            key = outcome if state == FINISHED and outcome else state
            counts[key] = counts.get(key, 0) + n
            mine = by_instance.setdefault(_instance_label(inst), {})
            mine[key] = mine.get(key, 0) + n
            if outcome == "COMPLETE":  # also while it is being filed
                partial += some_failed
        # The latest: files under way (few), and the last to finish (files_finished),
        # newest change first. (A file finished without a time is not among them.)
        columns = (f"rel_path, {instance} AS instance, state, outcome, job_id, api_status,"
                   " reason, received_at, updated_at")
        marks = ", ".join("?" * len(UNFINISHED))
        rows = conn.execute(
            f"SELECT {columns} FROM files WHERE state IN ({marks})"
            f" UNION ALL SELECT * FROM (SELECT {columns} FROM files WHERE finished_at"
            " IS NOT NULL ORDER BY finished_at DESC LIMIT ?)", (*UNFINISHED, latest)).fetchall()
        rows.sort(key=lambda r: r["updated_at"], reverse=True)
        pending = 0
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'notifications'").fetchone():
            pending = conn.execute("SELECT count(*) FROM notifications"
                                   " WHERE state = 'PENDING'").fetchone()[0]
    finally:
        conn.close()
    latest_rows = [{**r, "instance": _instance_label(r["instance"])} for r in rows[:latest]]
    return {"counts": counts, "instances": dict(sorted(by_instance.items())),
            "latest": latest_rows, "partial": partial, "notifications_pending": pending}


def _instance_label(instance: str | None) -> str:
    """NULL: a single-instance ledger's row ([api]'s); "": a file that went to none."""
    return "default" if instance is None else instance or "(none)"


# -- what the web view reads: its own read-only connection, its own thread ---------------

VIEW_QUEUE = 32  # queries waiting for the view's thread, at most; more are refused


class ViewBusy(Exception):
    """Too many of the web view's queries wait already: answer 503, try again later."""


FINISHED_COLUMNS = ("claim_id, rel_path, instance, object, outcome, api_status, job_id,"
                    " reason, received_at, finished_at, records_total, records_failed")


class LedgerView:
    """Read-only queries for the web view, on a connection and a thread of their own (WAL:
    they never wait for the ledger's writes, nor hold them up). Every query is bounded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-view")
        self._conn: sqlite3.Connection | None = None
        self._queued = 0
        # Told of every error a query meets (the ledger's: damage seen here counts too).
        self.on_error: Callable[[sqlite3.Error], None] = lambda exc: None

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._close)
        self._pool.shutdown(wait=False)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        if self._queued >= VIEW_QUEUE:
            raise ViewBusy(f"{self._queued} ledger queries wait already")
        self._queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._query,
                                                                    sql, params)
        finally:
            self._queued -= 1

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        if self._conn is None:
            self._conn = sqlite3.connect(Path(self.path).absolute().as_uri() + "?mode=ro",
                                         uri=True, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in self._conn.execute(sql, params)]
        except sqlite3.Error as exc:
            self.on_error(exc)
            raise

    async def counts_since(self, since: str) -> list[dict[str, Any]]:
        """Files finished since *since* by outcome, partial (some records failed) apart."""
        return await self._run(
            "SELECT outcome, coalesce(records_failed, 0) > 0 AS some_failed, count(*) AS n"
            " FROM files WHERE finished_at >= ? GROUP BY outcome, some_failed", (since,))

    async def minutes_since(self, since: str) -> list[dict[str, Any]]:
        """Files finished and records failed per minute (``YYYY-MM-DDTHH:MM``)."""
        return await self._run(
            "SELECT substr(finished_at, 1, 16) AS minute, count(*) AS files,"
            " coalesce(sum(records_failed), 0) AS records_failed FROM files"
            " WHERE finished_at >= ? GROUP BY minute", (since,))

    async def finished(self, limit: int, before: tuple[str, str] | None = None,
                       outcome: str | None = None, obj: str | None = None,
                       instance: str | None = None) -> list[dict[str, Any]]:
        """Finished files, newest first, *limit* at most, older than *before*
        (finished_at, claim_id) when given."""
        where, params = ["finished_at IS NOT NULL"], []
        if before is not None:
            where.append("(finished_at, claim_id) < (?, ?)")
            params += list(before)
        if outcome == "partial":  # completed with some records failed
            where.append("outcome = 'COMPLETE' AND records_failed > 0")
        elif outcome is not None:
            where.append("outcome = ?")
            params.append(outcome)
        if obj is not None:
            where.append("object = ?")
            params.append(obj)
        if instance is not None:
            where.append("coalesce(instance, 'default') = ?")
            params.append(instance)
        return await self._run(
            f"SELECT {FINISHED_COLUMNS} FROM files WHERE {' AND '.join(where)}"
            " ORDER BY finished_at DESC, claim_id DESC LIMIT ?", (*params, limit))

    async def file(self, claim_id: str) -> dict[str, Any] | None:
        """One file's row, its result without the error records (see :meth:`errors`)."""
        rows = await self._run(
            f"SELECT {FINISHED_COLUMNS}, state, submitted_at, dest_path, hub,"
            " json_remove(result_json, '$.errors_all') AS result_json"
            " FROM files WHERE claim_id = ?", (claim_id,))
        return rows[0] if rows else None

    async def errors(self, claim_id: str, limit: int) -> list[Any]:
        """The first *limit* error records of a file's result."""
        rows = await self._run(
            "SELECT json_each.type AS type, json_each.value AS value FROM files,"
            " json_each(files.result_json, '$.errors_all') WHERE files.claim_id = ?"
            " AND json_valid(files.result_json) LIMIT ?", (claim_id, limit))
        return [json.loads(r["value"]) if r["type"] in ("object", "array") else r["value"]
                for r in rows]

    async def parts(self, claim_id: str) -> list[dict[str, Any]]:
        return await self._run(
            "SELECT part, first_row, rows, job_id, submitted_at FROM parts"
            " WHERE claim_id = ? ORDER BY part LIMIT 10000", (claim_id,))
