"""The web view on the daemon's listener: ``GET /`` (each instance, today's counts, what
waits and runs, the latest files, a chart of the last hour), ``GET /files/<claim id>``
(one file's story, its errors, its sidecars to download), the JSON API the page reads
(``/api/status``, ``/api/files``), and, with ``[http] actions = true`` only, two POST
actions (retry a failed file, send its failed rows again) guarded by a CSRF token.

Pages are rendered here, escaped, readable without JavaScript; ``webui/view.js`` keeps
``/`` current from the JSON API every 2 s. No path from a request reaches the file
system: a file is found by its claim id in the ledger, and its sidecars by the
destination the ledger recorded (below done/ or failed/ only), opened without following
a link. Every ledger query is bounded; what ``/`` shows is made at most once a second,
however many people watch.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode

from aiohttp import web

from daemon.failedrows import failed_suffix
from daemon.folders import open_dirs
from daemon.http_server import REQUEST_SECONDS
from daemon.ledger import LedgerView, ViewBusy
from daemon.placing import ERRORS_SUFFIX, RESULT_SUFFIX
from daemon.results import COMPLETE, FAILED, REJECTED, flatten
from daemon.spool import Spool

CLAIM_ID = r"[0-9a-f]{20}"
PAGE_FILES = 100          # the latest files on /, and a page of /api/files by default
MAX_PAGE = 500
ERRORS_SHOWN = 100
DOWNLOADS = 4             # sidecar downloads at once
DOWNLOAD_CHUNK = 1 << 16
RESULT_READ_BYTES = 4 << 20  # a result is read to check a file is still the row's
STATUS_TTL = 1.0          # seconds what / shows is reused
TOKEN_SECONDS = 3600      # how long an action's form stays good
OUTCOMES = (COMPLETE, FAILED, REJECTED)
HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; "
                                      "style-src 'self'; img-src 'self'; connect-src 'self'; "
                                      "form-action 'self'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
           "Cache-Control": "no-store"}


@dataclass(frozen=True)
class Live:
    """What the daemon knows in memory, now."""
    instances: Mapping[str, str]          # name -> "ready" or why not
    waiting: int                          # files in inbox/ at the last scan
    oldest_seconds: float | None          # how long the oldest of them has waited
    uploads: int                          # uploads in flight
    following: Sequence[Mapping[str, Any]]  # jobs being followed


@dataclass(frozen=True)
class ViewHost:
    """What the view needs of the daemon, and no more."""
    ledger: LedgerView
    spool: Spool
    live: Callable[[], Live]
    actions: bool
    retry: Callable[[Path], Path]             # a file in failed/ back into inbox/
    retry_failed_rows: Callable[[Path], Path]  # its failed rows into inbox/


VIEW: web.AppKey[View] = web.AppKey("view")
# The page's stylesheet and script (a few KiB): read once, at import, like the code (a
# daemon that gives up root after loading reads nothing from its package later).
STATIC = {name: resources.files("daemon").joinpath("webui", name).read_bytes()
          for name in ("view.css", "view.js")}


def add_routes(app: web.Application, host: ViewHost) -> None:
    view = View(host)
    app[VIEW] = view
    app.router.add_get("/", view.index)
    app.router.add_get("/api/status", view.api_status)
    app.router.add_get("/api/files", view.api_files)
    app.router.add_get(f"/files/{{claim_id:{CLAIM_ID}}}", view.file_page)
    app.router.add_get(
        f"/files/{{claim_id:{CLAIM_ID}}}/{{sidecar:errors\\.csv|failed\\.csv|failed\\.jsonl}}",
        view.sidecar)
    app.router.add_get("/static/{name:view\\.(css|js)}", view.static)
    if host.actions:  # with actions off, no route changes anything
        app.router.add_post(f"/files/{{claim_id:{CLAIM_ID}}}/{{action:retry|failed-rows}}",
                            view.act)


class View:
    def __init__(self, host: ViewHost) -> None:
        self.host = host
        self._key = secrets.token_bytes(32)  # signs action forms; new at every start
        self._used: dict[str, float] = {}    # tokens pressed, until they expire
        self._status: tuple[float, dict[str, Any]] | None = None
        self._making: asyncio.Task[dict[str, Any]] | None = None
        self._downloads = asyncio.Semaphore(DOWNLOADS)

    # -- data --------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """What / shows but the files, made at most once per :data:`STATUS_TTL`."""
        now = time.monotonic()
        if self._status is not None and now - self._status[0] < STATUS_TTL:
            return self._status[1]
        if self._making is None or self._making.done():  # one query at a time
            self._making = asyncio.ensure_future(self._make_status())
        made = await asyncio.shield(self._making)
        self._status = (time.monotonic(), made)
        return made

    async def _make_status(self) -> dict[str, Any]:
        live = self.host.live()
        now = datetime.now(UTC)
        midnight = _local_midnight(now)
        hour_ago = (now - timedelta(minutes=59)).replace(second=0, microsecond=0)
        counts, minutes = await asyncio.gather(
            self.host.ledger.counts_since(_stamp(midnight)),
            self.host.ledger.minutes_since(_stamp(hour_ago)))
        today = {"COMPLETE": 0, "partial": 0, "FAILED": 0, "REJECTED": 0}
        for row in counts:
            key = "partial" if row["outcome"] == COMPLETE and row["some_failed"] else row["outcome"]
            if key in today:
                today[key] += row["n"]
        per_minute = {r["minute"]: r for r in minutes}
        chart = []
        for i in range(60):
            minute = (hour_ago + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M")
            row = per_minute.get(minute, {})
            chart.append({"minute": minute, "files": row.get("files", 0),
                          "records_failed": row.get("records_failed", 0)})
        return {"generated_at": _stamp(now), "instances": dict(live.instances),
                "ready": all(v == "ready" for v in live.instances.values()),
                "today": today, "since": _stamp(midnight),
                "inbox": {"waiting": live.waiting,
                          "oldest_seconds": None if live.oldest_seconds is None
                          else round(live.oldest_seconds)},
                "uploads_in_flight": live.uploads,
                "following": [{**f, "age_seconds": _age(f["submitted_at"], now)}
                              for f in sorted(live.following,
                                              key=lambda f: f["submitted_at"])[:500]],
                "following_total": len(live.following),
                "per_minute": chart}

    async def files(self, query: Mapping[str, str]) -> dict[str, Any]:
        """A page of finished files, newest first, filtered; ``next`` pages on."""
        limit = _int(query.get("limit"), PAGE_FILES, 1, MAX_PAGE)
        status = query.get("status") or None
        if status is not None and status not in (*OUTCOMES, "partial"):
            raise web.HTTPBadRequest(text=f"status must be one of {', '.join(OUTCOMES)} "
                                          "or partial")
        before = _cursor(query.get("before"))
        rows = await self.host.ledger.finished(
            limit + 1, before, status, query.get("object") or None,
            query.get("instance") or None)
        more = len(rows) > limit
        rows = rows[:limit]
        files = [_file_summary(r) for r in rows]
        return {"files": files,
                "next": f"{rows[-1]['finished_at']}|{rows[-1]['claim_id']}" if more else None}

    # -- pages -------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        status, page = await asyncio.gather(self.status(), self.files(request.query))
        return _html(render_index(status, page, dict(request.query)))

    async def api_status(self, request: web.Request) -> web.Response:
        return web.json_response(await self.status(), headers=HEADERS)

    async def api_files(self, request: web.Request) -> web.Response:
        return web.json_response(await self.files(request.query), headers=HEADERS)

    async def file_page(self, request: web.Request) -> web.Response:
        claim_id = request.match_info["claim_id"]
        row = await self._row(claim_id)
        story = await self._story(row)
        done = request.query.get("done")
        note = {"retry": "Moved back into inbox/: it is claimed again as a new file.",
                "failed-rows": "Its failed rows were dropped into inbox/ as a new file."}
        return _html(render_file(story, self._forms(story), note.get(done or "")))

    async def sidecar(self, request: web.Request) -> web.StreamResponse:
        claim_id, which = request.match_info["claim_id"], request.match_info["sidecar"]
        row = await self._row(claim_id)
        suffix = ERRORS_SUFFIX if which == "errors.csv" else failed_suffix(row["rel_path"])
        spool = self.host.spool
        fh = None
        if suffix.endswith(which) and await asyncio.to_thread(_placed, spool, row):
            fh = await asyncio.to_thread(open_filed, spool, row["dest_path"], suffix)
        if fh is None:
            raise web.HTTPNotFound(text=f"this file has no {which}")
        kind = "application/x-ndjson" if suffix.endswith(".jsonl") else "text/csv"
        try:
            async with self._downloads:  # a few at once: each may be as large as a file
                response = web.StreamResponse(headers={
                    **HEADERS, "Content-Type": f"{kind}; charset=utf-8",
                    "Content-Disposition": _attachment(Path(row["rel_path"]).name + suffix)})
                await response.prepare(request)
                while chunk := await asyncio.to_thread(fh.read, DOWNLOAD_CHUNK):
                    await response.write(chunk)
                await response.write_eof()
                return response
        finally:
            fh.close()

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]  # view.css or view.js, nothing else matches
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return web.Response(body=STATIC[name], content_type=kind, charset="utf-8",
                            headers={**HEADERS, "Cache-Control": "max-age=300"})

    async def act(self, request: web.Request) -> web.Response:
        claim_id, action = request.match_info["claim_id"], request.match_info["action"]
        if not _same_origin(request):
            raise web.HTTPForbidden(text="a form from another site")
        try:
            async with asyncio.timeout(REQUEST_SECONDS):
                form = await request.post()
        except TimeoutError:
            raise web.HTTPRequestTimeout(text="the form was not sent in time") from None
        token = form.get("csrf")
        if not isinstance(token, str) or not self._token_ok(token, claim_id, action):
            raise web.HTTPForbidden(text="the form is stale, used already or not ours: "
                                         "open the file's page again and press the button "
                                         "there")
        self._spend(token)
        row = await self._row(claim_id)
        story = await self._story(row)
        if action not in self._forms(story):
            raise web.HTTPConflict(text=f"nothing to {action.replace('-', ' ')} for this file")
        path = self.host.spool.filed_from_stored(row["dest_path"] or "")
        assert path is not None  # _forms offers actions only for a file in its place
        act = self.host.retry if action == "retry" else self.host.retry_failed_rows
        try:
            await asyncio.to_thread(act, path)
        except (OSError, ValueError) as exc:
            raise web.HTTPConflict(text=f"cannot {action.replace('-', ' ')}: {exc}") from exc
        raise web.HTTPSeeOther(f"/files/{claim_id}?{urlencode({'done': action})}")

    # -- helpers -----------------------------------------------------------------------

    async def _row(self, claim_id: str) -> dict[str, Any]:
        row = await self.host.ledger.file(claim_id)
        if row is None:
            raise web.HTTPNotFound(text=f"no file {claim_id} in the ledger")
        return row

    async def _story(self, row: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if row.get("result_json"):  # without errors_all (it can be large): see errors()
            result = await asyncio.to_thread(json.loads, row["result_json"])
        parts = await self.host.ledger.parts(row["claim_id"])
        errors = await self.host.ledger.errors(row["claim_id"], ERRORS_SHOWN)
        spool = self.host.spool
        placed = await asyncio.to_thread(_placed, spool, row)
        sidecars = {}
        for name, suffix in (("errors", ERRORS_SUFFIX),
                             ("failed", failed_suffix(row["rel_path"]))):
            sidecars[name] = placed and await asyncio.to_thread(
                _is_filed, spool, row["dest_path"], suffix)
        return {**_file_summary(row), "state": row["state"], "hub": row.get("hub"),
                "submitted_at": row.get("submitted_at"),
                "dest": row.get("dest_path"),
                "placed": placed,
                "csv": result.get("csv"), "json": result.get("json"),
                "jobs": result.get("jobs"), "parts": parts,
                "errors": [flatten(e) for e in errors],
                "errors_total": result.get("errors_total", len(errors)),
                "failed_rows": result.get("failed_rows"), "sidecars": sidecars}

    def _forms(self, story: dict[str, Any]) -> dict[str, str]:
        """The actions this file offers now, each with its form's token."""
        if not self.host.actions or not story["placed"]:
            return {}
        offered = []
        if story["status"] in (FAILED, REJECTED) and str(story["dest"]).startswith("failed/"):
            offered.append("retry")
        if story["sidecars"]["failed"]:
            offered.append("failed-rows")
        return {a: self._token(story["claim_id"], a) for a in offered}

    def _token(self, claim_id: str, action: str, issued: int | None = None) -> str:
        issued = int(time.time()) if issued is None else issued
        mac = hmac.new(self._key, f"{issued}:{claim_id}:{action}".encode(), hashlib.sha256)
        return f"{issued}.{mac.hexdigest()}"

    def _token_ok(self, token: str, claim_id: str, action: str) -> bool:
        issued, _, _mac = token.partition(".")
        if not re.fullmatch(r"[0-9]{1,12}", issued) or token in self._used:
            return False
        if time.time() - int(issued) > TOKEN_SECONDS:
            return False
        return hmac.compare_digest(token, self._token(claim_id, action, int(issued)))

    def _spend(self, token: str) -> None:
        """A token works once: a second press (a double click, a replay) is refused."""
        now = time.time()
        if len(self._used) > 1000:
            self._used = {t: until for t, until in self._used.items() if until > now}
        self._used[token] = now + TOKEN_SECONDS


# -- small helpers ------------------------------------------------------------------------

def _local_midnight(now: datetime) -> datetime:
    """Today's start where the daemon runs (right on days the clocks change too)."""
    local = now.astimezone().replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
    return local.astimezone()


def _stamp(when: datetime) -> str:
    """As the ledger writes times: UTC, ISO 8601, milliseconds."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds")


def _age(stamp: str | None, now: datetime) -> int | None:
    if not stamp:
        return None
    try:
        return max(0, round((now - datetime.fromisoformat(stamp)).total_seconds()))
    except ValueError:
        return None


def _int(raw: str | None, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"[0-9]{1,9}", raw) or not low <= int(raw) <= high:
        raise web.HTTPBadRequest(text=f"limit must be a whole number from {low} to {high}")
    return int(raw)


def _same_origin(request: web.Request) -> bool:
    """A browser says where a form comes from (``Origin``, ``Sec-Fetch-Site``): it must be
    this page's own site. (Without either, it is no browser: the token decides.)"""
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin in (f"http://{request.host}", f"https://{request.host}")
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")


def _host_name(host: str) -> str:
    """The name in a Host header: without its port, an IPv6 address without brackets."""
    host = host.lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.partition(":")[0] if host.count(":") == 1 else host


def allowed_hosts(listen_host: str, extra: str) -> frozenset[str]:
    """The names the view answers to: loopback, the listen address, ``[http] view_hosts``
    (so a page on another name, through DNS rebinding, gets nothing)."""
    names = {"localhost", "127.0.0.1", "::1", listen_host.strip("[]")}
    names.update(n.strip().lower() for n in extra.split(",") if n.strip())
    return frozenset(names - {"", "0.0.0.0", "::"})


def host_guard(allowed: frozenset[str]) -> Any:
    """Middleware: the view's routes answer only to the names *allowed* (the probes,
    /metrics and callbacks answer to any)."""

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        if not (path == "/" or path.startswith(("/files/", "/api/", "/static/"))):
            return await handler(request)
        if _host_name(request.host or "") not in allowed:
            raise web.HTTPMisdirectedRequest(
                text=f"the web view answers to {', '.join(sorted(allowed))} only: add "
                     "this name to [http] view_hosts")
        try:
            return await handler(request)
        except ViewBusy as exc:
            raise web.HTTPServiceUnavailable(text=f"busy: {exc}; try again shortly",
                                             headers={"Retry-After": "2"}) from None

    return guard


def _cursor(raw: str | None) -> tuple[str, str] | None:
    if not raw:
        return None
    stamp, sep, claim_id = raw.partition("|")
    if not sep or not re.fullmatch(CLAIM_ID, claim_id) or len(stamp) > 40:
        raise web.HTTPBadRequest(text="before must be a cursor from 'next'")
    return stamp, claim_id


def _file_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    failed = row.get("records_failed")
    return {"claim_id": row["claim_id"], "file": row["rel_path"],
            "instance": _instance(row.get("instance")), "object": row.get("object"),
            "status": row.get("outcome") or row.get("state"),
            "partial": row.get("outcome") == COMPLETE and bool(failed),
            "api_status": row.get("api_status"), "job_id": row.get("job_id"),
            "records": {"total": row.get("records_total"), "failed": failed},
            "reason": row.get("reason"), "received_at": row.get("received_at"),
            "finished_at": row.get("finished_at")}


def _instance(stored: str | None) -> str | None:
    return "default" if stored is None else (stored or None)


def open_filed(spool: Spool, stored: str | None, suffix: str = "") -> BinaryIO | None:
    """The file a ledger row says was filed (with *suffix*: a sidecar of it), opened
    through descriptors from done/ or failed/, no link anywhere below them followed;
    None unless it is a regular file there."""
    dest = spool.filed_from_stored(stored or "")
    if dest is None:
        return None
    base = spool.done if spool.done in dest.parents else spool.failed
    parts = dest.relative_to(base).parts
    try:
        folder = open_dirs(base, parts[:-1])
    except OSError:
        return None
    try:
        fd = os.open(parts[-1] + suffix,
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    except OSError:
        return None
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return open(fd, "rb")  # noqa: SIM115 - the caller closes it


def _is_filed(spool: Spool, stored: str | None, suffix: str = "") -> bool:
    fh = open_filed(spool, stored, suffix)
    if fh is None:
        return False
    fh.close()
    return True


def _placed(spool: Spool, row: Mapping[str, Any]) -> bool:
    """Is the file the row names still where it was filed? Its result there must be its
    own: a later file filed under the same name (after a retry) is not this one."""
    fh = open_filed(spool, row.get("dest_path"), RESULT_SUFFIX)
    if fh is None:
        return False
    try:
        with fh:
            result = json.loads(fh.read(RESULT_READ_BYTES))
    except (OSError, ValueError):
        return False
    return isinstance(result, dict) and result.get("file") == row["rel_path"] and (
        result.get("received_at") == row["received_at"])


def _attachment(name: str) -> str:
    ascii_name = re.sub(r'[^A-Za-z0-9._-]', "_", name)
    return f"attachment; filename=\"{ascii_name}\""


def _html(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/html", charset="utf-8", headers=HEADERS)


# -- rendering ----------------------------------------------------------------------------

def h(value: object) -> str:
    return html.escape("" if value is None else str(value))


def ago(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{h(title)}</title><link rel="stylesheet" href="/static/view.css">'
            f'</head><body>{body}</body></html>\n')


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], body_id: str = "") -> str:
    """A table; the cells of *rows* are HTML already (escaped by the caller)."""
    ths = "".join(f"<th>{h(c)}</th>" for c in head)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    tbody = f'<tbody id="{body_id}">' if body_id else "<tbody>"
    return f"<table><thead><tr>{ths}</tr></thead>{tbody}{trs}</tbody></table>"


def _status_badge(status: str | None, partial: bool = False) -> str:
    word = "partial" if partial else (status or "")
    return f'<span class="badge {h(word.lower())}">{h(word)}</span>'


def _file_link(claim_id: str, name: str) -> str:
    return f'<a href="/files/{h(claim_id)}">{h(name)}</a>'


def render_chart(per_minute: Sequence[Mapping[str, Any]]) -> str:
    """Files (bars) and records failed (red bars) per minute, as an inline SVG."""
    top = max([1, *(m["files"] for m in per_minute), *(m["records_failed"] for m in per_minute)])
    bars = []
    for i, m in enumerate(per_minute):
        for value, cls, dx in ((m["files"], "files", 0), (m["records_failed"], "failed", 2)):
            height = round(58 * value / top, 1)
            if value:
                bars.append(f'<rect class="{cls}" x="{i * 5 + dx}" y="{60 - height}" '
                            f'width="2" height="{height}"><title>{h(m["minute"])}: {value} '
                            f'{"files" if cls == "files" else "records failed"}</title></rect>')
    return (f'<svg id="chart" viewBox="0 0 300 60" preserveAspectRatio="none" role="img" '
            f'aria-label="files finished and records failed per minute, last hour; '
            f'highest {top}">{"".join(bars)}</svg>')


def render_index(status: Mapping[str, Any], page: Mapping[str, Any],
                 query: dict[str, str]) -> str:
    instances = "".join(
        f'<li><b>{h(name)}</b> <span class="{"ok" if state == "ready" else "bad"}">'
        f'{h(state)}</span></li>' for name, state in status["instances"].items())
    today = status["today"]
    counts = "".join(f'<div class="count {k.lower()}"><b id="today-{k.lower()}">{today[k]}</b>'
                     f'<span>{h(k)}</span></div>' for k in today)
    inbox = status["inbox"]
    oldest = (f", oldest waiting {ago(inbox['oldest_seconds'])}"
              if inbox["oldest_seconds"] is not None and inbox["waiting"] else "")
    following = _table(
        ("file", "instance", "object", "job", "API status", "age"),
        ([_file_link(f["claim_id"], f["file"]), h(f["instance"]), h(f["object"]),
          h(f["job_id"]), h(f["api_status"] or "…"), ago(f["age_seconds"])]
         for f in status["following"]), "following")
    latest = _table(
        ("finished", "file", "instance", "status", "records", "failed"),
        ([h((f["finished_at"] or "")[:19].replace("T", " ")),
          _file_link(f["claim_id"], f["file"]), h(f["instance"]),
          _status_badge(f["status"], f["partial"]), h(f["records"]["total"]),
          h(f["records"]["failed"])] for f in page["files"]), "latest")
    older = ""
    if page["next"]:
        older = (f'<p><a id="older" href="/?{h(urlencode({**query, "before": page["next"]}))}">'
                 "older files →</a></p>")
    first_page = "before" not in query
    as_of = h(status["generated_at"][:19].replace("T", " "))
    total = status["following_total"]
    return _page("bulkdrop", f"""
<header><h1>bulkdrop</h1><p id="updated">as of {as_of} UTC
<noscript> · reload to update</noscript></p></header>
<main data-live="{'yes' if first_page else 'no'}">
<section><h2>Instances</h2><ul id="instances" class="instances">{instances}</ul></section>
<section><h2>Today</h2><div class="counts">{counts}</div>
<p id="inbox"><b>{inbox['waiting']}</b> waiting in inbox/ at the last scan{h(oldest)};
<b>{status['uploads_in_flight']}</b> uploads in flight</p></section>
<section><h2>Last hour</h2>{render_chart(status['per_minute'])}
<p class="legend"><span class="files">■</span> files finished per minute
<span class="failed">■</span> records failed per minute</p></section>
<section><h2>Jobs being followed (<span id="following-total">{total}</span>)</h2>
{following}</section>
<section><h2>Latest finished files</h2>{latest}{older}</section>
</main><script src="/static/view.js"></script>""")


def render_file(story: Mapping[str, Any], forms: Mapping[str, str], note: str | None) -> str:
    fields = [("file", h(story["file"])), ("instance", h(story["instance"])),
              ("object", h(story["object"])), ("hub", h(story["hub"])),
              ("status", _status_badge(story["status"], story["partial"])),
              ("API status", h(story["api_status"])), ("job", h(story["job_id"])),
              ("records", h(story["records"]["total"])),
              ("records failed", h(story["records"]["failed"])),
              ("reason", h(story["reason"])), ("filed as", h(story["dest"]))]
    csv = story.get("csv") or {}
    if csv:
        fields.append(("dialect", h(", ".join(f"{k} {v}" for k, v in csv.items()))))
    if info := story.get("json"):
        form = "JSON lines" if info.get("form") == "lines" else "a JSON array"
        sent = "converted to JSON lines" if info.get("converted") else "sent as dropped"
        fields.append(("JSON", h(f"{form}, {info.get('rows')} objects, {sent}")))
        keys = info.get("keys") or []
        fields.append(("keys", h(", ".join(keys[:50]) + (" ..." if len(keys) > 50 else ""))))
    facts = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in fields)
    timeline = _table(("received", "submitted", "finished"),
                      [[h(story["received_at"]), h(story["submitted_at"]),
                        h(story["finished_at"])]])
    jobs = ""
    if story.get("jobs"):
        jobs = "<h2>Jobs</h2>" + _table(
            ("part", "rows", "job", "status", "records", "failed"),
            ([h(j.get("part")), h("–".join(map(str, j.get("rows") or []))), h(j.get("job_id")),
              h(j.get("status")), h((j.get("records") or {}).get("total")),
              h((j.get("records") or {}).get("failed"))] for j in story["jobs"]))
    errors = ""
    if story["errors"]:
        columns: dict[str, None] = {}
        for e in story["errors"]:
            columns.update(dict.fromkeys(e))
        shown = f"first {len(story['errors'])} of {story['errors_total']}" if (
            story["errors_total"] > len(story["errors"])) else f"{len(story['errors'])}"
        errors = f"<h2>Errors ({h(shown)})</h2>" + _table(
            columns, ([h(e.get(c, "")) for c in columns] for e in story["errors"]), "errors")
    failed = failed_suffix(story["file"]).removeprefix(".")
    links = "".join(
        f'<li><a href="/files/{h(story["claim_id"])}/{name}" download>{label}</a></li>'
        for name, label, shown in (
            ("errors.csv", "errors.csv", story["sidecars"]["errors"]),
            (failed, f"{failed} (the failed rows)", story["sidecars"]["failed"]))
        if shown)
    actions = "".join(
        f'<form method="post" action="/files/{h(story["claim_id"])}/{action}">'
        f'<input type="hidden" name="csrf" value="{h(token)}">'
        f'<button type="submit" id="{action}">'
        f'{"retry" if action == "retry" else "send failed rows again"}</button></form>'
        for action, token in forms.items())
    return _page(f"{story['file']} · bulkdrop", f"""
<header><h1><a href="/">bulkdrop</a> › {h(story['file'])}</h1></header><main>
{f'<p class="note" id="note">{h(note)}</p>' if note else ''}
<section><table class="facts">{facts}</table></section>
<section><h2>Timeline</h2>{timeline}</section>
{jobs}
{f'<section><h2>Downloads</h2><ul>{links}</ul></section>' if links else ''}
{f'<section class="actions">{actions}</section>' if actions else ''}
{errors}
</main>""")
