"""``Daemon``: wires the parts, owns every task, and runs in three phases: start-up
(spool, ledger, listener, recovery), serving (the watcher and the claimer), and a
shutdown that always runs, in a ``finally``, before the ledger closes.

Construction is apart from running: ``serve()`` is what tests drive, ``run()`` is the
synchronous entry for the command line (signals, exit code).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from daemon import csvfile, ops
from daemon.admission import Admission, Claimer, Ticket
from daemon.checks import Checks
from daemon.fileref import hard_links_protected
from daemon.filing import Filer
from daemon.http_server import HttpServer, raise_descriptor_limit
from daemon.http_server import serve as serve_http
from daemon.instances import Instance
from daemon.ledger import Ledger, LedgerView
from daemon.logs import describe_error, get_logger
from daemon.metrics import Metrics
from daemon.notify import Outbox
from daemon.pipeline import Pipeline
from daemon.recovery import recover
from daemon.settings import DEFAULT_INSTANCE, Settings
from daemon.spool import Spool, SpoolError
from daemon.store import StoreError
from daemon.systemd import Notifier
from daemon.tasks import Tasks
from daemon.trouble import Troubles
from daemon.view import Live, ViewHost, allowed_hosts
from daemon.watcher import Watcher
from daemon.web import ApiReadiness, Host, Readiness, create_app

log = get_logger()
# Claims, small files' checks and filing run on two threads of their own. On 2,000 small
# files (bench/), two threads filed about 10% more files/s than the event loop's default
# executor with six (fewer threads contending for the GIL) and one thread about 20%
# fewer (each file's fsyncs waiting in a row). Big reads keep to the default executor.
QUICK_THREADS = 2


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


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = s = settings
        csvfile.set_line_limit(s.spool.max_line_length)
        self.spool = Spool(s.spool.root, s.spool.node_id)
        self.ledger = Ledger(s.spool.state_dir / "bulkdrop.db")
        self.notifier = Notifier()
        self.metrics = Metrics()
        self.troubles = Troubles()
        self.ledger.on_trouble = self._ledger_trouble
        self.ledger.on_broken = self.fail
        self._quick = ThreadPoolExecutor(QUICK_THREADS, thread_name_prefix="bulkdrop-files")
        self.tasks = Tasks(_file_crashed)
        self.checks = Checks(s, self.troubles, self.metrics, self.spool.processing)
        self.instances = {name: Instance(inst, s, self.ledger, self.checks, self.metrics)
                          for name, inst in s.instances.items()}
        # Files that go to no instance have slots of their own, to be rejected.
        self.unrouted = Admission(s.workers.uploads, s.workers.max_active_jobs)
        self.lanes: dict[str | None, Admission] = {
            None: self.unrouted, **{n: i.admission for n, i in self.instances.items()}}
        self.filer = Filer(self.spool, self.ledger, self.quick, self.checks, self.tasks,
                           self.troubles, self.metrics)
        self.pipeline = Pipeline(self.spool, self.ledger, self.checks, self.instances,
                                 self.filer, self.resume_ticket)
        self.metrics.watch(self.ledger.path, self.troubles)
        # Started when targets are configured, or when notifications wait in the ledger
        # (for targets since removed: given up, and said so).
        self.outbox = Outbox(s.notify, self.ledger, self.metrics)
        if s.notify.targets:
            self.filer.on_recorded = self.outbox.wake
        self.metrics.watch_notifications(lambda: self.outbox.pending)
        candidates: asyncio.Queue[Path] = asyncio.Queue(maxsize=max(64, s.workers.uploads))
        self.watcher = Watcher(self.spool, candidates, settle_seconds=s.spool.settle_seconds,
                               rescan_seconds=s.spool.rescan_seconds,
                               force_polling=s.spool.force_polling, troubles=self.troubles)
        self.watcher.on_scan = self._scanned
        self.inbox: tuple[int, float | None] = (0, None)  # files waiting, oldest's arrival
        self._asking: asyncio.Future[Any] | None = None  # the view's readiness refresh
        self._lock: int | None = None  # this node's lock: one daemon per node and ledger
        self.claimer = Claimer(self.lanes, self.lane_of, self.watcher, self.spool,
                               self.checks.examine, self.quick, self.tasks.spawn,
                               lambda work, ticket: self.pipeline.process(work, ticket, True),
                               self.troubles)
        self.fatal: str | None = None  # why the daemon cannot go on, once it cannot
        self.http: HttpServer | None = None  # the listener, while it serves
        self.sending: asyncio.Task[None] | None = None  # the notifications' sender
        self.stop_event = asyncio.Event()
        self.ready = asyncio.Event()   # set once watching
        self.stopped = asyncio.Event()  # set once everything is closed, the node unlocked
        self.core: list[asyncio.Task[None]] = []   # watcher and claimer: /healthz watches
        spool = self.spool
        self.readiness = Readiness(
            self.ready, (spool.inbox, spool.processing, spool.done, spool.failed),
            {n: ApiReadiness(i.policy.gate, i.probe) for n, i in self.instances.items()},
            self.troubles, s.http.ready_when)

    def _scanned(self, waiting: int, oldest: float | None) -> None:
        self.inbox = (waiting, oldest)
        self.metrics.inbox_scanned(waiting, oldest)

    def live(self) -> Live:
        """What the web view shows of the present. Someone is watching: each instance's
        API is asked again (in the background) once its last answer is ttl old."""
        apis = self.readiness.instances.values()
        if (self._asking is None or self._asking.done()) and any(a.stale for a in apis):
            self._asking = asyncio.ensure_future(
                asyncio.gather(*(a.api_answers() for a in apis)))
        waiting, oldest = self.inbox
        return Live({n: api.state() for n, api in self.readiness.instances.items()},
                    waiting, None if oldest is None else max(0.0, time.time() - oldest),
                    sum(i.jobs.uploads_now for i in self.instances.values()),
                    [f.as_dict() for i in self.instances.values()
                     for f in i.jobs.active.values()])

    def instance(self, name: str = DEFAULT_INSTANCE) -> Instance:
        return self.instances[name]

    def lane_of(self, path: Path) -> str | None:
        """The instance whose slots a file in inbox/ waits for (None: it goes to none)."""
        instance = self.checks.route(self.spool.rel_to_inbox(path)).instance
        return instance if instance in self.instances else None

    def resume_ticket(self, instance: str | None) -> Ticket:
        """A ticket for a file found at start, in its instance's slots."""
        return self.lanes[instance if instance in self.lanes else None].resume_ticket()

    def wake(self, job_id: str) -> bool:
        """A callback says *job_id* changed: check it now at the instance following it."""
        return any([i.tracker.wake(job_id) for i in self.instances.values()])

    @property
    def active_jobs(self) -> int:
        return sum(len(i.jobs.active) for i in self.instances.values())

    async def quick(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a short file-system step (a claim, a small file's checks, filing) off the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._quick, fn, *args)

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

    async def serve(self) -> None:
        """Run until :meth:`request_stop`; then shut down in phases and return."""
        await self._startup()
        http = notifying = pruning = None
        try:
            http = self.http = await self._serve_http()
            self.notifier.extend_timeout(90)  # recovery may take a while with many rows
            await recover(self.spool, self.ledger, self.pipeline, self.tasks.spawn)
            self.core = [asyncio.create_task(self.watcher.run(self.stop_event), name="watcher"),
                         asyncio.create_task(self.claimer.run(), name="claimer")]
            self._started()
            notifying = asyncio.create_task(self.notifier.run(self.stop_event, self.status_line),
                                            name="notifier")
            pruning = asyncio.create_task(self.ledger.keep_pruned(
                self.settings.spool.ledger_retention_days, self.stop_event), name="pruning")
            _due, waiting = await self.ledger.next_notification_at()
            if self.settings.notify.targets or waiting:  # pending ones resume from the ledger
                self.sending = asyncio.create_task(self.outbox.run(self.stop_event),
                                                   name="notifications")
                self.sending.add_done_callback(_sender_ended)
            stopper = asyncio.create_task(self.stop_event.wait())
            done, _ = await asyncio.wait({*self.core, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            for ended in done - {stopper}:
                ended.result()  # a crashed watcher or claimer is an error worth raising
                if not self.stop_event.is_set():  # else it ended for the stop, ahead of stopper
                    raise RuntimeError(f"the {ended.get_name()} stopped by itself")
        finally:
            self.stop_event.set()
            await self._shutdown()
            for helper in (notifying, pruning):
                if helper is not None:
                    helper.cancel()
                    await asyncio.gather(helper, return_exceptions=True)
            if self.sending is not None:  # what is unsent is sent at the next start
                self.sending.cancel()
                await asyncio.gather(self.sending, return_exceptions=True)
            if http is not None:
                await http.cleanup()
                await self.ledger_view.close()
            await asyncio.gather(*(i.close() for i in self.instances.values()),
                                 return_exceptions=True)
            await self.ledger.close()
            self._unlock()
            self.stopped.set()
            self._quick.shutdown(wait=False)
            self.notifier.close()

    async def _startup(self) -> None:
        self.descriptors = raise_descriptor_limit()
        if not await asyncio.to_thread(hard_links_protected):
            self.spool.refuse_hard_links = True
            log.warning("spool.hard_links_unprotected",
                        note="fs.protected_hardlinks is off: anyone may link a file they "
                             "cannot read into inbox/, so files with other links are "
                             "rejected; set fs.protected_hardlinks = 1 to take them")
        locked = await asyncio.to_thread(self.spool.ensure_layout, self.settings.inbox_folders)
        for folder, why in locked:
            log.error("spool.unwritable_dir", path=str(folder), error=why,
                      note="files dropped here cannot be claimed: make it a folder the "
                           "daemon's group may write to (droppers need umask 002)")
        self._lock = await asyncio.to_thread(node_lock, self.settings.spool.state_dir,
                                             self.settings.spool.node_id)
        try:
            await self.ledger.open()
        except (StoreError, OSError) as exc:
            self._unlock()
            raise StartupError(str(exc)) from exc

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # the lock goes with it
            self._lock = None

    async def _serve_http(self) -> HttpServer | None:
        http = self.settings.http
        if not http.enabled:
            return None
        self.ledger_view = LedgerView(self.ledger.path)
        self.ledger_view.on_error = partial(self.ledger.note_error, loop=None)
        spool = self.spool
        view = ViewHost(self.ledger_view, spool, self.live, http.actions,
                        partial(ops.retry, spool), partial(ops.retry_failed_rows, spool))
        app, connections = create_app(Host(
            self.dead_tasks, self.readiness, self.wake, self.metrics.registry,
            self.settings.callback.signature_key, view),
            allowed_hosts(http.host, http.view_hosts))
        try:
            return await serve_http(app, connections, http.host, http.port,
                                    self.metrics.http_refused)
        except OSError as exc:
            raise StartupError(f"cannot listen on {http.listen} ([http] listen): "
                               f"{exc.strerror}") from exc

    def _started(self) -> None:
        callback = self.settings.callback
        if callback.public_url and not callback.signature_key:
            log.warning("callback.unsigned", public_url=callback.public_url,
                        note="set [callback] signature_key: anyone who can reach "
                             "/callbacks/bulk can make the daemon poll")
        s = self.settings
        log.info("daemon.started", spool=str(self.spool.root), node=s.spool.node_id,
                 instances={n: {"api": i.api.base_url, "hub": i.api.hub, "uploads": i.uploads,
                                "requests_per_second": i.api.requests_per_second}
                            for n, i in s.instances.items()},
                 default_instance=s.default_instance,
                 event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
                 open_files_limit=self.descriptors)
        self.ready.set()
        self.notifier.ready(self.status_line())

    def status_line(self) -> str:
        """One line for systemd's STATUS=: what each instance is doing now, and what has
        been done."""
        def done(counts: dict[str, int]) -> str:
            return (f"done {counts.get('COMPLETE', 0)}, failed {counts.get('FAILED', 0)}, "
                    f"rejected {counts.get('REJECTED', 0)}")

        if len(self.instances) == 1:
            (only,) = self.instances.values()
            return f"{only.status()}; {done(self.filer.counts)}"
        by = self.filer.instance_counts
        return "; ".join([*(f"{n}: {i.status()}, {done(by.get(n, {}))}"
                            for n, i in self.instances.items()),
                          f"all: {done(self.filer.counts)}"])

    async def _shutdown(self) -> None:
        """Stop intake, let uploads in flight finish within the grace, cancel the rest,
        but never an upload whose body has gone out: the API may be making its job, and
        a cut one would be sent again at the next start. Those get their answer (each
        within ``request_timeout_seconds``), the stop timeout extended meanwhile."""
        started = time.monotonic()
        for admission in self.lanes.values():
            admission.stopping = True
        grace = self.settings.workers.shutdown_grace_seconds
        self.notifier.stopping(f"stopping: {self.status_line()}")
        self.notifier.extend_timeout(grace + 15)
        for task in self.core:
            task.cancel()
        await asyncio.gather(*self.core, return_exceptions=True)
        # Jobs being followed resume from the ledger next time: no need to wait for them.
        for instance in self.instances.values():
            instance.tracker.cancel_all()
        await self.tasks.wait(self.tasks.running, grace)
        answering = [t for t in self.tasks.running
                     if any(t in i.jobs.answering for i in self.instances.values())]
        if answering:
            wait = self.settings.api.request_timeout_seconds + 5
            self.notifier.extend_timeout(wait + 15)
            log.info("daemon.awaiting_answers", uploads=len(answering), at_most_seconds=wait,
                     note="their bodies were sent: cutting them could create jobs twice")
            await self.tasks.wait(answering, wait)
        cut = await self.tasks.cancel_running()
        # Filing is quick; bound it anyway (a hung network mount must not hang us).
        # Whatever is cut short is redone from the ledger at the next start.
        await self.tasks.wait_shields(max(1.0, grace / 4))
        counts = {k.lower(): v for k, v in self.filer.counts.items()}
        log.info("daemon.stopped", seconds=round(time.monotonic() - started, 2),
                 cut_short=cut, **counts)

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


def _file_crashed(task: asyncio.Task[Any], exc: BaseException) -> None:
    # A bug, not the file's doing: it stays in processing/ and is resumed at the next
    # start. (Trouble that passes is retried inside; input never raises.)
    log.error("file.crashed", file=task.get_name(), error=repr(exc), exc_info=exc)


def _sender_ended(task: asyncio.Task[None]) -> None:
    # A bug: what is unsent stays in the ledger and is sent at the next start.
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("notify.crashed", error=repr(exc), exc_info=exc,
                  note="notifications wait in the ledger until the next start")


def node_lock(state_dir: Path, node_id: str) -> int:
    """Hold ``<state_dir>/daemon.lock`` for as long as the descriptor is open: a second
    daemon with the same node id (the same ledger, the same processing/ folder) would
    take the first one's files as its own to recover. Its pid is written in it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "daemon.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StartupError(f"cannot open {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        finally:
            os.close(fd)
        raise StartupError(
            f"another bulkdrop (pid {holder}) already runs as node {node_id!r} on this spool "
            f"({path} is locked): stop it first, or give this one another "
            "[spool] node_id") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
