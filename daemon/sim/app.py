"""The simulator's aiohttp application: API sub-app, control routes, middleware."""

from __future__ import annotations

import json
import time
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from daemon.sim.api import SIM_KEY, add_routes
from daemon.sim.config import apply_patch
from daemon.sim.gate import (
    DROPPED_STATUS,
    auth_problem,
    error_response,
    inject_fault,
    space_of,
)
from daemon.sim.state import Simulator
from daemon.sim.upload import drain

log = structlog.get_logger("daemon.sim")

API_PREFIX = "/elements/api-v2"
CONTROL_PREFIX = "/_sim"


def create_app(sim: Simulator) -> web.Application:
    app = web.Application(middlewares=[_count, _error_bodies])
    app[SIM_KEY] = sim
    api = web.Application(middlewares=[_gate])
    add_routes(api)
    app.add_subapp(API_PREFIX, api)
    app.router.add_get(f"{CONTROL_PREFIX}/state", _state)
    app.router.add_patch(f"{CONTROL_PREFIX}/config", _patch_config)
    app.router.add_post(f"{CONTROL_PREFIX}/reset", _reset)
    app.router.add_get(f"{CONTROL_PREFIX}/jobs", _jobs)
    app.router.add_post(f"{CONTROL_PREFIX}/webhooks", _webhook_in)
    app.router.add_get(f"{CONTROL_PREFIX}/webhooks", _webhooks)

    async def close_sim(_: web.Application) -> None:
        await sim.aclose()

    app.on_cleanup.append(close_sim)
    return app


@web.middleware
async def _count(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count API requests by (method, route name) and responses by status."""
    if not request.path.startswith(API_PREFIX + "/"):
        return await handler(request)
    sim = request.app[SIM_KEY]
    route = request.match_info.route.name or "unmatched"
    sim.requests[(request.method, route)] += 1
    sim.request_times.append(time.monotonic())
    sim.request_spaces.append(space_of(request))
    try:
        response = await handler(request)
    except ConnectionResetError:
        # The client went away mid-request (it crashed or gave up): nothing to answer.
        sim.client_disconnects += 1
        log.info("sim.client_disconnected", method=request.method, route=route)
        return web.Response(status=DROPPED_STATUS)
    if response.status != DROPPED_STATUS:
        sim.responses[response.status] += 1
    return response


@web.middleware
async def _error_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (404 no route, 405 ...) in the API's JSON error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        await drain(request)
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(exc.status, exc.reason, headers=headers)


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Faults first (so a faulted create never makes a job), then authentication."""
    sim = request.config_dict[SIM_KEY]
    is_create = request.match_info.route.name == "bulk_create"
    if is_create:
        sim.upload_started()
    try:
        fault = await inject_fault(request, sim)
        if fault is not None:
            return fault
        problem = auth_problem(request, sim.config)
        if problem is not None:
            await drain(request)
            return error_response(401, problem)
        return await handler(request)
    finally:
        if is_create:
            sim.upload_ended()


async def _state(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].snapshot())


async def _patch_config(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    try:
        patch: Any = json.loads(await request.read() or b"null")
        apply_patch(sim.config, patch)
    except ValueError as exc:  # also json.JSONDecodeError
        return error_response(400, str(exc))
    return web.json_response(sim.snapshot()["config"])


async def _reset(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    sim.reset_counters()
    return web.json_response(sim.snapshot())


async def _jobs(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    return web.json_response(
        [
            {
                "id": job.id,
                "object": job.object,
                "name": job.name,
                "filename": job.filename,
                "sha256": job.sha256,
                "bytes": job.bytes,
                "recordsCount": job.records_count,
                "recordsFailedCount": job.failed_count,
                "status": sim.status_of(job),
            }
            for job in sim.jobs.values()
        ]
    )


async def _webhook_in(request: web.Request) -> web.Response:
    """A webhook sink for bulkdrop's notifications (the sandbox points one at it): each
    body kept, the latest 1,000, with its headers, and logged."""
    sim = request.app[SIM_KEY]
    body = await request.read()
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = body.decode("utf-8", "replace")
    sim.webhooks.append({"received_at": time.time(), "body": data,
                         "signature": request.headers.get("X-Bulkdrop-Signature")})
    if isinstance(data, dict):
        log.info("sim.webhook", file=data.get("file"), on=data.get("event"),
                 text=data.get("text"))
    return web.json_response({"ok": True})


async def _webhooks(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[SIM_KEY].webhooks))
