"""What stands before every API route: injected faults, then authentication."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from email.utils import formatdate
from typing import Any

from aiohttp import web

from daemon.sim.config import SimConfig
from daemon.sim.state import Simulator
from daemon.sim.upload import drain, read_some

# A dropped upload reads about this much of the body before the connection is cut.
DROP_AFTER_BYTES = 32 * 1024
# nginx's "closed without response"; only the access log ever sees it.
DROPPED_STATUS = 444


def error_response(
    status: int,
    message: str,
    *,
    provider_message: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The API's error body: `{"message", "requestId"}` (+ `providerMessage`)."""
    body: dict[str, Any] = {"message": message, "requestId": str(uuid.uuid4())}
    if provider_message is not None:
        body["providerMessage"] = provider_message
    return web.json_response(body, status=status, headers=headers)


async def inject_fault(request: web.Request, sim: Simulator) -> web.StreamResponse | None:
    """Latency, then maybe a dropped connection, a 429 or a 5xx; None lets the request on."""
    config = sim.config
    if config.latency_seconds > 0:
        await asyncio.sleep(config.latency_seconds)
    if request.match_info.route.name == "bulk_create" and config.create_faults \
            and config.create_faults[0] in ("503", "429", "drop"):
        return await _scripted(request, sim, config.create_faults.pop(0))
    rng = sim.rng()
    if config.drop_rate > 0 and rng.random() < config.drop_rate:
        sim.faults["drop"] += 1
        await read_some(request, DROP_AFTER_BYTES)
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=DROPPED_STATUS)
    if config.rate_limit_rate > 0 and rng.random() < config.rate_limit_rate:
        sim.faults["429"] += 1
        await drain(request)
        return error_response(
            429, "Too many requests (simulated)", headers=_retry_after(sim, config)
        )
    if config.error_rate > 0 and rng.random() < config.error_rate:
        status = rng.choice((500, 502, 503))
        sim.faults[str(status)] += 1
        await drain(request)
        headers = _retry_after(sim, config) if status == 503 else None
        return error_response(
            status,
            "The server encountered a temporary problem (simulated)",
            provider_message="simulated upstream failure",
            headers=headers,
        )
    return None


async def _scripted(request: web.Request, sim: Simulator, fault: str) -> web.StreamResponse:
    """A fault from ``create_faults`` that comes before any job is made."""
    sim.faults[f"scripted {fault}"] += 1
    if fault == "drop":
        await read_some(request, DROP_AFTER_BYTES)
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=DROPPED_STATUS)
    await drain(request)
    headers = {"Retry-After": str(sim.config.retry_after_seconds)}
    if fault == "429":
        return error_response(429, "Too many requests (scripted)", headers=headers)
    return error_response(503, "Service unavailable (scripted)", headers=headers)


def _retry_after(sim: Simulator, config: SimConfig) -> dict[str, str] | None:
    if config.retry_after_rate <= 0 or sim.rng().random() >= config.retry_after_rate:
        return None
    sim.retry_after_sent += 1
    seconds = config.retry_after_seconds
    if sim.retry_after_sent % 2:
        return {"Retry-After": str(seconds)}
    # HTTP-date has whole seconds: round up so the client never waits less than asked.
    return {"Retry-After": formatdate(int(time.time()) + seconds + 1, usegmt=True)}


def parse_authorization(header: str) -> dict[str, str]:
    """`User a, Organization b, Element c` (any order) → {"user": "a", ...}."""
    parts: dict[str, str] = {}
    for piece in header.split(","):
        kind, _, value = piece.strip().partition(" ")
        if kind and value.strip():
            parts[kind.lower()] = value.strip()
    return parts


def space_of(request: web.Request) -> str:
    """The job space a request works in: its Element token's (each connector instance
    sees only its own jobs), kept as a digest, never the token."""
    element = parse_authorization(request.headers.get("Authorization", "")).get("element", "")
    return token_space(element)


def token_space(element_token: str) -> str:
    """The job space of an Element token."""
    return hashlib.sha256(element_token.encode()).hexdigest()[:16]


def auth_problem(request: web.Request, config: SimConfig) -> str | None:
    """Why the request is not authorized, or None. Never includes the secrets."""
    if config.auth_broken:
        return "Invalid credentials: the organization or user secret is no longer valid"
    parts = parse_authorization(request.headers.get("Authorization", ""))
    user, element = parts.get("user"), parts.get("element")
    if not user or not element:
        return "The Authorization header must carry 'User <secret>' and 'Element <token>'"
    if config.user_secret is not None and not _same(user, config.user_secret):
        return "Invalid user secret"
    if config.element_token is not None and not _same(element, config.element_token):
        return "Invalid element token"
    if any(_same(element, refused) for refused in config.refused_tokens):
        return "Invalid element token: it has been revoked"
    return None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
