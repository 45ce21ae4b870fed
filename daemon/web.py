"""The daemon's own HTTP endpoints (``[http] listen``).

``/healthz`` (alive), ``/readyz`` (the API answers and accepts us, the spool is
writable, nothing is being ridden out), ``/metrics`` (Prometheus) and ``POST
/callbacks/bulk``, where Open Connectors reports a job's end. A callback only makes the
tracker check that job at once; the file is finished from the status the daemon reads
itself, never from the callback's body.

Slow or idle clients cannot exhaust the daemon: connections are capped well below the
descriptor limit (when full, the oldest one idle between requests makes room), a
connection must send a request within :data:`REQUEST_SECONDS` and a callback's body
arrive within it too, and idle keep-alive connections close after
:data:`KEEPALIVE_SECONDS`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import resource
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client.aiohttp import make_aiohttp_handler

from daemon.logs import get_logger

if TYPE_CHECKING:
    from daemon.service import Daemon

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
CONNECTIONS: web.AppKey[_Connections] = web.AppKey("connections")
CALLBACK_MAX_BYTES = 1024 * 1024
SIGNATURE_HEADER = "Elements-Webhook-Signature"
REQUEST_SECONDS = 10.0     # from connecting to a whole request (a callback's body too)
KEEPALIVE_SECONDS = 15.0   # an idle keep-alive connection is closed after this
MAX_CONNECTIONS = 256      # at most; a quarter of the descriptors when they are fewer
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
         b"Connection: close\r\n\r\n")

log = get_logger()


def raise_descriptor_limit(ceiling: int = 1 << 20) -> int:
    """Raise the soft limit on open files to the hard one, as servers do (systemd's
    default soft limit is 1,024); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def connection_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft // 4))


class _Connections:
    """The HTTP connections open now: which are handling a request, which have ever
    sent one. Makes room for a new connection when full, and closes one that sends no
    request in time."""

    def __init__(self) -> None:
        self.server: web.Server | None = None  # set by serve_http()
        self.limit = MAX_CONNECTIONS
        self.refused: Callable[[], None] = lambda: None
        self.busy: set[Any] = set()
        self.served: set[Any] = set()

    def make_protocol(self) -> Any:
        """The protocol for a new connection (asyncio's factory)."""
        assert self.server is not None
        open_now = self.server.connections
        if len(open_now) >= self.limit:
            idle = next((h for h in open_now if h not in self.busy), None)
            if idle is None:
                self.refused()
                return _Busy()
            idle.force_close()  # the oldest idle or slow one makes room
            self.served.discard(idle)
        handler = self.server()
        loop = asyncio.get_running_loop()
        loop.call_later(REQUEST_SECONDS, self._deadline, handler)
        return handler

    def _deadline(self, handler: Any) -> None:
        if handler not in self.served and handler.transport is not None:
            handler.force_close()  # connected and never sent a whole request

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        protocol = request.protocol
        self.busy.add(protocol)
        self.served.add(protocol)
        try:
            return await handler(request)
        finally:
            self.busy.discard(protocol)


class _Busy(asyncio.Protocol):
    """Answers 503 and closes: every connection is handling a request."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_BUSY)
        transport.close()


class HttpServer:
    """The listening socket and the aiohttp runner behind it."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server) -> None:
        self.runner = runner
        self.server = server

    async def cleanup(self) -> None:
        self.server.close()
        await self.runner.cleanup()


async def serve_http(app: web.Application, host: str, port: int,
                     refused: Callable[[], None]) -> HttpServer:
    """Serve *app* on host:port with the limits above; OSError when it cannot listen."""
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE_SECONDS)
    await runner.setup()
    assert runner.server is not None
    app[CONNECTIONS].server = runner.server
    app[CONNECTIONS].limit = connection_limit()
    app[CONNECTIONS].refused = refused
    try:
        server = await asyncio.get_running_loop().create_server(
            app[CONNECTIONS].make_protocol, host, port, reuse_address=True)
    except BaseException:
        await runner.cleanup()
        raise
    return HttpServer(runner, server)


def create_app(daemon: Daemon) -> web.Application:
    connections = _Connections()
    app = web.Application(client_max_size=CALLBACK_MAX_BYTES,
                          middlewares=[connections.middleware])
    app[DAEMON] = daemon
    app[CONNECTIONS] = connections
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(daemon.metrics.registry))
    app.router.add_post("/callbacks/bulk", callback)
    return app


async def healthz(request: web.Request) -> web.Response:
    """Alive: the loop answers and no core task has died."""
    dead = [t.get_name() for t in request.app[DAEMON].core if t.done()]
    if dead and not request.app[DAEMON].stop_event.is_set():
        return web.json_response({"status": "failing", "stopped": dead}, status=503)
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: watching the spool, which is writable; the API answers and accepts us."""
    daemon = request.app[DAEMON]
    problems = []
    if not daemon.ready.is_set():
        problems.append("starting")
    folders = (daemon.spool.inbox, daemon.spool.processing, daemon.spool.done,
               daemon.spool.failed)
    unwritable = await asyncio.to_thread(
        lambda: [str(f) for f in folders if not os.access(f, os.W_OK | os.X_OK)])
    if unwritable:
        problems.append(f"spool not writable: {', '.join(unwritable)}")
    if not daemon.policy.gate.is_open:
        problems.append("the API refuses the credentials")
    elif not await daemon.api_reachable(daemon.ready_probe_ttl):
        problems.append(f"the API does not answer: {daemon.api_problem}")
    problems.extend(daemon.troubles.lines())
    if problems:
        return web.json_response({"status": "not ready", "problems": problems}, status=503)
    return web.json_response({"status": "ready", "checked": round(time.time())})


def signature_ok(key: str, body: bytes, header: str | None) -> bool:
    """``sha256=<standard base64 of HMAC-SHA256(key, raw body)>``, compared in constant time."""
    if not header or not header.startswith("sha256="):
        return False
    expected = base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest())
    return hmac.compare_digest(expected, header[len("sha256="):].strip().encode())


async def callback(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    if (request.content_length or 0) > CALLBACK_MAX_BYTES:
        return _refuse(413, "body over 1 MiB")
    try:
        async with asyncio.timeout(REQUEST_SECONDS):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _refuse(413, "body over 1 MiB")
    except TimeoutError:
        return _refuse(408, f"body not sent within {REQUEST_SECONDS:g} s")
    key = daemon.settings.callback.signature_key
    if key and not signature_ok(key.reveal(), body, request.headers.get(SIGNATURE_HEADER)):
        return _refuse(401, f"missing or wrong {SIGNATURE_HEADER}")
    try:
        data = json.loads(body)
        job_id = str(data["id"])
    except (ValueError, TypeError, KeyError):
        return _refuse(400, "expected a JSON object with the job's id")
    if not daemon.tracker.wake(job_id):
        return _refuse(404, f"no job {job_id} is being followed here")
    log.info("callback.received", job_id=job_id, api_status=data.get("status"))
    return web.json_response({"status": "checking", "id": job_id})


def _refuse(status: int, message: str) -> web.Response:
    log.warning("callback.refused", http_status=status, reason=message)
    return web.json_response({"message": message}, status=status)
