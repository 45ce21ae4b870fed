"""The daemon's own HTTP endpoints (``[http] listen``).

``/healthz`` (alive), ``/readyz`` (the API answers and accepts us, the spool is
writable), ``/metrics`` (Prometheus) and ``POST /callbacks/bulk``, where Open Connectors
reports a job's end. A callback only makes the tracker check that job at once; the file
is finished from the status the daemon reads itself, never from the callback's body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from daemon.logs import get_logger

if TYPE_CHECKING:
    from daemon.service import Daemon

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
CALLBACK_MAX_BYTES = 1024 * 1024
SIGNATURE_HEADER = "Elements-Webhook-Signature"

log = get_logger()


def create_app(daemon: Daemon) -> web.Application:
    app = web.Application(client_max_size=CALLBACK_MAX_BYTES)
    app[DAEMON] = daemon
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
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _refuse(413, "body over 1 MiB")
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
