"""The job ledger: one SQLite database per node, in WAL mode, all SQL in this file.

Every call runs on one dedicated thread that owns the connection, so the event loop
never waits on disk and SQLite never sees two threads. ``synchronous=FULL`` makes each
commit durable before the call returns: once ``record_job`` returns, a crash or power
loss cannot forget the job id.

A write that fails for a reason that passes (a full disk, an I/O error, a lock) is tried
again with backoff until it succeeds: a job id is never dropped for want of space, so
its file is never uploaded again. At open, the whole ledger is checked and read end to
end; one that cannot be is set aside and a new one started (the files in processing/
are then claimed afresh).
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from daemon.logs import get_logger
from daemon.spool import keep_private

T = TypeVar("T")
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
    possible_duplicate INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS files_state ON files(state);
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
)
# SQLite's primary result codes for trouble that passes: busy, locked, out of memory,
# read-only (a remount), I/O error, full, cannot open, protocol (a WAL lock race).
TRANSIENT_CODES = frozenset({5, 6, 7, 8, 10, 13, 14, 15})
RETRY_CAP = 30.0


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


class LedgerError(Exception):
    """The ledger cannot be used; the message names the path and the cause."""


class _Corrupt(sqlite3.DatabaseError):
    pass


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, _Corrupt) or code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _is_transient(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in TRANSIENT_CODES


_PendingWrite = tuple[str, str, str | None, str, tuple[Any, ...], "asyncio.Future[None]"]


def _settle(settled: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for done, error in settled:
        if done.done():  # the caller was cancelled; the write stands regardless
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


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


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._pending: list[_PendingWrite] = []
        self._flushing = False
        self.created = False          # no ledger was there: a first start, or it was lost
        self.existed = False          # ... and a file was there (empty, or not a ledger)
        self.set_aside: Path | None = None  # where an unreadable ledger was moved
        # Told what is wrong while writes fail and are retried (None once they work).
        self.on_trouble: Callable[[str | None], None] = lambda problem: None
        # Told when the ledger turns out damaged while running: nothing can go on.
        self.on_broken: Callable[[str], None] = lambda problem: None
        self._closing = False

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._durably, loop, fn, *args)

    def _durably(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., T], *args: Any) -> T:
        """Run *fn* on the ledger's thread; while SQLite fails for a reason that passes (a
        full disk, an I/O error, a lock), wait and run it again, holding the thread (so
        every later write waits behind it, in order). A damaged ledger is reported."""
        for n in itertools.count(1):
            try:
                result = fn(*args)
            except sqlite3.Error as exc:
                if isinstance(exc, sqlite3.DatabaseError) and _is_corrupt(exc):
                    loop.call_soon_threadsafe(self.on_broken,
                                              f"the ledger {self.path} is damaged: {exc}")
                if not _is_transient(exc) or self._closing:
                    raise
                delay = min(RETRY_CAP, 0.1 * 2 ** n)
                log.warning("ledger.write_retry", error=str(exc), attempt=n,
                            retry_in=round(delay, 2), path=str(self.path))
                loop.call_soon_threadsafe(self.on_trouble, str(exc))
                time.sleep(delay)  # on the ledger's own thread, never the event loop
                continue
            if n > 1:
                log.info("ledger.write_recovered", attempts=n)
                loop.call_soon_threadsafe(self.on_trouble, None)
            return result
        raise AssertionError("unreachable")

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Under the spool by default, droppers' ground: our own folder at least is ours.
        # (The ledger never points the daemon outside processing/, whoever wrote it.)
        keep_private(self.path.parent)
        self.existed = self.path.exists()
        try:
            self._conn = self._connect()
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                # Permissions, a full disk, I/O errors: not the ledger's fault, and
                # starting afresh would upload recorded jobs again. Stop instead.
                raise LedgerError(f"cannot open the ledger {self.path}: {exc}") from exc
            # Corrupt: keep it for a person to look at, start a new one. The files in
            # processing/ are claimed afresh by the caller, so none is lost.
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            self.set_aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    src.rename(f"{self.set_aside}{suffix}")
            self.existed = False
            self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self.created = not conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='files'").fetchone()
            _read_through(conn)
            conn.executescript(SCHEMA)
            for table, column, declaration in ADDED_COLUMNS:
                names = {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}
                if column not in names:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        self._closing = True  # a write being retried gives up: the daemon is leaving
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._pool.shutdown(wait=True)

    def _submit(self, claim_id: str, state: str, detail: str | None, sql: str,
                params: tuple[Any, ...]) -> asyncio.Future[None]:
        """Queue a row change and its history line; the future is done once it is durable.

        Queued at once, in call order, so a later change never overtakes an earlier one.
        Writes that arrive while a commit is under way are committed together in the next
        transaction (group commit): one fsync for many files, each caller still waiting
        for its own write to be on disk.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._pending.append((claim_id, state, detail, sql, params, done))
            start = not self._flushing
            self._flushing = True
        if start:
            loop.run_in_executor(self._pool, self._flush, loop)
        return done

    async def _commit(self, claim_id: str, state: str, detail: str | None, sql: str,
                      params: tuple[Any, ...]) -> None:
        """Change a row and add its history line; return once that is durable (tried
        again while the disk is full or failing: every write is repeatable)."""
        await self._submit(claim_id, state, detail, sql, params)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._flushing = False
                    return
            try:
                self._durably(loop, self._write_all, batch)
                outcomes: list[BaseException | None] = [None] * len(batch)
            except sqlite3.Error:
                outcomes = [self._write_one(item) for item in batch]  # find the bad one
            # One wake-up of the event loop for the whole batch.
            loop.call_soon_threadsafe(_settle, [(item[-1], error) for item, error
                                                in zip(batch, outcomes, strict=True)])

    def _write_all(self, batch: list[_PendingWrite]) -> None:
        assert self._conn is not None, "ledger is not open"
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for claim_id, state, detail, sql, params, _ in batch:
                self._conn.execute(sql, params)
                self._conn.execute(
                    "INSERT INTO events (claim_id, at, state, detail) VALUES (?, ?, ?, ?)",
                    (claim_id, utcnow(), state, detail))

    def _write_one(self, item: _PendingWrite) -> BaseException | None:
        try:
            self._write_all([item])
        except sqlite3.Error as exc:
            return exc
        return None

    def add_claim(self, claim_id: str, rel_path: str, claimed_path: str,
                  received_at: str, problem: str | None = None) -> asyncio.Future[None]:
        """Record a new claim. Queued before this returns; await the result for durability."""
        return self._submit(
            claim_id, CLAIMED, rel_path,
            "INSERT OR IGNORE INTO files (claim_id, rel_path, claimed_path, state,"
            " received_at, updated_at, problem) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (claim_id, rel_path, claimed_path, CLAIMED, received_at, utcnow(), problem))

    async def record_job(self, claim_id: str, job_id: str, submitted_at: str, obj: str,
                         hub: str, attempts: int, possible_duplicate: bool = False) -> None:
        await self._commit(
            claim_id, SUBMITTED, job_id,
            "UPDATE files SET state=?, job_id=?, submitted_at=?, object=?, hub=?, attempts=?,"
            " possible_duplicate=?, updated_at=? WHERE claim_id=?",
            (SUBMITTED, job_id, submitted_at, obj, hub, attempts, int(possible_duplicate),
             utcnow(), claim_id))

    async def mark_finishing(self, claim_id: str, outcome: str, api_status: str | None,
                             reason: str, result_json: str, dest_path: str | None) -> None:
        await self._commit(
            claim_id, FINISHING, outcome,
            "UPDATE files SET state=?, outcome=?, api_status=?, reason=?, result_json=?,"
            " dest_path=?, updated_at=? WHERE claim_id=?",
            (FINISHING, outcome, api_status, reason, result_json, dest_path, utcnow(),
             claim_id))

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

    async def unfinished(self) -> list[Row]:
        return await self._run(self._select, "SELECT * FROM files WHERE state IN (?, ?, ?, ?)"
                               " ORDER BY claim_id", UNFINISHED)

    # -- a file sent as several jobs (objects.<name>.max_rows_per_job) -----------------

    async def plan_parts(self, claim_id: str, spans: list[tuple[int, int]]) -> None:
        """Record how the file is cut (first data row, rows) before any part is sent."""
        def plan() -> None:
            assert self._conn is not None, "ledger is not open"
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    "INSERT OR IGNORE INTO parts (claim_id, part, first_row, rows)"
                    " VALUES (?, ?, ?, ?)",
                    [(claim_id, i, first, rows) for i, (first, rows) in enumerate(spans, 1)])
        await self._run(plan)

    async def record_part_job(self, claim_id: str, part: int, job_id: str,
                              submitted_at: str, possible_duplicate: bool = False) -> None:
        await self._commit(
            claim_id, SUBMITTED, f"part {part}: {job_id}",
            "UPDATE parts SET job_id=?, submitted_at=?, possible_duplicate=?"
            " WHERE claim_id=? AND part=?",
            (job_id, submitted_at, int(possible_duplicate), claim_id, part))

    async def finish_part(self, claim_id: str, part: int, result_json: str) -> None:
        await self._commit(
            claim_id, SUBMITTED, f"part {part} ended",
            "UPDATE parts SET result_json=? WHERE claim_id=? AND part=?",
            (result_json, claim_id, part))

    async def parts(self, claim_id: str) -> list[Part]:
        rows = await self._run(self._query, "SELECT * FROM parts WHERE claim_id=? ORDER BY part",
                               (claim_id,))
        return [Part(r["part"], r["first_row"], r["rows"], r["job_id"], r["submitted_at"],
                     r["result_json"], bool(r["possible_duplicate"])) for r in rows]

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        assert self._conn is not None, "ledger is not open"
        return self._conn.execute(sql, params).fetchall()

    def _select(self, sql: str, params: tuple[Any, ...]) -> list[Row]:
        names = Row.__dataclass_fields__.keys()
        return [Row(**{k: r[k] for k in names}) for r in self._query(sql, params)]


def _read_through(conn: sqlite3.Connection) -> None:
    """Check the whole database and read every row of every table as the daemon would:
    ``quick_check`` misses damage inside records (text that is not UTF-8) and indexes."""
    if conn.execute("PRAGMA integrity_check(1)").fetchone()[0] != "ok":
        raise _Corrupt("integrity_check found damage")
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    try:
        for table in tables:
            cursor = conn.execute(f'SELECT * FROM "{table}"')
            while cursor.fetchmany(1000):
                pass
    except sqlite3.OperationalError as exc:  # "Could not decode to UTF-8 column ..."
        raise _Corrupt(str(exc)) from exc


def read_summary(path: Path, latest: int = 10) -> dict[str, Any]:
    """Counts by state and the latest files, read-only (safe while the daemon runs)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        counts = {r["k"]: r["n"] for r in conn.execute(
            "SELECT CASE WHEN state = 'FINISHED' THEN outcome ELSE state END AS k,"
            " count(*) AS n FROM files GROUP BY k")}
        rows = conn.execute(
            "SELECT rel_path, state, outcome, job_id, api_status, reason, received_at,"
            " updated_at FROM files ORDER BY updated_at DESC LIMIT ?", (latest,)).fetchall()
    finally:
        conn.close()
    return {"counts": counts, "latest": [dict(r) for r in rows]}
