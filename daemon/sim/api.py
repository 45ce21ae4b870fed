"""Handlers of the Open Connectors API routes (mounted under /elements/api-v2)."""

from __future__ import annotations

import asyncio
import base64
import binascii

from aiohttp import web

from daemon.sim.gate import DROPPED_STATUS, error_response, space_of
from daemon.sim.state import Job, Simulator
from daemon.sim.upload import UploadError, drain, read_upload

SIM_KEY = web.AppKey("sim", Simulator)
CALLBACK_HEADER = "Elements-Async-Callback-Url"
DEFAULT_PAGE_SIZE = 200


def _sim(request: web.Request) -> Simulator:
    return request.config_dict[SIM_KEY]


async def objects(request: web.Request) -> web.Response:
    return web.json_response(list(_sim(request).config.objects))


# Fields the simulator reports for its objects (GET /objects/{name}/metadata): those of
# the bulk API page's sample, under the names a connector would use, and a few more.
OBJECT_FIELDS = {
    "contact": ("email", "firstName", "lastName", "title", "phone", "company", "website"),
    "account": ("name", "website", "phone", "industry", "email"),
}


async def object_metadata(request: web.Request) -> web.Response:
    obj = request.match_info["object"]
    if obj not in _sim(request).config.objects:
        return error_response(404, f"No resource found for object '{obj}'")
    fields = [{"vendorPath": name, "type": "string", "vendorRequired": name == "email",
               "vendorReadOnly": False} for name in OBJECT_FIELDS.get(obj, ())]
    return web.json_response({"fields": fields})


async def bulk_create(request: web.Request) -> web.Response:
    sim = _sim(request)
    obj = request.match_info["object"]
    if obj not in sim.config.objects:
        await drain(request)
        return error_response(
            404,
            f"No resource found for object '{obj}'. Call GET /objects for the available ones",
        )
    try:
        upload = await read_upload(request, sim.config.fail_invalid_emails, sim.config.keep_bodies)
    except UploadError as exc:
        return error_response(exc.status, exc.message)
    if sim.config.max_upload_bytes and upload.bytes > sim.config.max_upload_bytes:
        # Not a rate limit: the same upload would get the same answer. No job is made.
        sim.faults["upload too large"] += 1
        return error_response(
            429, f"The upload is too large: {upload.bytes} bytes, the limit is "
                 f"{sim.config.max_upload_bytes} bytes (uploads over 6 GB or 3600 seconds "
                 "are refused)")
    job = sim.add_job(
        upload,
        hub=request.match_info["hub"],
        object_name=obj,
        name=request.query.get("path"),
        callback_url=request.headers.get(CALLBACK_HEADER) or None,
        space=space_of(request),
    )
    if sim.config.create_delay_seconds > 0:
        await asyncio.sleep(sim.config.create_delay_seconds)
    faults = sim.config.create_faults
    if faults and faults[0] in ("lost", "504"):
        # The job exists; the client never learns its id.
        fault = faults.pop(0)
        sim.faults[f"scripted {fault}"] += 1
        if fault == "504":
            return error_response(504, "Gateway Timeout (scripted: the job was created)")
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=DROPPED_STATUS)
    return web.json_response({"id": job.id, "status": "CREATED"})


def _job(request: web.Request) -> Job | None:
    """The job the request names, if it is in the request's job space."""
    job = _sim(request).jobs.get(request.match_info["id"])
    return job if job is not None and job.space == space_of(request) else None


def _no_job(request: web.Request) -> web.Response:
    return error_response(404, f"No bulk job found with id '{request.match_info['id']}'")


async def bulk_status(request: web.Request) -> web.Response:
    sim = _sim(request)
    if (job := _job(request)) is None:
        return _no_job(request)
    body = sim.status_body(job)
    sim.mark_reported(job)
    return web.json_response(body)


async def bulk_cancel(request: web.Request) -> web.Response:
    sim = _sim(request)
    if (job := _job(request)) is None:
        return _no_job(request)
    sim.cancel(job)
    body = sim.status_body(job)
    sim.mark_reported(job)
    return web.json_response(body)


async def bulk_errors(request: web.Request) -> web.Response:
    if (job := _job(request)) is None:
        return _no_job(request)
    try:
        size = _page_size(request)
        start = _decode_token(request.query.get("nextPage"), job.id)
    except ValueError as exc:
        return error_response(400, str(exc))
    page = [_sim(request).error_record(r) for r in job.failed_records[start : start + size]]
    headers = {"Elements-Returned-Count": str(len(page))}
    if start + size < len(job.failed_records):
        headers["Elements-Next-Page-Token"] = _encode_token(job.id, start + size)
    return web.json_response(page, headers=headers)


async def bulk_jobs(request: web.Request) -> web.Response:
    sim = _sim(request)
    try:
        size = _page_size(request)
    except ValueError as exc:
        return error_response(400, str(exc))
    space = space_of(request)
    newest = sorted((job for job in sim.jobs.values() if job.space == space),
                    key=lambda job: int(job.id), reverse=True)[:size]
    return web.json_response([sim.list_entry(job) for job in newest])


def _page_size(request: web.Request) -> int:
    raw = request.query.get("pageSize", str(DEFAULT_PAGE_SIZE))
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"Invalid pageSize '{raw}': it must be a positive integer")
    return size


def _encode_token(job_id: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{job_id}:{offset}".encode()).decode().rstrip("=")


def _decode_token(token: str | None, job_id: str) -> int:
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        token_job, _, offset = raw.partition(":")
        start = int(offset)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        start = -1
        token_job = ""
    if token_job != job_id or start < 0:
        raise ValueError("Invalid nextPage token")
    return start


def add_routes(app: web.Application) -> None:
    """Hub routes, plus the hub-less platform forms of the job routes."""
    app.router.add_get("/hubs/{hub}/objects", objects, name="objects")
    app.router.add_get("/hubs/{hub}/objects/{object}/metadata", object_metadata,
                       name="object_metadata")
    app.router.add_post("/hubs/{hub}/bulk/{object}", bulk_create, name="bulk_create")
    app.router.add_get("/hubs/{hub}/bulk/jobs", bulk_jobs, name="bulk_jobs")
    app.router.add_get("/bulk/jobs", bulk_jobs, name="platform_bulk_jobs")
    for prefix, name_prefix in (("/hubs/{hub}/bulk", ""), ("/bulk", "platform_")):
        app.router.add_get(f"{prefix}/{{id}}/status", bulk_status, name=f"{name_prefix}bulk_status")
        app.router.add_get(f"{prefix}/{{id}}/errors", bulk_errors, name=f"{name_prefix}bulk_errors")
        app.router.add_put(f"{prefix}/{{id}}/cancel", bulk_cancel, name=f"{name_prefix}bulk_cancel")
