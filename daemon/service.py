"""``Daemon``: wires spool, watcher, ledger, client and pipeline; owns every task.

Construction is apart from running: ``serve()`` is what tests drive, ``run()`` is the
synchronous entry for the command line (signals, exit code).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from daemon import csvfile
from daemon.client import OpenConnectorsClient
from daemon.fileref import hard_links_protected
from daemon.filing import stale_temporaries
from daemon.http_server import HttpServer, raise_descriptor_limit
from daemon.http_server import serve as serve_http
from daemon.ledger import Ledger, LedgerError, utcnow
from daemon.logs import describe_error, get_logger
from daemon.metrics import Metrics
from daemon.pipeline import QUICK_EXAMINE_BYTES, Pipeline, Slot, Work
from daemon.retry import RetryPolicy
from daemon.settings import Settings
from daemon.spool import FileChanged, Spool, SpoolError
from daemon.systemd import Notifier
from daemon.tracker import Tracker
from daemon.trouble import Troubles
from daemon.watcher import Watcher
from daemon.web import Host, Readiness, create_app

log = get_logger()


T = TypeVar("T")


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on uvloop where it is installed, else on asyncio's own loop.

    uvloop is the asyncio event loop written in C on libuv: the same API, less CPU per
    callback and per socket read. The daemon is one process on one loop, so that CPU is
    its throughput (bench/README.md: ~10% more files/s).
    """
    try:
        import uvloop
    except ImportError:  # not built for this platform: the standard loop does the same
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


class StartupError(Exception):
    """The daemon cannot start; the message names what to fix."""


def _shown(path: Path) -> str:
    """A path for a log line, bytes that are not UTF-8 shown as ``\\xff``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        s = settings
        csvfile.set_line_limit(s.spool.max_line_length)
        self.spool = Spool(s.spool.root, s.spool.node_id)
        self.ledger = Ledger(s.spool.state_dir / "bulkdrop.db")
        self.client = OpenConnectorsClient.from_settings(s.api)
        self.policy = RetryPolicy(s.api.retry_deadline_seconds)
        self.tracker = Tracker(self.client, self.policy,
                               poll_interval=s.workers.poll_interval_seconds,
                               poll_max_interval=s.workers.poll_max_interval_seconds,
                               job_timeout=s.workers.job_timeout_seconds)
        self.active_slots = asyncio.Semaphore(s.workers.max_active_jobs)
        self.upload_slots = asyncio.Semaphore(s.workers.uploads)
        # Claimed and not yet uploading: two per upload slot, one being checked while one
        # waits, so a claim's few ms of checks never leave a free job slot idle; never more
        # than the job slots, so a node does not hold files it cannot start soon.
        self.intake = asyncio.Semaphore(min(2 * s.workers.uploads, s.workers.max_active_jobs))
        self.notifier = Notifier()
        self.metrics = Metrics()
        self.troubles = Troubles()
        self.client.on_answer = self.metrics.api_answer
        self.policy.on_retry = self.metrics.retry
        self.ledger.on_trouble = self._ledger_trouble
        self.ledger.on_broken = self.fail
        self.pipeline = Pipeline(s, self.spool, self.ledger, self.client, self.policy,
                                 self.tracker, self.upload_slots, self.metrics, self.troubles)
        self.metrics.watch(lambda: len(self.pipeline.active_jobs), self.ledger.path,
                           self.troubles)
        self.candidates: asyncio.Queue[Path] = asyncio.Queue(maxsize=max(64, s.workers.uploads))
        self.watcher = Watcher(self.spool, self.candidates, settle_seconds=s.spool.settle_seconds,
                               rescan_seconds=s.spool.rescan_seconds,
                               force_polling=s.spool.force_polling, troubles=self.troubles)
        self.watcher.on_scan = self.metrics.inbox_scanned
        self.fatal: str | None = None  # why the daemon cannot go on, once it cannot
        self.stop_event = asyncio.Event()
        self.ready = asyncio.Event()   # set once watching
        self.files: set[asyncio.Task[None]] = set()
        self.core: list[asyncio.Task[None]] = []   # watcher and claimer: /healthz watches
        spool = self.spool
        self.readiness = Readiness(
            self.ready, (spool.inbox, spool.processing, spool.done, spool.failed),
            self.policy.gate, lambda: self.client.objects(s.api.hub), self.troubles)

    def request_stop(self) -> None:
        self.stop_event.set()

    def fail(self, reason: str) -> None:
        """Something the daemon cannot go on without broke (a damaged ledger): stop, and
        exit non-zero so that systemd or Docker restart it (recovery deals with it)."""
        if self.fatal is None:
            self.fatal = reason
        self.stop_event.set()

    def _ledger_trouble(self, problem: str | None) -> None:
        if problem is None:
            self.troubles.clear("ledger", "")
        else:
            self.troubles.set("ledger", "", problem)
            self.metrics.io_retries.labels("ledger").inc()

    def dead_tasks(self) -> list[str]:
        """The core tasks (watcher, claimer) that ended while the daemon was not stopping."""
        if self.stop_event.is_set():
            return []
        return [task.get_name() for task in self.core if task.done()]

    async def _serve_http(self) -> HttpServer | None:
        http = self.settings.http
        if not http.enabled:
            return None
        app, connections = create_app(Host(
            self.dead_tasks, self.readiness, self.tracker.wake, self.metrics.registry,
            self.settings.callback.signature_key))
        try:
            return await serve_http(app, connections, http.host, http.port,
                                    self.metrics.http_refused)
        except OSError as exc:
            raise StartupError(f"cannot listen on {http.listen} ([http] listen): "
                               f"{exc.strerror}") from exc

    async def serve(self) -> None:
        """Run until :meth:`request_stop`; then shut down in phases and return."""
        descriptors = raise_descriptor_limit()
        if not await asyncio.to_thread(hard_links_protected):
            self.spool.refuse_hard_links = True
            log.warning("spool.hard_links_unprotected",
                        note="fs.protected_hardlinks is off: anyone may link a file they "
                             "cannot read into inbox/, so files with other links are "
                             "rejected; set fs.protected_hardlinks = 1 to take them")
        locked = await asyncio.to_thread(self.spool.ensure_layout, self.settings.inbox_objects)
        for folder in locked:
            log.error("spool.unwritable_dir", path=str(folder),
                      note="files dropped here cannot be claimed: give the daemon's group "
                           "write access (droppers need umask 002)")
        try:
            await self.ledger.open()
        except (LedgerError, OSError) as exc:
            raise StartupError(str(exc)) from exc
        runner = None
        notifying: asyncio.Task[None] | None = None
        try:
            runner = await self._serve_http()
            self.notifier.extend_timeout(90)  # recovery may take a while with many rows
            await self._recover()
            watcher = asyncio.create_task(self.watcher.run(self.stop_event), name="watcher")
            claimer = asyncio.create_task(self._claim_loop(), name="claimer")
            self.core = [watcher, claimer]
            callback = self.settings.callback
            if callback.public_url and not callback.signature_key:
                log.warning("callback.unsigned", public_url=callback.public_url,
                            note="set [callback] signature_key: anyone who can reach "
                                 "/callbacks/bulk can make the daemon poll")
            log.info("daemon.started", spool=str(self.spool.root), node=self.settings.spool.node_id,
                     api=self.settings.api.base_url, uploads=self.settings.workers.uploads,
                     event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
                     open_files_limit=descriptors)
            self.ready.set()
            self.notifier.ready(self.status_line())
            notifying = asyncio.create_task(self.notifier.run(self.stop_event, self.status_line),
                                            name="notifier")
            stopper = asyncio.create_task(self.stop_event.wait())
            done, _ = await asyncio.wait({watcher, claimer, stopper},
                                         return_when=asyncio.FIRST_COMPLETED)
            self.stop_event.set()
            await self._shutdown(watcher, claimer)
            for finished in done - {stopper}:
                finished.result()  # a crashed watcher or claimer is an error worth raising
                raise RuntimeError(f"the {finished.get_name()} stopped by itself")
        finally:
            if notifying is not None:
                notifying.cancel()
                await asyncio.gather(notifying, return_exceptions=True)
            if runner is not None:
                await runner.cleanup()
            await self.client.close()
            await self.ledger.close()
            self.pipeline.close()
            self.notifier.close()

    def status_line(self) -> str:
        """One line for systemd's STATUS=: what is happening now and what has been done."""
        counts = self.pipeline.counts
        return (f"{len(self.pipeline.active_jobs)} jobs running, "
                f"{self.pipeline.uploads_now} uploading; "
                f"done {counts.get('COMPLETE', 0)}, failed {counts.get('FAILED', 0)}, "
                f"rejected {counts.get('REJECTED', 0)}")

    async def _recover(self) -> None:
        """Continue every unfinished row; claim afresh files of ours the ledger lacks."""
        rows = await self.ledger.unfinished()
        known = {self.spool.from_stored(r.claimed_path) for r in rows}
        strays = [p for p in await asyncio.to_thread(self.spool.list_processing)
                  if p not in known]
        keep = {r.claim_id for r in rows}
        for tmp in await asyncio.to_thread(stale_temporaries, self.spool, keep):
            await asyncio.to_thread(tmp.unlink, True)
        for row in rows:
            self._spawn(partial(self.pipeline.resume, row), row.rel_path)
        for path in strays:
            claimed = await asyncio.to_thread(self.spool.claimed_from_path, path)
            if claimed is None:
                log.warning("recovery.unknown_file", path=str(path))
                continue
            await self.ledger.add_claim(claimed.claim_id, str(claimed.rel),
                                        self.spool.to_stored(path), utcnow(), claimed.problem)
            self._spawn(partial(self.pipeline.process, Work(claimed, utcnow())),
                        str(claimed.rel))
        self._report_ledger(len(strays))
        if rows or strays:
            log.info("recovery.started", resumed=len(rows), reclaimed=len(strays),
                     following=sum(1 for r in rows if r.job_id))
        others = await asyncio.to_thread(self.spool.other_nodes_with_files)
        if others:
            # Each node recovers only its own folder: a node renamed (a new container
            # hostname) leaves its files behind until it runs again under its old name.
            log.warning("spool.other_nodes_busy", nodes=others, node=self.settings.spool.node_id,
                        note="files there are finished only by a daemon with that node_id")

    def _report_ledger(self, reclaimed: int) -> None:
        """Say so when the ledger was damaged, empty or missing: then the files found in
        processing/ are claimed afresh, and those whose job had been created are sent
        again."""
        ledger = self.ledger
        note = "files in processing/ are uploaded again" if reclaimed else None
        if ledger.set_aside is not None:
            log.error("ledger.rebuilt", unreadable=str(ledger.set_aside), path=str(ledger.path),
                      reclaimed=reclaimed, note=note)
        elif ledger.created and ledger.existed:
            (log.error if reclaimed else log.warning)(
                "ledger.empty", path=str(ledger.path), reclaimed=reclaimed,
                note=note or "the ledger file held no ledger: a new one is started")
        elif ledger.created and reclaimed:
            log.error("ledger.missing", path=str(ledger.path), reclaimed=reclaimed, note=note)

    async def _claim_loop(self) -> None:
        """Claim a settled file when an intake slot is free: at most twice
        ``workers.uploads`` claimed files (and no more than ``workers.max_active_jobs``)
        wait for a job slot and an upload slot, so daemons sharing a spool split the work
        instead of one hoarding claims."""
        while True:
            await self._claim_one()

    async def _claim_one(self) -> None:
        await self.intake.acquire()
        try:
            path = await self.candidates.get()
        except BaseException:
            self.intake.release()
            raise
        self._spawn(partial(self._take, path), path.name, job_slot_when_needed=True)

    async def _take(self, path: Path, job_slot: Slot) -> None:
        """Claim a settled file and read it for its checks (one trip to a thread), then
        carry it on; it holds an intake slot until it may upload, and takes its job slot
        only once it passes its checks."""
        handed_on = False
        try:
            work = await self._claim(path)
            if work is None:
                return  # another node took it, it vanished, or it changed
            log.info("file.claimed", file=work.rel, claim_id=work.claimed.claim_id)
            handed_on = True
            # The file's own task records the claim, so claims never queue behind commits.
            await self.pipeline.process(work, job_slot, intake=self.intake, new_claim=True)
        finally:
            if not handed_on:
                self.intake.release()

    def _claim_and_examine(self, path: Path, expect: tuple[int, int] | None) -> Work | None:
        claimed = self.spool.claim(path, expect)
        if claimed is None:
            return None
        work = Work(claimed, utcnow())
        if expect is not None and expect[0] <= QUICK_EXAMINE_BYTES:
            self.pipeline.examine(work)  # a bigger file is read on the default executor
        return work

    async def _claim(self, path: Path) -> Work | None:
        expect = self.watcher.signature(path)
        try:
            work = await self.pipeline.quick(self._claim_and_examine, path, expect)
        except FileChanged:
            self.watcher.recheck(path)  # still being written: let it settle again
            return None
        except (OSError, SpoolError) as exc:
            # Left in inbox/: the next scan offers it again. Shown in /readyz until then.
            problem = getattr(exc, "strerror", None) or str(exc)
            if self.troubles.set("unclaimable", str(path), problem):
                log.error("file.claim_failed", file=_shown(path), error=problem,
                          note="left in inbox/ and tried again at each rescan; the daemon "
                               "needs write access to its folder (droppers: umask 002)")
            return None
        finally:
            self.watcher.release(path)
        if self.troubles.clear("unclaimable", str(path)):
            log.info("file.claimable_again", file=_shown(path))
        return work

    def _spawn(self, make: Callable[[Slot], Awaitable[None]], name: str,
               job_slot_when_needed: bool = False) -> None:
        """Run one file's work as a task we hold, inside a job slot: taken first, or by
        the pipeline just before it creates a job (a new claim: checks need no slot).

        The pipeline gives the slot back as soon as the file's job has ended (filing it
        needs no job), at the latest when the task ends.
        """
        async def in_slot() -> None:
            slot = Slot(self.active_slots, held=False)
            if not job_slot_when_needed:
                await slot.take()
            try:
                await make(slot)
            finally:
                slot.release()

        task = asyncio.create_task(in_slot(), name=name)
        self.files.add(task)
        task.add_done_callback(self._file_done)

    def _file_done(self, task: asyncio.Task[None]) -> None:
        # A bug, not the file's doing: it stays in processing/ and is resumed at the next
        # start. (Trouble that passes is retried inside; input never raises.)
        self.files.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("file.crashed", file=task.get_name(), error=repr(exc), exc_info=exc)

    async def _shutdown(self, *intake: asyncio.Task[None]) -> None:
        """Stop intake, let uploads in flight finish within the grace, cancel the rest,
        but never an upload whose body has gone out: the API may be making its job, and
        a cut one would be sent again at the next start. Those get their answer (each
        within ``request_timeout_seconds``), the stop timeout extended meanwhile."""
        started = time.monotonic()
        self.pipeline.stopping = True
        grace = self.settings.workers.shutdown_grace_seconds
        self.notifier.stopping(f"stopping: {self.status_line()}")
        self.notifier.extend_timeout(grace + 15)
        for task in intake:
            task.cancel()
        await asyncio.gather(*intake, return_exceptions=True)
        # Jobs being followed resume from the ledger next time: no need to wait for them.
        for tracking in self.pipeline.tracking:
            tracking.cancel()
        uploading = [t for t in self.files if not t.done()]
        if uploading:
            await asyncio.wait(uploading, timeout=grace)
        answering = [t for t in self.files if not t.done() and t in self.pipeline.answering]
        if answering:
            wait = self.settings.api.request_timeout_seconds + 5
            self.notifier.extend_timeout(wait + 15)
            log.info("daemon.awaiting_answers", uploads=len(answering), at_most_seconds=wait,
                     note="their bodies were sent: cutting them could create jobs twice")
            await asyncio.wait(answering, timeout=wait)
        left = [t for t in self.files if not t.done()]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        if self.pipeline.finishing:
            # Filing is quick; bound it anyway (a hung network mount must not hang us).
            # Whatever is cut short is redone from the ledger at the next start.
            await asyncio.wait(self.pipeline.finishing, timeout=max(1.0, grace / 4))
        counts = {k.lower(): v for k, v in self.pipeline.counts.items()}
        log.info("daemon.stopped", seconds=round(time.monotonic() - started, 2),
                 cut_short=len(left), **counts)

    def run(self) -> int:
        """Serve in the foreground until SIGTERM/SIGINT; a second SIGINT exits at once."""
        return run_event_loop(self.serve_until_signalled())

    async def serve_until_signalled(self) -> int:
        """Serve; 0 only when a signal asked us to stop. Anything else that ends the
        daemon is one ``daemon.crashed`` line and exit code 1, so that a supervisor
        (``Restart=on-failure``, Docker's restart policy) starts it again."""
        loop = asyncio.get_running_loop()
        hits = 0

        def on_signal(signum: int) -> None:
            nonlocal hits
            hits += 1
            if hits > 1 and signum == signal.SIGINT:
                # "Now" means now; the ledger is crash-safe, the next start resumes.
                log.warning("daemon.abort", signal=signal.Signals(signum).name)
                os._exit(130)
            log.info("daemon.stopping", signal=signal.Signals(signum).name)
            self.request_stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await self.serve()
        except (StartupError, SpoolError):
            raise  # the command line says why it could not start
        except Exception as exc:  # noqa: BLE001 - the one place every other failure ends
            log.error("daemon.crashed", error=describe_error(exc), exc_info=exc)
            return 1
        if self.fatal is not None or not hits:
            log.error("daemon.crashed", error=self.fatal or "stopped without being asked to")
            return 1
        return 0
