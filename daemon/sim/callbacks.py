"""Completion callbacks: the signed POST the sim makes once a job is terminal."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import aiohttp
import structlog

log = structlog.get_logger("daemon.sim")

SIGNATURE_HEADER = "Elements-Webhook-Signature"
CALLBACK_TIMEOUT = aiohttp.ClientTimeout(total=10)


def sign(key: str, body: bytes) -> str:
    """`sha256=<standard base64 of HMAC-SHA256(key, body)>`, the header value."""
    digest = hmac.new(key.encode(), body, hashlib.sha256).digest()
    return "sha256=" + base64.b64encode(digest).decode("ascii")


async def post_callback(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict[str, Any],
    signature_key: str | None,
    job_id: str,
) -> bool:
    """POST `payload` as JSON to `url`; True on a 2xx answer. Failures are only logged."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if signature_key:
        headers[SIGNATURE_HEADER] = sign(signature_key, body)
    try:
        async with session.post(
            url, data=body, headers=headers, timeout=CALLBACK_TIMEOUT
        ) as response:
            await response.read()
            if response.status < 300:
                log.info("sim.callback_sent", job_id=job_id, http_status=response.status)
                return True
            log.warning("sim.callback_rejected", job_id=job_id, http_status=response.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("sim.callback_failed", job_id=job_id, error=repr(exc))
    return False
