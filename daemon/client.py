"""``OpenConnectorsClient``: the bulk API over one aiohttp session.

Each method makes one request and turns every failure into one of the typed errors
of :mod:`daemon.retry`; retrying is the caller's business (``RetryPolicy``), so a
request that must not be repeated blindly (creating a job) stays visible as such.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
from aiohttp import hdrs
from aiohttp.payload import AsyncIterablePayload, BytesPayload, Payload

from daemon.ratelimit import RateLimit
from daemon.retry import (
    ApiError,
    AuthError,
    RejectedError,
    TooLargeError,
    TransientError,
    parse_retry_after,
)
from daemon.settings import ApiSettings, Secret

T = TypeVar("T")
ERRORS_PAGE_SIZE = 200
# Error pages are followed until the API stops giving a token; this bounds a broken
# server that keeps sending one (200 x 5000 = a million error records).
MAX_ERROR_PAGES = 5000


def authorization(user: Secret, organization: Secret, element: Secret) -> str:
    parts = [(name, s.reveal()) for name, s in
             (("User", user), ("Organization", organization), ("Element", element))]
    return ", ".join(f"{name} {value}" for name, value in parts if value)


class _BodySent:
    """Calls *on_sent* once, when the whole body has been handed to the connection."""

    def __init__(self, on_sent: Callable[[], None]) -> None:
        self._on_sent: Callable[[], None] | None = on_sent

    def fire(self) -> None:
        if self._on_sent is not None:
            on_sent, self._on_sent = self._on_sent, None
            on_sent()


class _SentBytes(BytesPayload):
    """A body in memory that says when it has gone to the connection (in one write)."""

    def __init__(self, value: bytes, sent: _BodySent, **kwargs: Any) -> None:
        super().__init__(value, **kwargs)
        self._sent = sent

    async def write(self, writer: Any) -> None:
        await super().write(writer)
        self._sent.fire()

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        await super().write_with_length(writer, content_length)
        self._sent.fire()


class _Progress:
    """When an upload last handed a chunk to the connection."""

    def __init__(self) -> None:
        self.sending = True
        self.stamp()

    def stamp(self) -> None:
        self.last = time.monotonic()

    def idle(self) -> float:
        return time.monotonic() - self.last


@dataclass(frozen=True)
class CreatedJob:
    id: str
    status: str | None


def api_message(status: int, body: bytes) -> str:
    """The API's ``message`` (plus ``providerMessage``) from an error body, else a summary."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("message"):
        msg = str(data["message"])
        if data.get("providerMessage"):
            msg += f" ({data['providerMessage']})"
        return msg[:500]
    text = body.decode("utf-8", "replace").strip().replace("\n", " ")
    return f"HTTP {status}" + (f": {text[:200]}" if text else "")


# Answers that say the request was not acted on: "slow down", "not now".
NOT_ACTED_ON = frozenset({429, 503})
# A 429 to an upload, with no Retry-After, saying this is about the upload's size or
# duration (over 6 GB or 3,600 s), not the rate: resending it cannot help.
TOO_LARGE = re.compile(r"\b(upload|file|request|payload|body)\b.{0,40}\btoo (large|big)\b"
                       r"|took too long|\b6 ?GB\b|\b3,?600 ?s(econds)?\b", re.IGNORECASE)
ABOUT_RATE = re.compile(r"\brate\b|requests? per|\bquota\b|throttl|per (second|minute|hour)",
                        re.IGNORECASE)


def classify(status: int, body: bytes, headers: Mapping[str, str],
             endpoint: str = "") -> ApiError:
    message = api_message(status, body)
    if status in (401, 403):
        return AuthError(message, status)
    if (status == 429 and endpoint == "create_job" and not headers.get("Retry-After")
            and TOO_LARGE.search(message) and not ABOUT_RATE.search(message)):
        return TooLargeError(message, status)
    if status == 429 or status >= 500:
        return TransientError(message, status, parse_retry_after(headers.get("Retry-After")),
                              maybe_done=status not in NOT_ACTED_ON)
    return RejectedError(message, status)


class OpenConnectorsClient:
    def __init__(self, base_url: str, *, user_secret: Secret, organization_secret: Secret,
                 element_token: Secret, timeout_seconds: float = 300,
                 requests_per_second: int = 0) -> None:
        self.base_url = base_url.rstrip("/")
        self.rate = RateLimit(requests_per_second)  # every request passes it
        self._auth = authorization(user_secret, organization_secret, element_token)
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        # Told (endpoint, HTTP status or "error"/"timeout") after every request.
        self.on_answer: Callable[[str, int | str], None] = lambda endpoint, code: None

    @classmethod
    def from_settings(cls, api: ApiSettings, timeout_cap: float | None = None
                      ) -> OpenConnectorsClient:
        """A client for ``[api]``; *timeout_cap* shortens requests for interactive commands."""
        timeout = api.request_timeout_seconds
        return cls(api.base_url, user_secret=api.user_secret,
                   organization_secret=api.organization_secret,
                   element_token=api.element_token,
                   timeout_seconds=min(timeout, timeout_cap) if timeout_cap else timeout,
                   requests_per_second=api.requests_per_second)

    async def once(self, call: Callable[[OpenConnectorsClient], Awaitable[T]]) -> T:
        """Run one call and close the session: for the command line."""
        try:
            return await call(self)
        finally:
            await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, endpoint: str, method: str, path: str,
                       **kwargs: Any) -> tuple[Any, Mapping[str, str]]:
        headers = {"Authorization": self._auth, "Accept": "application/json",
                   **kwargs.pop("headers", {})}
        async with self.rate.request():  # every request, answered or not
            try:
                async with self.session.request(method, self.base_url + path, headers=headers,
                                                **kwargs) as resp:
                    body = await resp.read()
                    self.on_answer(endpoint, resp.status)
                    if resp.status >= 400:
                        raise classify(resp.status, body, resp.headers, endpoint)
                    try:
                        return (json.loads(body) if body else None), resp.headers
                    except ValueError:
                        # Not retried: for an upload the API may well have made the job.
                        raise ApiError(f"HTTP {resp.status}: the answer is not JSON",
                                       resp.status) from None
            except TimeoutError:
                self.on_answer(endpoint, "timeout")
                raise TransientError(f"{method} timed out", maybe_done=True) from None
            except aiohttp.ClientError as exc:
                self.on_answer(endpoint, "error")
                # The exception text may carry the URL but never our headers. A request that
                # never connected cannot have been acted on; one cut off later may have been.
                raise TransientError(f"{type(exc).__name__}: {exc}",
                                     maybe_done=not isinstance(exc, aiohttp.ClientConnectorError)
                                     ) from None

    async def create_job(self, hub: str, obj: str, name: str,
                         body: bytes | Callable[[], AsyncIterator[bytes]], *,
                         metadata: Mapping[str, Any] | None = None,
                         callback_url: str = "",
                         on_sent: Callable[[], None] | None = None,
                         content_type: str = "text/csv") -> CreatedJob:
        """POST one bulk job, the file as multipart field ``file``: *body* is the bytes of
        a small file, or makes a stream of a larger one's chunks. *on_sent* is called once
        the whole body has gone to the connection: from then on the API may act on it.
        *content_type* is the file part's (``application/json`` for JSON lines).

        A large file may take longer than ``request_timeout_seconds`` to send, so a
        streamed upload is not bounded in total: it fails when it makes no progress for
        that long (or the answer does not come that long after the last byte).
        """
        sent = _BodySent(on_sent or (lambda: None))
        progress = None
        payload: Payload
        if isinstance(body, bytes):
            payload = BytesPayload(body, content_type=content_type)
        else:
            make, progress = body, _Progress()

            async def watched(progress: _Progress) -> AsyncIterator[bytes]:
                async for chunk in make():
                    progress.stamp()
                    yield chunk
                progress.sending = False
                sent.fire()

            payload = AsyncIterablePayload(watched(progress), content_type=content_type)
        with aiohttp.MultipartWriter("form-data") as form:
            form.append_payload(_form_field(payload, "file", filename=name))
            if metadata is not None:
                # A plain form field, as `curl -F 'metaData={...}'` sends it: no type.
                form.append_payload(_form_field(
                    BytesPayload(json.dumps(dict(metadata)).encode()), "metaData"))
        headers = {"Elements-Async-Callback-Url": callback_url} if callback_url else {}
        path = f"/hubs/{quote(hub, safe='')}/bulk/{quote(obj, safe='')}"
        if progress is None:
            # A small file: the whole request leaves in one write (headers and body), and
            # is bounded like any other request.
            whole = _SentBytes(await form.as_bytes(), sent, content_type=form.content_type)
            data, _ = await self._request("create_job", "POST", path, params={"path": "/" + name},
                                          data=whole, headers=headers)
            return _created(data)
        limit = self._timeout.total or 300.0
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=limit, sock_read=limit)
        request = asyncio.ensure_future(self._request(
            "create_job", "POST", path, params={"path": "/" + name}, data=form,
            headers=headers, timeout=timeout))
        try:
            while not (await asyncio.wait({request}, timeout=min(limit, 5.0)))[0]:
                if progress.sending and progress.idle() > limit:
                    request.cancel()
                    await asyncio.gather(request, return_exceptions=True)
                    raise TransientError(f"upload made no progress for {limit:g} s")
        finally:
            if not request.done():  # cancelled from outside: take the request with us
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)
        data, _ = request.result()
        return _created(data)

    async def job_status(self, hub: str, job_id: str) -> dict[str, Any]:
        data, _ = await self._request(
            "status", "GET", f"/hubs/{quote(hub, safe='')}/bulk/{quote(job_id, safe='')}/status")
        if not isinstance(data, dict):
            raise TransientError("status response is not a JSON object")
        return data

    async def job_errors_page(self, hub: str, job_id: str, token: str | None,
                              page_size: int = ERRORS_PAGE_SIZE) -> tuple[list[Any], str | None]:
        params: dict[str, str | int] = {"pageSize": page_size}
        if token:
            params["nextPage"] = token
        data, headers = await self._request(
            "errors", "GET", f"/hubs/{quote(hub, safe='')}/bulk/{quote(job_id, safe='')}/errors",
            params=params)
        if not isinstance(data, list):  # not a count of nothing: say it could not be read
            raise ApiError(f"the error records are not a JSON array ({type(data).__name__})")
        return data, headers.get("Elements-Next-Page-Token") or None

    async def objects(self, hub: str) -> list[str]:
        data, _ = await self._request("objects", "GET", f"/hubs/{quote(hub, safe='')}/objects")
        return [str(x) for x in data] if isinstance(data, list) else []

    async def object_fields(self, hub: str, obj: str) -> list[str]:
        """Field names of *obj* (``vendorPath`` of ``GET /objects/{obj}/metadata``)."""
        data, _ = await self._request(
            "metadata", "GET",
            f"/hubs/{quote(hub, safe='')}/objects/{quote(obj, safe='')}/metadata")
        fields = data.get("fields") if isinstance(data, dict) else None
        return [str(f["vendorPath"]) for f in fields or []
                if isinstance(f, dict) and f.get("vendorPath")]

    async def cancel_job(self, hub: str, job_id: str) -> None:
        await self._request(
            "cancel", "PUT", f"/hubs/{quote(hub, safe='')}/bulk/{quote(job_id, safe='')}/cancel")


def _form_field(payload: Payload, name: str, filename: str | None = None) -> Payload:
    """*payload* as a form field with the part headers curl writes, in its order:
    ``Content-Disposition``, then ``Content-Type`` only for a file."""
    content_type = payload.headers.pop(hdrs.CONTENT_TYPE)
    if filename is None:
        payload.set_content_disposition("form-data", name=name)
    else:
        payload.set_content_disposition("form-data", name=name, filename=filename)
        payload.headers[hdrs.CONTENT_TYPE] = content_type
    return payload


def _created(data: Any) -> CreatedJob:
    if not isinstance(data, dict) or data.get("id") in (None, ""):
        raise ApiError("the API accepted the upload but returned no job id")
    status = data.get("status")
    return CreatedJob(str(data["id"]), str(status) if status is not None else None)
