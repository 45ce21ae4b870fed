"""The operator's commands: ``status``, ``retry``, ``submit``, ``config``.

Each reads or changes only what a person could by hand, and says what it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import itertools
import json
import os
import re
import secrets
import sqlite3
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from daemon import csvfile, exits, jsonfile
from daemon.checks import file_info, inspect_file
from daemon.csvfile import BULKDROP_COLUMNS
from daemon.failedrows import FAILED_SUFFIX, failed_suffix
from daemon.fileref import FileRef
from daemon.folders import lexists, open_dirs
from daemon.ledger import read_summary, utcnow
from daemon.logs import get_logger
from daemon.placing import RESULT_SUFFIX, SIDECARS, suffixed_names
from daemon.results import COMPLETE, REJECTED, Outcome, build_result
from daemon.settings import ObjectSettings, Secret, Settings
from daemon.spool import Spool, is_ignored_name, is_json_name

# -- status -------------------------------------------------------------------------------

def status(settings: Settings, latest: int = 10) -> dict[str, Any]:
    spool = Spool(settings.spool.root, settings.spool.node_id)
    db = settings.spool.state_dir / "bulkdrop.db"
    report: dict[str, Any] = {"node": settings.spool.node_id, "ledger": str(db),
                              "configured_instances": list(settings.instances),
                              "default_instance": settings.default_instance}
    try:
        report.update(read_summary(db, latest))
    except sqlite3.Error as exc:
        report["ledger_error"] = f"cannot read {db}: {exc} (has the daemon run on this node?)"
    waiting, oldest = 0, None
    for path, st in spool.iter_inbox() if spool.inbox.exists() else ():
        waiting += 1
        if oldest is None or st.st_ctime < oldest[1]:  # ctime: when it arrived
            oldest = (path, st.st_ctime)
    report["inbox"] = {"waiting": waiting, "oldest": None if oldest is None else {
        "file": os.fsencode(spool.rel_to_inbox(oldest[0])).decode("utf-8", "backslashreplace"),
        "waiting_seconds": round(time.time() - oldest[1])}}
    if settings.http.enabled:
        report["daemon"] = ask_readyz(settings.http.host, settings.http.port)
    return report


def ask_readyz(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    """What the running daemon says of itself: ready, or the problems it is riding out
    (folders it cannot read, files it cannot claim or file, a ledger it cannot write)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - ours
            body = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = {"problems": [f"HTTP {exc.code}"]}
    except (OSError, ValueError) as exc:
        return {"url": url, "answering": False, "error": str(getattr(exc, "reason", exc))}
    return {"url": url, "answering": True, "ready": body.get("status") == "ready",
            "problems": body.get("problems", []), "instances": body.get("instances", {})}


def _counts_line(counts: dict[str, int]) -> str:
    done = ", ".join(f"{k} {counts.get(k, 0)}" for k in ("COMPLETE", "FAILED", "REJECTED"))
    if counts.get("FINISHED"):  # ended with no result: gone from processing/ by hand
        done += f", without a result {counts['FINISHED']}"
    moving = {k: v for k, v in counts.items()
              if k not in ("COMPLETE", "FAILED", "REJECTED", "FINISHED")}
    return (f"{done}; in progress {sum(moving.values())}"
            + (f" ({', '.join(f'{k} {v}' for k, v in sorted(moving.items()))})"
               if moving else ""))


def format_status(report: dict[str, Any]) -> str:
    lines = [f"node {report['node']}, ledger {report['ledger']}"]
    daemon = report.get("daemon")
    states = daemon.get("instances", {}) if daemon and daemon["answering"] else {}
    if "ledger_error" in report:
        lines.append(report["ledger_error"])
    else:
        partial = report.get("partial")
        lines.append(f"files: {_counts_line(report['counts'])}"
                     + (f"; of the COMPLETE, {partial} with some records failed"
                        if partial else ""))
    by_instance = report.get("instances", {})
    names = list(dict.fromkeys([*report.get("configured_instances", []), *by_instance]))
    if len(names) > 1 or states.get(names[0] if names else "", "ready") != "ready":
        for name in names:
            default = " (default)" if name == report.get("default_instance") else ""
            state = states.get(name) or (
                "not configured" if name not in report.get("configured_instances", [name])
                else None)
            lines.append(f"  {name}{default}: {_counts_line(by_instance.get(name, {}))}"
                         + (f"; {state}" if state else ""))
    if report.get("notifications_pending"):
        lines.append(f"notifications: {report['notifications_pending']} waiting to be sent")
    inbox = report["inbox"]
    oldest = inbox["oldest"]
    lines.append(f"inbox: {inbox['waiting']} waiting" + (
        f", oldest {oldest['file']} ({oldest['waiting_seconds']} s)" if oldest else ""))
    daemon = report.get("daemon")
    if daemon is not None:
        if not daemon["answering"]:
            lines.append(f"daemon: not answering at {daemon['url']} ({daemon['error']})")
        elif daemon["ready"]:
            lines.append("daemon: ready")
        else:
            lines.append("daemon: not ready:")
            lines.extend(f"  {problem}" for problem in daemon["problems"])
    if report.get("latest"):
        lines.append("latest:")
        several = len(names) > 1
        for row in report["latest"]:
            what = row["outcome"] or row["state"]
            job = f" job {row['job_id']}" if row["job_id"] else ""
            at = f" at {row['instance']}" if several else ""
            lines.append(f"  {row['updated_at']}  {row['rel_path']}  {what}{job}{at}"
                         + (f"  {row['reason']}" if row["reason"] else ""))
    return "\n".join(lines)


# -- retry --------------------------------------------------------------------------------

def failed_files(spool: Spool) -> Iterator[Path]:
    for folder, _dirs, files in os.walk(spool.failed):
        for name in sorted(files):
            if not is_ignored_name(name) and not name.endswith(SIDECARS):
                yield Path(folder) / name


def retry(spool: Spool, path: Path) -> Path:
    """Move one file from failed/ back into inbox/ under its original route; never overwrite.

    Its result and errors CSV go (the ledger keeps the history); the daemon claims the
    file again as a new drop.
    """
    path = path.parent.resolve() / path.name  # the name itself is never followed
    failed = spool.failed.resolve()
    if failed not in path.parents:
        raise ValueError(f"{path} is not below {spool.failed} (the spool of this config; "
                         "the sandbox's with --sandbox)")
    below = PurePosixPath(path.relative_to(failed).as_posix())
    # failed/ and inbox/ are reached through descriptors: a link put in place of a
    # folder on either side is never followed (droppers may write to both).
    src = open_dirs(failed, below.parent.parts)
    try:
        st = os.stat(path.name, dir_fd=src, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or path.name.endswith(SIDECARS):
            raise ValueError(f"{path} is not a failed data file")
        rel = _route_at(src, path.name + RESULT_SUFFIX) or below
        dst = open_dirs(spool.inbox, rel.parent.parts, create=True, mode=0o777)
        try:
            name = _move_to_free_name(path.name, src, rel.name, dst)
        finally:
            os.close(dst)
        for suffix in SIDECARS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path.name + suffix, dir_fd=src)
    finally:
        os.close(src)
    return spool.inbox / rel.parent / name


def _move_to_free_name(name: str, src: int, wanted: str, dst: int) -> str:
    """Move *name* from folder *src* into folder *dst* under *wanted* or the first free
    name after it (``a-1.csv`` ...), never replacing anything; the name it got."""
    for candidate in suffixed_names(wanted):
        if lexists(candidate, dst):
            continue
        try:  # a link fails rather than replace a name taken meanwhile
            os.link(name, candidate, src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)
        except FileExistsError:
            continue
        except PermissionError:
            # fs.protected_hardlinks: a file of the dropper's the daemon may not write.
            # Renamed instead, the name checked free just above.
            os.rename(name, candidate, src_dir_fd=src, dst_dir_fd=dst)
            return candidate
        os.unlink(name, dir_fd=src)
        return candidate
    raise AssertionError("unreachable")


def retry_failed_rows(spool: Spool, path: Path) -> Path:
    """Drop the failed rows of a filed file (*path*: the file in done/ or failed/, or its
    ``.failed.csv``) into the folder of inbox/ it was dropped in (``<object>/``, or
    ``<instance>/<object>/``) as ``<name>.retry-N.csv``, the bulkdrop
    columns removed, N the first free in inbox/, done/ and failed/; never overwrite.
    A JSON file's (``.failed.jsonl``) become ``<name>.retry-N.jsonl``, each object
    without ``_bulkdrop_error``. The filed file and its sidecars stay."""
    path = path.parent.resolve() / path.name  # the name itself is never followed
    if not any(base.resolve() in path.parents for base in (spool.done, spool.failed)):
        raise ValueError(f"{path} is not below {spool.done} or {spool.failed} (the spool of "
                         "this config; the sandbox's with --sandbox)")
    filed = path.with_name(path.name.removesuffix(FAILED_SUFFIX)
                           .removesuffix(jsonfile.FAILED_SUFFIX))
    is_json = is_json_name(filed.name)
    failed_csv = filed.with_name(filed.name + failed_suffix(filed.name))
    if not os.path.lexists(filed):
        raise ValueError(f"no such filed file: {filed} (not filed yet, or moved away)")
    rel = _route_of(filed.with_name(filed.name + RESULT_SUFFIX))
    if rel is None:
        raise ValueError(f"no readable result beside {filed}")
    if not os.path.lexists(failed_csv):
        raise ValueError(f"{filed} has no failed rows: no {failed_csv.name} beside it (its "
                         "job had no failed records, or its result says why none was written)")
    route = list(rel.parent.parts)  # <object>/, or <instance>/<object>/, as it was dropped
    stem = re.sub(r"\.retry-\d+$", "", PurePosixPath(rel.name).stem)
    # inbox/ is droppers' ground: reached through descriptors, never through a link.
    folder = open_dirs(spool.inbox, route, create=True, mode=0o777)
    tmp = f".{stem}.retry.{secrets.token_hex(8)}.tmp"  # ignored until it is whole
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666,
                     dir_fd=folder)
        try:
            with FileRef(failed_csv).open("r", encoding="utf-8-sig", newline="") as src, \
                    open(fd, "w", encoding="utf-8", newline="", closefd=False) as out:
                if is_json:
                    _objects_without_error(src, out, failed_csv.name)
                else:
                    reader, writer = csv.reader(src), csv.writer(out, lineterminator="\r\n")
                    header = next(reader, [])
                    keep = [i for i, name in enumerate(header) if name not in BULKDROP_COLUMNS]
                    writer.writerow([header[i] for i in keep])
                    for row in reader:
                        writer.writerow([row[i] for i in keep if i < len(row)])
            for n in itertools.count(1):
                name = f"{stem}.retry-{n}{'.jsonl' if is_json else '.csv'}"
                here = PurePosixPath(*route, name)
                if any(os.path.lexists(base / here) for base in (spool.done, spool.failed)):
                    continue  # an earlier retry, filed already: a name of its own
                try:  # never overwrites, never follows
                    os.link(tmp, name, src_dir_fd=folder, dst_dir_fd=folder,
                            follow_symlinks=False)
                except FileExistsError:
                    continue
                return spool.inbox / here
        finally:
            os.close(fd)
            os.unlink(tmp, dir_fd=folder)  # ours: made with O_EXCL just above
    finally:
        os.close(folder)
    raise AssertionError("unreachable")


def _objects_without_error(src: TextIO, out: TextIO, name: str) -> None:
    """A failed-objects file's objects, a line each, without ``_bulkdrop_error``."""
    for number, line in enumerate(src, 1):
        if not line.strip():
            continue
        try:
            out.write(jsonfile.without_error(line) + "\n")
        except ValueError as exc:
            raise ValueError(f"{name}, line {number}: {exc}; fix it there and retry") from None


def _route_of(result: Path) -> PurePosixPath | None:
    """The path below inbox/ the file was dropped as, from its result (if sane; a link
    planted in its place is not followed)."""
    try:
        with FileRef(result).open("r", encoding="utf-8") as fh:
            return _sane_route(json.load(fh))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _route_at(folder: int, name: str) -> PurePosixPath | None:
    """:func:`_route_of` for the result *name* in the folder open as *folder*."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=folder)
        with open(fd, encoding="utf-8") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            return _sane_route(json.loads(fh.read(1 << 20)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _sane_route(result: Any) -> PurePosixPath | None:
    rel = PurePosixPath(result["file"])
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return None
    return rel


# -- submit -------------------------------------------------------------------------------

async def submit(settings: Settings, path: Path, obj: str, wait: bool,
                 instance: str | None = None) -> tuple[int, dict[str, Any]]:
    """One file outside the spool, to *instance* (else the default one): check, upload,
    and with *wait* follow it to its end."""
    # The API's client (aiohttp) is imported here, not with the module: `bulkdrop status`
    # and `retry` import ops too, and start in a third of the time without it.
    from daemon.client import OpenConnectorsClient
    from daemon.normalise import upload_body, upload_kind
    from daemon.retry import RejectedError, RetryPolicy
    from daemon.tracker import Tracker

    inst = settings.instance(instance)
    conf = inst.object_settings(obj)
    columns = csvfile.Columns.of(conf)
    csvfile.set_line_limit(settings.spool.max_line_length)
    received = utcnow()
    found = await asyncio.to_thread(inspect_file, FileRef(path, follow=True), path.name,
                                    columns)
    hub = inst.hub_for(obj)
    csv_info, json_info = file_info(found, columns)

    def result(outcome: Outcome, job_id: str | None, submitted: str | None) -> dict[str, Any]:
        return build_result(outcome, rel=path.name, obj=obj, hub=hub, job_id=job_id,
                            instance=inst.name,
                            sha256=found.sha256, size=found.bytes, attempts=1,
                            csv_info=csv_info, json_info=json_info,
                            received_at=received, submitted_at=submitted, finished_at=utcnow())

    if found.problem:
        outcome = Outcome(REJECTED, found.problem, errors=[p.as_dict() for p in found.problems],
                          errors_total=found.problems_total)
        return exits.REJECTED, result(outcome, None, None)
    client = OpenConnectorsClient.from_settings(inst.api)
    policy = RetryPolicy(inst.api.retry_deadline_seconds)
    body = upload_body(path, found, columns)
    metadata, content_type = upload_kind(found, conf.metadata)
    try:
        try:
            created = await policy.call("create_job", lambda: client.create_job(
                hub, obj, path.name, body, metadata=metadata, content_type=content_type))
        except RejectedError as exc:
            outcome = Outcome(REJECTED, f"the API refused the upload ({exc.status}): "
                              f"{exc.message}")
            return exits.REJECTED, result(outcome, None, None)
        submitted = utcnow()
        if not wait:
            return exits.OK, {"job_id": created.id, "status": created.status, "file": str(path)}
        w = settings.workers
        tracker = Tracker(client, policy, poll_interval=min(w.poll_interval_seconds, 2.0),
                          poll_max_interval=w.poll_max_interval_seconds,
                          job_timeout=w.job_timeout_seconds)
        end = await tracker.follow(hub, created.id, submitted, get_logger(file=str(path)))
        outcome = await tracker.conclude(hub, created.id, end)
    finally:
        await client.close()
    code = exits.REJECTED if outcome.status != COMPLETE else (
        exits.RECORDS_FAILED if outcome.records_failed else exits.OK)
    return code, result(outcome, created.id, submitted)


# -- notify test ---------------------------------------------------------------------------

SAMPLE_RESULT = {
    "file": "contact/sample.csv", "instance": "default", "object": "contact",
    "hub": "marketing", "status": "FAILED", "api_status": "COMPLETED", "job_id": "0",
    "records": {"total": 2, "failed": 2, "succeeded": 0}, "partial": False,
    "errors": [{"message": "Invalid email address 'not-an-email' (a sample)",
                "raw": {"recordNumber": 1, "message": "Invalid email address 'not-an-email'"}}],
    "errors_total": 1, "reason": "a sample notification from `bulkdrop notify test`",
    "claim_id": "0" * 20, "test": True}


async def notify_test(settings: Settings, name: str | None = None
                      ) -> list[tuple[str, int | None, str]]:
    """Send a sample notification to each target (or the one named): (target, HTTP status
    or None, the answer or the error)."""
    import aiohttp

    from daemon.notify import request_of

    answers: list[tuple[str, int | None, str]] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for target in settings.notify.targets:
            if name is not None and target.name != name:
                continue
            body, headers = request_of(target, SAMPLE_RESULT, "failed/contact/sample.csv",
                                       "FAILED")
            try:
                async with session.post(target.url, data=body, headers=headers) as resp:
                    text = (await resp.read()).decode("utf-8", "replace")[:500]
                    answers.append((target.name, resp.status, text))
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                answers.append((target.name, None, f"{type(exc).__name__}: {exc}"))
    return answers


# -- config -------------------------------------------------------------------------------

def effective_config(settings: Settings) -> list[tuple[str, str, str]]:
    """(section.key, value as TOML text with secrets masked, where it came from)."""
    rows = []
    for section in ("api", "spool", "workers", "callback", "http", "log"):
        for f in dataclasses.fields(getattr(settings, section)):
            dotted = f"{section}.{f.name}"
            shown = _shown(getattr(getattr(settings, section), f.name))
            origin = settings.origins.get(dotted, "default")
            if dotted == "spool.state_dir" and dotted not in settings.origins:
                origin = "default (<root>/.state/<node_id>)"
            rows.append((dotted, shown, origin))
    rows.extend(_object_rows("objects", settings.objects))
    if settings.instance_folders:
        for name, inst in settings.instances.items():
            prefix = f"instances.{name}"
            for key, value in (("base_url", inst.api.base_url), ("hub", inst.api.hub),
                               ("user_secret", inst.api.user_secret),
                               ("organization_secret", inst.api.organization_secret),
                               ("element_token", inst.api.element_token),
                               ("uploads", inst.uploads),
                               ("max_active_jobs", inst.max_active_jobs),
                               ("requests_per_second", inst.api.requests_per_second),
                               ("default_object", inst.default_object)):
                origin = settings.origins.get(f"{prefix}.{key}", "default")
                if name == "default" and origin == "default":
                    origin = "[api]"  # [api] serving files itself
                rows.append((f"{prefix}.{key}", _shown(value), origin))
            own = {o: c for o, c in inst.objects.items() if settings.objects.get(o) != c}
            rows.extend(_object_rows(f"{prefix}.objects", own))
        rows.append(("spool.default_instance (in effect)",
                     json.dumps(settings.default_instance), "derived"))
    return rows


def _shown(value: object) -> str:
    if isinstance(value, Secret):
        return '"***"' if value else '""'
    return json.dumps(str(value) if isinstance(value, Path) else value)


def _object_rows(prefix: str, objects: Mapping[str, ObjectSettings]
                 ) -> list[tuple[str, str, str]]:
    rows = []
    for name, obj in sorted(objects.items()):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            plain = dict(value) if isinstance(value, dict) or hasattr(value, "items") else (
                list(value) if isinstance(value, tuple) else value)
            rows.append((f"{prefix}.{name}.{f.name}", json.dumps(plain), "file"))
    return rows

