"""Notifications of finished files, delivered at least once: each is recorded in the
ledger in the commit that files its file (:meth:`Ledger.mark_finishing`), then sent from
there by :class:`Outbox`, tried again with backoff until it is answered 2xx, refused
for good (a 4xx but 408 and 429), or ``[notify] retry_deadline_seconds`` has passed.
The queue is the ledger: a dead endpoint grows nothing in memory, a restart resumes it,
and sending never holds up filing or uploads.

A body is JSON (the result, without the full error list, plus ``instance``, ``file``,
``dest`` and ``sent_at``) or a Slack incoming-webhook message; with a signature key it
is signed: ``X-Bulkdrop-Signature: sha256=<base64 HMAC-SHA256 of the raw body>``, the
send time in ``X-Bulkdrop-Timestamp`` and in the body's ``sent_at``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from daemon.client import api_message
from daemon.ledger import Ledger, utcnow
from daemon.logs import get_logger
from daemon.metrics import Metrics
from daemon.retry import parse_retry_after
from daemon.settings import NotifySettings, NotifyTarget
from daemon.watcher import first_of

log = get_logger()
SIGNATURE_HEADER = "X-Bulkdrop-Signature"
TIMESTAMP_HEADER = "X-Bulkdrop-Timestamp"
BATCH = 50              # notifications taken from the ledger at a time
SENDING = 4             # sent at once
TIMEOUT_SECONDS = 30.0  # one attempt
RETRY_CAP = 600.0       # seconds between attempts, at most
SLACK_ERRORS = 5        # errors listed in a Slack message
FINAL_4XX = frozenset(range(400, 500)) - {408, 429}


def event_of(result: Mapping[str, Any]) -> str:
    """What a target's ``on`` names: the status, or "partial" for a file completed with
    some records failed."""
    return "partial" if result["status"] == "COMPLETE" and result.get("partial") else str(
        result["status"])


def recorded(settings: NotifySettings, result: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(target, event, payload) for each target that wants to hear of *result*."""
    event = event_of(result)
    wanted = [t for t in settings.targets
              if t.wants(event, result.get("instance"), result.get("object"))]
    if not wanted:
        return []
    payload = json.dumps({k: v for k, v in result.items() if k != "errors_all"})
    return [(t.name, event, payload) for t in wanted]


def body_of(target: NotifyTarget, payload: Mapping[str, Any], dest: str | None,
            event: str, sent_at: str) -> bytes:
    if target.format == "slack":
        return json.dumps(_slack(payload, dest, event, sent_at)).encode()
    return json.dumps({**payload, "event": event, "dest": dest, "sent_at": sent_at},
                      ensure_ascii=False).encode()


def _slack(payload: Mapping[str, Any], dest: str | None, event: str,
           sent_at: str) -> dict[str, Any]:
    records = payload.get("records") or {}
    counts = (f"{records.get('total')} records, {records.get('failed')} failed"
              if records.get("total") is not None else "no records counted")
    lines = [f"*{event}*: `{payload.get('file')}` ({payload.get('instance') or 'no instance'}"
             f" / {payload.get('object') or 'no object'})",
             f"{payload.get('reason')}", f"{counts}; filed as `{dest}`"]
    for error in list(payload.get("errors") or [])[:SLACK_ERRORS]:
        message = error.get("message") if isinstance(error, dict) else None
        lines.append(f"• {message or json.dumps(error)[:200]}")
    return {"text": "\n".join(lines), "sent_at": sent_at}


def request_of(target: NotifyTarget, payload: Mapping[str, Any], dest: str | None,
               event: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one notification, signed as of now."""
    sent_at = utcnow()
    body = body_of(target, payload, dest, event, sent_at)
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: sent_at,
               "User-Agent": "bulkdrop"}
    if target.signature_key:
        headers[SIGNATURE_HEADER] = signed(target.signature_key.reveal(), body)
    return body, headers


def signed(key: str, body: bytes) -> str:
    return "sha256=" + base64.b64encode(
        hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()


class Outbox:
    """Sends what the ledger holds for sending, until each is answered or given up."""

    def __init__(self, settings: NotifySettings, ledger: Ledger, metrics: Metrics) -> None:
        self.settings = settings
        self.targets = {t.name: t for t in settings.targets}
        self.ledger = ledger
        self.metrics = metrics
        self.pending = 0
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    def wake(self) -> None:
        """Something was recorded: look now."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=TIMEOUT_SECONDS))
        try:
            while not stop.is_set():
                self._wake.clear()
                due = await self.ledger.due_notifications(utcnow(), BATCH)
                await self._send_all(due)
                if len(due) == BATCH:
                    continue
                next_at, self.pending = await self.ledger.next_notification_at()
                wait = 3600.0 if next_at is None else max(
                    0.05, (datetime.fromisoformat(next_at) - datetime.now(UTC)).total_seconds())
                await first_of(self._wake.wait(), stop.wait(), limit=wait)
        finally:
            await self._session.close()

    async def _send_all(self, due: Sequence[dict[str, Any]]) -> None:
        gate = asyncio.Semaphore(SENDING)

        async def one(row: dict[str, Any]) -> None:
            async with gate:
                await self._send(row)

        await asyncio.gather(*(one(row) for row in due))

    async def _send(self, row: dict[str, Any]) -> None:
        claim_id, name, attempts = row["claim_id"], row["target"], row["attempts"] + 1
        target = self.targets.get(name)
        flog = log.bind(target=name, claim_id=claim_id)
        if target is None:
            await self.ledger.notification_done(claim_id, name, "GAVE_UP", attempts - 1,
                                                "the target is no longer configured")
            flog.warning("notify.gave_up", reason="the target is no longer configured")
            return
        payload = json.loads(row["payload"])
        body, headers = request_of(target, payload, row["dest_path"], row["event"])
        assert self._session is not None
        retry_after = None
        try:
            async with self._session.post(target.url, data=body, headers=headers) as resp:
                answer = await resp.read()
                status: int | None = resp.status
                error = None if resp.status < 300 else api_message(resp.status, answer)
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, error = None, f"{type(exc).__name__}: {exc}" if str(exc) else type(
                exc).__name__
        if status is not None and 200 <= status < 300:
            await self.ledger.notification_done(claim_id, name, "SENT", attempts, None)
            self.metrics.notifications.labels(name, "sent").inc()
            flog.info("notify.sent", file=payload.get("file"), on=row["event"],
                      attempts=attempts, status=status)
            return
        assert error is not None
        age = (datetime.now(UTC) - datetime.fromisoformat(row["created_at"])).total_seconds()
        if status in FINAL_4XX or age >= self.settings.retry_deadline_seconds:
            await self.ledger.notification_done(claim_id, name, "GAVE_UP", attempts, error)
            self.metrics.notifications.labels(name, "gave_up").inc()
            flog.error("notify.gave_up", file=payload.get("file"), status=status, error=error,
                       attempts=attempts, note="refused for good" if status in FINAL_4XX
                       else f"no answer but errors for {age:.0f} s")
            return
        delay = random.uniform(0, min(RETRY_CAP, 2.0 ** attempts)) + 0.5
        delay = max(delay, retry_after or 0.0)
        next_at = (datetime.now(UTC) + timedelta(seconds=delay)).isoformat(
            timespec="milliseconds")
        await self.ledger.notification_later(claim_id, name, attempts, next_at, error)
        self.metrics.notifications.labels(name, "retry").inc()
        flog.warning("notify.retry", file=payload.get("file"), status=status, error=error,
                     attempt=attempts, retry_in=round(delay, 2))

