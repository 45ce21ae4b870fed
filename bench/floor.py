"""The floor: what a lean Python uploader spends on a file while keeping the daemon's
durability design, for comparison with the ceiling client and the daemon.

The ceiling client (bench/ceiling.py) only makes the API calls. This one also does, for
each of N small CSV files on disk, what the daemon's durability design does and nothing
else: claim it (rename into processing/), read it (up to 64 KiB: the benchmark's files
are small), hash it and count its rows, record the claim, the job id and the result in
an SQLite ledger (WAL, ``synchronous=FULL``, group commits by one writer thread; the
job id and the result durable before the next step), write the result file and fsync
it, link the file and its result into done/ and remove the claimed names. The API calls
and their limits are the ceiling's. As lean as we could write it: one event loop, the
file steps and the results' writes on it, one thread trip per group of commits and one
per group of results to fsync; no watching (it lists its folder once), no settings,
logs, metrics, retries, checks beyond counting rows, history lines. A trip waits 20 ms
for more work to join it (``--window``): of the variants tried, the leanest.

    python -m bench.floor --base-url http://127.0.0.1:PORT/elements/api-v2 --dir DIR

DIR holds ``inbox/`` with the files; ``processing/``, ``done/`` and ``ledger.db`` are
made beside it. Prints one JSON line: files, seconds, files_per_s and the CPU seconds
of the process over the timed stretch (cpu_s). ``--inline``, ``--window``, ``--process``
and ``--without`` make variants that show what one choice or promise costs (not floors:
``python -m bench.floors`` runs them against the ceiling and the floor).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import io
import json
import os
import pickle
import socket
import sqlite3
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

from bench.ceiling import DONE
from bench.common import AUTH, run_client

# A trip to the writer thread waits this long for more work to join it: bigger groups,
# fewer hand-offs (the job id's commit still ends well before the first poll is due).
WINDOW = 0.02
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Batcher:
    """Work handed to one thread in groups: whatever queued while the last group ran goes
    in the next trip; each caller awaits its own item's group."""

    def __init__(self, run: Callable[[list[Any]], None], inline: bool = False,
                 window: float = 0.0, thread: ThreadPoolExecutor | None = None) -> None:
        self.run = run
        self.inline = inline  # on the event loop itself (it blocks while a group syncs)
        self.window = window  # a trip waits this long for more work to join it
        self.queued: list[Any] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.busy = False
        self.thread = thread or ThreadPoolExecutor(1)

    def add(self, item: Any) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self.queued.append(item)
        self.waiters.append(done)
        if not self.busy:
            self._soon(loop)
        return done

    def _soon(self, loop: asyncio.AbstractEventLoop) -> None:
        self.busy = True
        if self.window:
            loop.call_later(self.window, self._start, loop)
        elif self.inline:  # what queues during this turn of the loop joins the group
            loop.call_soon(self._start, loop)
        else:
            self._start(loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        items, waiters = self.queued, self.waiters
        self.queued, self.waiters = [], []
        if self.inline:
            self.run(items)
            self._ended(loop, waiters, None)
            return
        trip = loop.run_in_executor(self.thread, self.run, items)  # one wake-up when done
        trip.add_done_callback(lambda ran: self._ended(loop, waiters, ran.exception()))

    def _ended(self, loop: asyncio.AbstractEventLoop, waiters: list[asyncio.Future[None]],
               error: BaseException | None) -> None:
        for done in waiters:
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)
        self.busy = False
        if self.queued:
            self._soon(loop)


class WorkerBatcher(Batcher):
    """The same, with the trips made by a process of its own, which shares no GIL with
    the event loop: a group goes over a socket pair, pickled, and is answered with one
    byte once done. *make* builds the trip's function in that process."""

    def __init__(self, make: Callable[[], Callable[[list[Any]], None]],
                 window: float = 0.0) -> None:
        super().__init__(lambda items: None, False, window)
        self.sock, child = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:  # the worker: nothing of the parent's loop is touched here
            self.sock.close()
            _serve(child, make)
        child.close()
        self.stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.trips: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak refs

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        items, waiters = self.queued, self.waiters
        self.queued, self.waiters = [], []
        trip = loop.create_task(self._trip(loop, items, waiters))
        self.trips.add(trip)
        trip.add_done_callback(self.trips.discard)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.stream is None:
            self.stream = await asyncio.open_connection(sock=self.sock)
        return self.stream

    async def _trip(self, loop: asyncio.AbstractEventLoop, items: list[Any],
                    waiters: list[asyncio.Future[None]]) -> None:
        reader, writer = await self._connect()
        data = pickle.dumps(items)
        writer.write(len(data).to_bytes(8, "big") + data)
        try:
            await reader.readexactly(1)
        except (OSError, asyncio.IncompleteReadError) as exc:  # the worker failed
            self._ended(loop, waiters, exc)
        else:
            self._ended(loop, waiters, None)

    async def close(self) -> float:
        """Stop the worker; the CPU seconds it used."""
        reader, writer = await self._connect()
        writer.write((0).to_bytes(8, "big"))
        used = struct.unpack("d", await reader.readexactly(8))[0]
        writer.close()
        await asyncio.to_thread(os.waitpid, self.pid, 0)
        return float(used)


def _serve(sock: socket.socket, make: Callable[[], Callable[[list[Any]], None]]) -> None:
    try:
        run = make()
        with sock.makefile("rb") as incoming:
            while size := int.from_bytes(incoming.read(8), "big"):
                run(pickle.loads(incoming.read(size)))
                sock.sendall(b"k")
        sock.sendall(struct.pack("d", time.process_time()))
    finally:
        os._exit(0)


def open_ledger(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS files (claim_id TEXT PRIMARY KEY, rel TEXT, "
                 "state TEXT, sha256 TEXT, rows INTEGER, job_id TEXT, result_json TEXT, "
                 "updated_at TEXT)")
    conn.execute("CREATE INDEX IF NOT EXISTS files_state ON files(state)")
    return conn


def commit_all(conn: sqlite3.Connection, writes: list[tuple[str, tuple[Any, ...]]]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    for sql, args in writes:
        conn.execute(sql, args)
    conn.execute("COMMIT")


def write_results(results: list[tuple[Path, bytes]], sync: bool = True) -> None:
    """Write and fsync results, in another process (--process)."""
    for tmp, body in results:
        sync_results([write_result(tmp, body)], sync)


def write_result(tmp: Path, body: bytes) -> int:
    """A result written (on the loop: a small write to the page cache); fsync to come."""
    fd = os.open(tmp, _NEW, 0o666)
    try:
        os.write(fd, body)
    except BaseException:
        os.close(fd)
        raise
    return fd


def sync_results(fds: list[int], sync: bool = True) -> None:
    """Make written results durable, in a thread: what may wait for the disk."""
    for fd in fds:
        try:
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)


def batchers(args: argparse.Namespace, conn: sqlite3.Connection) -> tuple[Batcher, Batcher]:
    """The ledger's group commits and the results' writes, as the options say."""
    def committer() -> Callable[[list[Any]], None]:
        own = conn if not args.process else open_ledger(args.dir / "ledger.db")
        if args.without == "ledger-sync":
            own.execute("PRAGMA synchronous=OFF")
        return lambda writes: None if args.without == "ledger" else commit_all(own, writes)

    def writer() -> Callable[[list[Any]], None]:
        if args.process:  # a descriptor does not go through a pipe: path and bytes do
            return lambda items: write_results(items, args.without != "result-fsync")
        return lambda fds: sync_results(fds, args.without != "result-fsync")

    if args.process:
        return WorkerBatcher(committer, args.window), WorkerBatcher(writer, args.window)
    shared = ThreadPoolExecutor(1) if args.one_thread else None
    return (Batcher(committer(), args.inline, args.window, shared),
            Batcher(writer(), args.inline, args.window, shared))


async def run(args: argparse.Namespace) -> dict[str, float]:
    root: Path = args.dir
    inbox, processing, done = root / "inbox", root / "processing", root / "done"
    processing.mkdir(exist_ok=True)
    done.mkdir(exist_ok=True)
    conn = open_ledger(root / "ledger.db")
    ledger, results = batchers(args, conn)
    uploads = asyncio.Semaphore(args.uploads)
    active = asyncio.Semaphore(args.max_active)
    headers = {"Authorization": AUTH, "Accept": "application/json"}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ")
    url = f"{args.base_url}/hubs/marketing/bulk"
    ending: list[asyncio.Future[None]] = []

    async with aiohttp.ClientSession(headers=headers) as session:
        async def one(n: int, name: str) -> None:
            held = True
            try:
                claim_id = f"{n:020}"
                claimed = processing / f"{claim_id}-{name}"
                os.rename(inbox / name, claimed)
                fd = os.open(claimed, _READ)
                try:
                    body = os.read(fd, 1 << 16)
                finally:
                    os.close(fd)
                sha = hashlib.sha256(body).hexdigest()
                rows = sum(1 for _ in csv.reader(io.StringIO(body.decode()))) - 1
                ledger.add(("INSERT INTO files VALUES (?, ?, 'CLAIMED', ?, ?, NULL, NULL, ?)",
                            (claim_id, name, sha, rows, stamp)))
                async with uploads:
                    form = aiohttp.FormData()
                    form.add_field("file", body, filename=name, content_type="text/csv")
                    async with session.post(f"{url}/contact", params={"path": f"/{name}"},
                                            data=form) as resp:
                        resp.raise_for_status()
                        job_id = str((await resp.json())["id"])
                # Durable before the first poll (due `poll` seconds later: they overlap).
                recorded = ledger.add(("UPDATE files SET state='SUBMITTED', job_id=?, "
                                       "updated_at=? WHERE claim_id=?",
                                       (job_id, stamp, claim_id)))
                delay = args.poll
                while True:
                    await asyncio.sleep(delay)
                    await recorded
                    delay = min(delay * 1.5, args.poll_max)
                    async with session.get(f"{url}/{job_id}/status") as resp:
                        status = await resp.json()
                    if status.get("status") in DONE:
                        break
                active.release()  # the job has ended: another may start while this is filed
                held = False
                result = json.dumps({"file": name, "sha256": sha, "rows": rows,
                                     "job_id": job_id, "status": status}, indent=2)
                await ledger.add(("UPDATE files SET state='FINISHING', result_json=?, "
                                  "updated_at=? WHERE claim_id=?", (result, stamp, claim_id)))
                tmp = processing / f".{claim_id}.result.json.tmp"
                await results.add((tmp, result.encode()) if args.process
                                  else write_result(tmp, result.encode()))
                os.link(claimed, done / name)
                os.link(tmp, done / f"{name}.result.json")
                os.unlink(claimed)
                os.unlink(tmp)
                ending.append(ledger.add(("UPDATE files SET state='FINISHED', updated_at=? "
                                          "WHERE claim_id=?", (stamp, claim_id))))
            finally:
                if held:
                    active.release()

        names = sorted(os.listdir(inbox))
        started, cpu0 = time.monotonic(), time.process_time()
        tasks = []
        for n, name in enumerate(names):
            await active.acquire()
            tasks.append(asyncio.create_task(one(n, name)))
        await asyncio.gather(*tasks)
        await asyncio.gather(*ending)  # nothing waits for these, but they count
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu0
    for batcher in (ledger, results):
        if isinstance(batcher, WorkerBatcher):
            cpu += await batcher.close()  # all of it, its start included
    conn.close()
    return {"files": len(names), "seconds": seconds, "files_per_s": len(names) / seconds,
            "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--uploads", type=int, default=4)
    parser.add_argument("--max-active", type=int, default=32)
    parser.add_argument("--poll", type=float, default=0.05)
    parser.add_argument("--poll-max", type=float, default=0.2)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as the daemon")
    parser.add_argument("--inline", action="store_true",
                        help="commit and fsync on the event loop, blocking it (not a floor: "
                             "what the threads cost)")
    parser.add_argument("--process", action="store_true",
                        help="commits and fsyncs in two processes of their own, not threads "
                             "(their CPU counted)")
    parser.add_argument("--one-thread", action="store_true",
                        help="one thread for the commits and the fsyncs, not one each")
    parser.add_argument("--window", type=float, default=WINDOW,
                        help="seconds a trip waits for more work to join it (0: none)")
    parser.add_argument("--without", choices=("ledger", "ledger-sync", "result-fsync"),
                        help="leave one promise out, to see what it costs (not a floor)")
    args = parser.parse_args()
    print(json.dumps(run_client(run(args), args.uvloop)), flush=True)


if __name__ == "__main__":
    main()
