"""The daemon's own HTTP endpoints (``[http] listen``): liveness and readiness."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from daemon.service import Daemon

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
READY_PROBE_TTL = 10.0  # seconds a readiness answer from the API is trusted


def create_app(daemon: Daemon) -> web.Application:
    app = web.Application()
    app[DAEMON] = daemon
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def healthz(request: web.Request) -> web.Response:
    """Alive: the event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: watching the spool, the API answers and accepts our credentials."""
    daemon = request.app[DAEMON]
    problems = []
    if not daemon.ready.is_set():
        problems.append("starting")
    if not daemon.policy.gate.is_open:
        problems.append("the API refuses the credentials")
    elif not await daemon.api_reachable(READY_PROBE_TTL):
        problems.append(f"the API does not answer: {daemon.api_problem}")
    if problems:
        return web.json_response({"status": "not ready", "problems": problems}, status=503)
    return web.json_response({"status": "ready", "checked": round(time.time())})
