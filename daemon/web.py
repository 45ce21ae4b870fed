"""The daemon's own HTTP endpoints (``[http] listen``), over what is handed in.

``/healthz`` (alive), ``/readyz`` (ready: :class:`Readiness`), ``/metrics``
(Prometheus) and ``POST /callbacks/bulk``, where Open Connectors reports a job's end. A
callback only makes the tracker check that job at once; the file is finished from the
status the daemon reads itself, never from the callback's body. The listener and its
limits are :mod:`daemon.http_server`'s.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from daemon.http_server import REQUEST_SECONDS, Connections, guarded_app
from daemon.logs import get_logger
from daemon.retry import ApiError, AuthError, AuthGate
from daemon.settings import Secret
from daemon.trouble import Troubles
from daemon.view import ViewHost, add_routes, host_guard

CALLBACK_MAX_BYTES = 1024 * 1024
# An instance's API that takes longer to list its objects is "not answering": /readyz
# never waits on one slow instance longer than this (the instances are asked at once).
PROBE_SECONDS = 3.0
SIGNATURE_HEADER = "Elements-Webhook-Signature"

log = get_logger()


class ApiReadiness:
    """One connector instance's part of readiness: its API answering and taking its
    credentials, asked at most every :attr:`ttl` seconds."""

    def __init__(self, gate: AuthGate, probe: Callable[[], Awaitable[object]],
                 ttl: float = 10.0) -> None:
        self.gate = gate
        self.probe = probe
        self.ttl = ttl  # seconds an answer from the API is trusted
        self.api_problem: str | None = None
        self._checked = -1e9

    def state(self) -> str:
        """"ready", or why not, as last known (asks nothing)."""
        if not self.gate.is_open:
            refusal = f" ({self.gate.refusal})" if self.gate.refusal else ""
            return f"credentials refused{refusal}: its files wait"
        if self._checked < 0:
            return "not asked yet"
        return self.api_problem or "ready"

    @property
    def stale(self) -> bool:
        """Its API's answer is older than :attr:`ttl` (or it was never asked)."""
        return time.monotonic() - self._checked > self.ttl

    async def problem(self) -> str | None:
        """None when ready, else what is wrong, in a line. The API is asked while the
        gate is shut too (once per :attr:`ttl` at most): a success opens it at once."""
        answers = await self.api_answers()
        if not self.gate.is_open:
            refusal = f" ({self.gate.refusal})" if self.gate.refusal else ""
            return f"credentials refused{refusal}: its files wait"
        return None if answers else self.api_problem

    async def api_answers(self) -> bool:
        """Ask the API at most every :attr:`ttl` seconds; a success opens the auth gate."""
        if time.monotonic() - self._checked > self.ttl:
            self._checked = time.monotonic()
            try:
                async with asyncio.timeout(PROBE_SECONDS):
                    await self.probe()
                self.api_problem = None
                self.gate.ok()
            except TimeoutError:
                self.api_problem = f"the API does not answer within {PROBE_SECONDS:g} s"
            except AuthError as exc:
                self.api_problem = f"credentials refused (HTTP {exc.status}: {exc.message})"
            except ApiError as exc:
                self.api_problem = f"the API does not answer: {exc.message}"
        return self.api_problem is None


class Readiness:
    """What ``/readyz`` says: watching, the spool writable, nothing ridden out, and each
    connector instance ready; with ``ready_when = "any"``, one ready instance is enough."""

    def __init__(self, watching: asyncio.Event, folders: Sequence[Path],
                 instances: Mapping[str, ApiReadiness], troubles: Troubles,
                 ready_when: str = "all") -> None:
        self.watching = watching
        self.folders = folders
        self.instances = instances
        self.troubles = troubles
        self.ready_when = ready_when

    async def check(self) -> tuple[list[str], dict[str, str]]:
        """(what stops the daemon being ready, each instance's state: "ready" or why not)."""
        problems = []
        if not self.watching.is_set():
            problems.append("starting")
        unwritable = await asyncio.to_thread(
            lambda: [str(f) for f in self.folders if not os.access(f, os.W_OK | os.X_OK)])
        if unwritable:
            problems.append(f"spool not writable: {', '.join(unwritable)}")
        states = dict(zip(self.instances, await asyncio.gather(
            *(api.problem() for api in self.instances.values())), strict=True))
        down = {name: problem for name, problem in states.items() if problem}
        if down and (self.ready_when == "all" or len(down) == len(states)):
            problems.extend(f"instance {name}: {problem}" for name, problem in down.items())
        problems.extend(self.troubles.lines())
        return problems, {name: problem or "ready" for name, problem in states.items()}

    async def problems(self) -> list[str]:
        return (await self.check())[0]


@dataclass(frozen=True)
class Host:
    """What the endpoints need of the daemon, and no more."""
    dead_tasks: Callable[[], list[str]]   # core tasks that ended while not stopping
    readiness: Readiness
    wake: Callable[[str], bool]           # check this job now; False: not followed here
    registry: CollectorRegistry
    signature_key: Secret
    view: ViewHost | None = None          # the web view's, when it is served


HOST: web.AppKey[Host] = web.AppKey("host", Host)


def create_app(host: Host, view_hosts: frozenset[str] = frozenset()
               ) -> tuple[web.Application, Connections]:
    app, connections = guarded_app(client_max_size=CALLBACK_MAX_BYTES)
    if host.view is not None:
        app.middlewares.append(host_guard(view_hosts))
    app[HOST] = host
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(host.registry))
    app.router.add_post("/callbacks/bulk", callback)
    if host.view is not None:
        add_routes(app, host.view)
    return app, connections


async def healthz(request: web.Request) -> web.Response:
    """Alive: the loop answers and no core task has died."""
    dead = request.app[HOST].dead_tasks()
    if dead:
        return web.json_response({"status": "failing", "stopped": dead}, status=503)
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: see :class:`Readiness`."""
    problems, instances = await request.app[HOST].readiness.check()
    if problems:
        return web.json_response({"status": "not ready", "problems": problems,
                                  "instances": instances}, status=503)
    return web.json_response({"status": "ready", "checked": round(time.time()),
                              "instances": instances})


def signature_ok(key: str, body: bytes, header: str | None) -> bool:
    """``sha256=<standard base64 of HMAC-SHA256(key, raw body)>``, compared in constant time."""
    if not header or not header.startswith("sha256="):
        return False
    expected = base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest())
    return hmac.compare_digest(expected, header[len("sha256="):].strip().encode())


async def callback(request: web.Request) -> web.Response:
    host = request.app[HOST]
    if (request.content_length or 0) > CALLBACK_MAX_BYTES:
        return _refuse(413, "body over 1 MiB")
    try:
        async with asyncio.timeout(REQUEST_SECONDS):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _refuse(413, "body over 1 MiB")
    except TimeoutError:
        return _refuse(408, f"body not sent within {REQUEST_SECONDS:g} s")
    key = host.signature_key
    if key and not signature_ok(key.reveal(), body, request.headers.get(SIGNATURE_HEADER)):
        return _refuse(401, f"missing or wrong {SIGNATURE_HEADER}")
    try:
        data = json.loads(body)
        job_id = str(data["id"])
    except (ValueError, TypeError, KeyError):
        return _refuse(400, "expected a JSON object with the job's id")
    if not host.wake(job_id):
        return _refuse(404, f"no job {job_id} is being followed here")
    log.info("callback.received", job_id=job_id, api_status=data.get("status"))
    return web.json_response({"status": "checking", "id": job_id})


def _refuse(status: int, message: str) -> web.Response:
    log.warning("callback.refused", http_status=status, reason=message)
    return web.json_response({"message": message}, status=status)
