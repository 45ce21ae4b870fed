"""The ledger's database: one SQLite file in WAL mode, owned by one thread.

Every call runs on that thread, so the event loop never waits on disk and SQLite never
sees two threads. ``synchronous=FULL`` makes each commit durable before the call
returns. Writes that arrive while a commit is under way are committed together in the
next transaction (group commit): one fsync for many files, each caller still waiting for
its own write to be on disk.

A write that fails for a reason that passes (a full disk, an I/O error, a lock) is tried
again with backoff until it succeeds. At open, the whole database is checked and read
end to end; one that cannot be is set aside and a new one started. That check is skipped
when the database is as a clean close left it (``<name>.closed`` records the file's
identity, size, mtime and ctime then, and is removed at open; a close after an error
other than a passing one records nothing), and was read through less than a week ago:
a year of files takes ~20 s to read through (bench/README.md), which a restart need not
wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from daemon.folders import keep_private
from daemon.logs import get_logger

T = TypeVar("T")
log = get_logger()

# SQLite's primary result codes for trouble that passes: busy, locked, out of memory,
# read-only (a remount), I/O error, full, cannot open, protocol (a WAL lock race).
TRANSIENT_CODES = frozenset({5, 6, 7, 8, 10, 13, 14, 15})
RETRY_CAP = 30.0
# Passing, but the file may not be what was opened (moved: READONLY_DBMOVED) or the
# file system found damage (IOERR_CORRUPTFS): no record of a clean close after them.
SUSPECT_CODES = frozenset({1032, 8458})
MARKER_BYTES = 256  # the clean-close record: {"db": [five integers], "checked_at": t}
# However many clean stops in a row: a start reads the ledger through at least this
# often (damage in pages nothing reads would otherwise go unseen for good).
FULL_CHECK_SECONDS = 7 * 86400

Statement = tuple[str, tuple[Any, ...]]
_Pending = tuple[Sequence[Statement], "asyncio.Future[None]"]


class StoreError(Exception):
    """The database cannot be used; the message names the path and the cause."""


class Database:
    """Subclasses say what the database holds (:meth:`prepare`) and what they write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._flushing = False
        self.created = False          # no database was there: a first start, or it was lost
        self.existed = False          # ... and a file was there (empty, or not a database)
        self.set_aside: Path | None = None  # where an unreadable one was moved
        self.checked = False          # read through at open (not closed cleanly before)
        self._suspect = False         # an error other than a passing one: check next time
        self._opened_as: list[int] = []  # device and inode of the file opened
        self._checked_at = 0.0           # when it was last read through (Unix time)
        self._closed_marker = path.with_name(f"{path.name}.closed")
        # Told what is wrong while writes fail and are retried (None once they work).
        self.on_trouble: Callable[[str | None], None] = lambda problem: None
        # Told when the database turns out damaged while running: nothing can go on.
        self.on_broken: Callable[[str], None] = lambda problem: None
        self._closing = False

    def prepare(self, conn: sqlite3.Connection) -> bool:
        """Make the tables (once checked and read through); True when they were new."""
        raise NotImplementedError

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, for code running on the database's thread."""
        assert self._conn is not None, f"{self.path} is not open"
        return self._conn

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._open)

    async def close(self) -> None:
        self._closing = True  # a write being retried gives up: the daemon is leaving
        if self._conn is not None:
            await self.run(self._close_cleanly, self._conn)
            self._conn = None
        self._pool.shutdown(wait=True)

    def _close_cleanly(self, conn: sqlite3.Connection) -> None:
        """Close; when that checkpointed the WAL away (no other connection open) and
        nothing went wrong with the database while it was open, record the file as it
        is, so the next open need not read it through."""
        conn.close()
        tmp = self._closed_marker.with_name(f".{self._closed_marker.name}.tmp")
        try:
            identity = _identity(self.path)
            if self._suspect or _has_wal(self.path) or identity[:2] != self._opened_as:
                return
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            # Never through a link, never into a FIFO: a file of our own, made here.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as fh:  # closes fd, also when it fails
                json.dump({"db": identity, "checked_at": self._checked_at}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._closed_marker)  # lost in a crash: the next open checks
        except OSError as exc:  # the next open checks it all: slower, no less safe
            log.warning("ledger.close_unrecorded", path=str(self.path), error=str(exc))

    def _closed_cleanly(self) -> bool:
        """Whether the database is as the last clean close left it, and was read through
        less than :data:`FULL_CHECK_SECONDS` ago; the record is gone after this (whatever
        happens next changes the file, or makes a WAL). Anything odd about the record
        (not a regular file of ours, too long, not what we write) means: check."""
        try:
            fd = os.open(self._closed_marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError:
            fd = -1
        recorded: Any = None
        try:
            if fd >= 0:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                    recorded = json.loads(os.read(fd, MARKER_BYTES))
        except Exception:  # noqa: BLE001 - whatever it holds, the answer is: check
            recorded = None
        finally:
            if fd >= 0:
                os.close(fd)
        try:
            self._closed_marker.unlink()  # kept, it could be trusted again: check
        except FileNotFoundError:
            pass
        except OSError:
            return False
        try:
            same = (isinstance(recorded, dict) and recorded.get("db") == _identity(self.path)
                    and not _has_wal(self.path))
        except OSError:
            return False
        checked_at = recorded.get("checked_at") if same else None
        if not isinstance(checked_at, (int, float)) or not (
                0 <= time.time() - checked_at < FULL_CHECK_SECONDS):
            return False  # not the same file, or read through too long ago (or ahead)
        self._checked_at = checked_at
        return True

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run *fn* on the database's thread, tried again while trouble passes."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._durably, loop, fn, *args)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Rows of *sql*; on the database's thread (through :meth:`run`)."""
        return self.conn.execute(sql, params).fetchall()

    def submit(self, statements: Sequence[Statement]) -> asyncio.Future[None]:
        """Queue *statements*, to be committed in one transaction; the future is done
        once they are durable. Queued at once, in call order, so a later write never
        overtakes an earlier one; every write must be repeatable (it may be retried)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._pending.append((statements, done))
            start = not self._flushing
            self._flushing = True
        if start:
            loop.run_in_executor(self._pool, self._flush, loop)
        return done

    def _durably(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., T], *args: Any) -> T:
        """Run *fn*; while SQLite fails for a reason that passes, wait and run it again,
        holding the thread (so every later write waits behind it, in order). A damaged
        database is reported."""
        for n in itertools.count(1):
            try:
                result = fn(*args)
            except sqlite3.Error as exc:
                self.note_error(exc, loop)
                if not _is_transient(exc) or self._closing:
                    raise
                delay = min(RETRY_CAP, 0.1 * 2 ** n)
                log.warning("ledger.write_retry", error=str(exc), attempt=n,
                            retry_in=round(delay, 2), path=str(self.path))
                loop.call_soon_threadsafe(self.on_trouble, str(exc))
                time.sleep(delay)  # on the database's own thread, never the event loop
                continue
            if n > 1:
                log.info("ledger.write_recovered", attempts=n)
                loop.call_soon_threadsafe(self.on_trouble, None)
            return result
        raise AssertionError("unreachable")

    def note_error(self, exc: sqlite3.Error, loop: asyncio.AbstractEventLoop | None) -> None:
        """An error from the database (here, or on a reader's connection of its own):
        one that may mean damage leaves no record of a clean close, so the next open
        checks it all; a damaged database is reported (with *loop*: from a thread)."""
        if not _is_transient(exc) or _code(exc) in SUSPECT_CODES:
            self._suspect = True
        if loop is not None and isinstance(exc, sqlite3.DatabaseError) and _is_corrupt(exc):
            loop.call_soon_threadsafe(self.on_broken,
                                      f"the ledger {self.path} is damaged: {exc}")

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
                outcomes = [self._write_one(item, loop) for item in batch]  # the bad one
            # One wake-up of the event loop for the whole batch.
            loop.call_soon_threadsafe(_settle, [(done, error) for (_, done), error
                                                in zip(batch, outcomes, strict=True)])

    def _write_all(self, batch: list[_Pending]) -> None:
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            for statements, _ in batch:
                for sql, params in statements:
                    self.conn.execute(sql, params)

    def _write_one(self, item: _Pending,
                   loop: asyncio.AbstractEventLoop) -> BaseException | None:
        try:
            self._write_all([item])
        except sqlite3.Error as exc:
            self.note_error(exc, loop)
            return exc
        return None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Under the spool by default, droppers' ground: our own folder at least is ours.
        # (The ledger never points the daemon outside processing/, whoever wrote it.)
        keep_private(self.path.parent)
        self.existed = self.path.exists()
        self.checked = not self._closed_cleanly()
        if self.checked:
            self._checked_at = time.time()
        started = time.monotonic()
        try:
            self._conn = self._connect(self.checked)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                # Permissions, a full disk, I/O errors: not the ledger's fault, and
                # starting afresh would upload recorded jobs again. Stop instead.
                raise StoreError(f"cannot open the ledger {self.path}: {exc}") from exc
            # Corrupt: keep it for a person to look at, start a new one. The files in
            # processing/ are claimed afresh by the caller, so none is lost.
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            self.set_aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    src.rename(f"{self.set_aside}{suffix}")
            self.existed = False
            self.checked = True
            self._conn = self._connect(True)
        with contextlib.suppress(OSError):
            self._opened_as = _identity(self.path)[:2]  # a file put in its place is not it
        log.info("ledger.opened", path=str(self.path), checked=self.checked,
                 seconds=round(time.monotonic() - started, 3))

    def _connect(self, check: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            if check:
                _read_through(conn)
            self.created = self.prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn


class _Corrupt(sqlite3.DatabaseError):
    pass


def _code(exc: sqlite3.Error) -> int | None:
    """SQLite's extended result code (its low byte is the primary one)."""
    return getattr(exc, "sqlite_errorcode", None)


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = _code(exc)
    return isinstance(exc, _Corrupt) or code is not None and code & 0xFF in (
        sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _is_transient(exc: sqlite3.Error) -> bool:
    code = _code(exc)
    return code is not None and code & 0xFF in TRANSIENT_CODES


def _settle(settled: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for done, error in settled:
        if done.done():  # the caller was cancelled; the write stands regardless
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


def _identity(path: Path) -> list[int]:
    """What changes whenever the file does: ctime cannot be set back without root."""
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _has_wal(path: Path) -> bool:
    """A WAL with frames in it (an empty one, left by a read-only reader such as
    `bulkdrop status`, holds nothing the database file lacks)."""
    try:
        st = os.lstat(f"{path}-wal")
    except FileNotFoundError:
        return False
    return not stat.S_ISREG(st.st_mode) or st.st_size > 0


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
