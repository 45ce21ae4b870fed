"""The daemon's HTTP listener, hardened: slow or idle clients cannot exhaust it.

Connections are capped well below the descriptor limit (raised to the hard limit at
start); when full, the oldest connection idle between requests makes room. A connection
must send a whole request within :data:`REQUEST_SECONDS`, and idle keep-alive
connections close after :data:`KEEPALIVE_SECONDS`. What is served is
:func:`daemon.web.create_app`'s business.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

REQUEST_SECONDS = 10.0     # from connecting to a whole request (a callback's body too)
KEEPALIVE_SECONDS = 15.0   # an idle keep-alive connection is closed after this
MAX_CONNECTIONS = 256      # at most; a quarter of the descriptors when they are fewer
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
         b"Connection: close\r\n\r\n")


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


class Connections:
    """The HTTP connections open now: which are handling a request, which have ever
    sent one. Makes room for a new connection when full, and closes one that sends no
    request in time."""

    def __init__(self) -> None:
        self.server: web.Server | None = None  # set by serve()
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

    @property
    def port(self) -> int:
        """The port it listens on (chosen by the OS when asked for 0)."""
        return int(self.server.sockets[0].getsockname()[1])

    async def cleanup(self) -> None:
        self.server.close()
        await self.runner.cleanup()


def guarded_app(**kwargs: Any) -> tuple[web.Application, Connections]:
    """An application whose requests the connection guard can see."""
    connections = Connections()
    return web.Application(middlewares=[connections.middleware], **kwargs), connections


async def serve(app: web.Application, connections: Connections, host: str, port: int,
                refused: Callable[[], None]) -> HttpServer:
    """Serve *app* on host:port with the limits above; OSError when it cannot listen."""
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE_SECONDS)
    await runner.setup()
    assert runner.server is not None
    connections.server = runner.server
    connections.limit = connection_limit()
    connections.refused = refused
    try:
        server = await asyncio.get_running_loop().create_server(
            connections.make_protocol, host, port, reuse_address=True)
    except BaseException:
        await runner.cleanup()
        raise
    return HttpServer(runner, server)
