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
from urllib.parse import urlsplit

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
ANSWER_BYTES = 4096     # of an answer read, at most (only its message is wanted)


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
    e = _slack_escaped
    lines = [f"*{event}*: `{e(payload.get('file'))}` "
             f"({e(payload.get('instance') or 'no instance')}"
             f" / {e(payload.get('object') or 'no object')})",
             e(payload.get("reason"), 500), f"{counts}; filed as `{e(dest)}`"]
    for error in list(payload.get("errors") or [])[:SLACK_ERRORS]:
        message = error.get("message") if isinstance(error, dict) else None
        lines.append(f"• {e(message or json.dumps(error), 200)}")
    return {"text": "\n".join(lines), "sent_at": sent_at}


def _slack_escaped(value: object, limit: int = 300) -> str:
    """Text as Slack shows it literally (no <!channel>, no links made of a file name)."""
    text = str(value)
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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
                try:
                    due = await self.ledger.due_notifications(utcnow(), BATCH)
                    await self._send_all(due)
                    next_at, self.pending = await self.ledger.next_notification_at()
                except Exception as exc:  # noqa: BLE001 - a bug: keep going, slowly
                    log.error("notify.error", error=repr(exc), exc_info=exc, retry_in=5)
                    await first_of(stop.wait(), limit=5.0)
                    continue
                if len(due) == BATCH:
                    continue
                wait = 3600.0 if next_at is None else max(
                    0.05, (datetime.fromisoformat(next_at) - datetime.now(UTC)).total_seconds())
                await first_of(self._wake.wait(), stop.wait(), limit=wait)
        finally:
            await self._session.close()

    async def _send_all(self, due: Sequence[dict[str, Any]]) -> None:
        gate = asyncio.Semaphore(SENDING)
        failing: set[str] = set()  # a target that failed now: its other rows wait a pass

        async def one(row: dict[str, Any]) -> None:
            async with gate:
                if row["target"] in failing:
                    return
                try:
                    sent = await self._send(row)
                except Exception as exc:  # noqa: BLE001 - a bug must not stop the others
                    log.error("notify.error", target=row["target"], claim_id=row["claim_id"],
                              error=repr(exc), exc_info=exc)
                    sent = await self._later(row, row["attempts"] + 1, repr(exc), None)
                if not sent:
                    failing.add(row["target"])

        await asyncio.gather(*(one(row) for row in due))

    async def _send(self, row: dict[str, Any]) -> bool:
        """One attempt at one notification; False when it must be tried again."""
        claim_id, name, attempts = row["claim_id"], row["target"], row["attempts"] + 1
        target = self.targets.get(name)
        if target is None:
            await self._give_up(row, attempts - 1, "the target is no longer configured", None)
            return True
        payload = json.loads(row["payload"])
        body, headers = request_of(target, payload, row["dest_path"], row["event"])
        assert self._session is not None
        retry_after = None
        try:  # a redirect is not followed: a POST turned GET would pass for delivered
            async with self._session.post(target.url, data=body, headers=headers,
                                          allow_redirects=False) as resp:
                answer = await resp.content.read(ANSWER_BYTES)
                status: int | None = resp.status
                error = None if resp.status < 300 else api_message(resp.status, answer)
                if 300 <= resp.status < 400:
                    error = (f"HTTP {resp.status}: redirected to "
                             f"{_origin(resp.headers.get('Location', '?'))}; give the URL "
                             "it ends at")
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            status, error = None, _redacted(f"{type(exc).__name__}: {exc}", target.url)
        if status is not None and 200 <= status < 300:
            await self.ledger.notification_done(claim_id, name, "SENT", attempts, None)
            self.metrics.notifications.labels(name, "sent").inc()
            log.info("notify.sent", target=name, claim_id=claim_id, file=payload.get("file"),
                     on=row["event"], attempts=attempts, status=status)
            return True
        assert error is not None
        if status is not None and (status in FINAL_4XX or 300 <= status < 400):
            await self._give_up(row, attempts, error, status)
            return True
        return await self._later(row, attempts, error, status, retry_after)

    async def _later(self, row: dict[str, Any], attempts: int, error: str, status: int | None,
                     retry_after: float | None = None) -> bool:
        """Try again after a backoff, unless the deadline has passed (then give up)."""
        age = (datetime.now(UTC) - datetime.fromisoformat(row["created_at"])).total_seconds()
        left = self.settings.retry_deadline_seconds - age
        if left <= 0:
            await self._give_up(row, attempts, error, status)
            return False
        delay = random.uniform(0, min(RETRY_CAP, 2.0 ** min(attempts, 20))) + 0.5
        delay = min(max(delay, retry_after or 0.0), left + 0.5)
        next_at = (datetime.now(UTC) + timedelta(seconds=delay)).isoformat(
            timespec="milliseconds")
        name = row["target"]
        await self.ledger.notification_later(row["claim_id"], name, attempts, next_at, error)
        self.metrics.notifications.labels(name, "retry").inc()
        log.warning("notify.retry", target=name, claim_id=row["claim_id"], status=status,
                    error=error, attempt=attempts, retry_in=round(delay, 2))
        return False

    async def _give_up(self, row: dict[str, Any], attempts: int, error: str,
                       status: int | None) -> None:
        name = row["target"]
        await self.ledger.notification_done(row["claim_id"], name, "GAVE_UP", attempts, error)
        self.metrics.notifications.labels(name, "gave_up").inc()
        final = status is not None and (status in FINAL_4XX or 300 <= status < 400)
        log.error("notify.gave_up", target=name, claim_id=row["claim_id"], status=status,
                  error=error, attempts=attempts,
                  note="refused for good" if final else
                  "the target is gone" if name not in self.targets else
                  f"no delivery within retry_deadline_seconds "
                  f"({self.settings.retry_deadline_seconds:g} s)")


def _origin(url: str) -> str:
    """scheme://host[:port] of *url*: a webhook URL's path may hold its secret (Slack's)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "?"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.netloc else "?"


def _redacted(text: str, url: str) -> str:
    return text.replace(url, _origin(url) + "/…") if url else text

