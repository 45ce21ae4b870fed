"""Filing a finished file: its result made, the destination recorded, then the file and
its sidecars put in place (:mod:`daemon.placing`), then the file marked finished.

The destination is recorded before anything moves, so a crash at any point leaves the
ledger knowing where the file is or is going, and :meth:`Filer.refile` finishes it at
the next start. Trouble that is not the file's (a full disk, a read-only done/, no free
descriptors) is ridden out: each failed attempt is logged (``file.filing_retry``),
counted and shown in ``/readyz``, and tried again with backoff until it works. A filing
is shielded: a stop waits for it rather than leave half a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from daemon import csvfile, jsonfile, notify
from daemon.checks import Checks, file_info
from daemon.failedrows import (
    Found,
    failed_suffix,
    plan_of,
    write_failed_objects,
    write_failed_rows,
)
from daemon.ledger import Ledger, Row, utcnow
from daemon.metrics import Metrics
from daemon.placing import ERRORS_SUFFIX, RESULT_SUFFIX, Placing, Sidecar, Skip
from daemon.results import COMPLETE, FAILED, REJECTED, Outcome, build_result, errors_csv
from daemon.retry import backoff_delay
from daemon.spool import Spool, is_json_name
from daemon.tasks import Tasks
from daemon.trouble import Troubles
from daemon.work import Work

RETRY_CAP = 60.0  # seconds between attempts, at most, while filing keeps failing


class Filer:
    def __init__(self, spool: Spool, ledger: Ledger, quick: Callable[..., Awaitable[Any]],
                 checks: Checks, tasks: Tasks, troubles: Troubles, metrics: Metrics) -> None:
        self.spool = spool
        self.ledger = ledger
        self.quick = quick
        self.checks = checks
        self.tasks = tasks
        self.troubles = troubles
        self.metrics = metrics
        self.counts: dict[str, int] = {COMPLETE: 0, FAILED: 0, REJECTED: 0}
        self.on_recorded: Callable[[], None] = lambda: None  # notifications may wait
        self.instance_counts: dict[str, dict[str, int]] = {}  # the same, by instance

    async def finish(self, work: Work, outcome: Outcome) -> None:
        """Make the file's result, record it with the destination, and file it."""
        csv_info, json_info = file_info(work.inspection,
                                        self.checks.columns(work.instance, work.obj))
        result = build_result(
            outcome, rel=work.rel, obj=work.obj, hub=work.hub, job_id=work.job_id,
            sha256=work.sha256, size=work.size, attempts=work.attempts, instance=work.instance,
            csv_info=csv_info, json_info=json_info,
            received_at=work.received_at, submitted_at=work.submitted_at,
            finished_at=utcnow(),
            possible_duplicate=work.possible_duplicate or outcome.possible_duplicate)
        errors = list(outcome.errors)
        record = {**result, "errors_all": errors}
        stored = (json.dumps(record) if len(errors) < 1000
                  else await asyncio.to_thread(json.dumps, record))
        # Its own name, most often free; filing finds out and chooses another if not.
        folder = self._folder(work, outcome.ok, result["finished_at"], None)
        dest = Placing(self.spool, work.claimed, outcome.ok, (), folder).natural()
        await asyncio.shield(self.ledger.mark_finishing(
            work.claimed.claim_id, outcome.status, outcome.api_status, outcome.reason, stored,
            self.spool.to_stored(dest), (result["records"]["total"], result["records"]["failed"]),
            notify.recorded(self.checks.settings.notify, result),
            (result["object"], result["hub"])))  # a file rejected has them only here
        await self.tasks.shield(self._file(work, result, errors, outcome.ok, dest, False,
                                           folder))

    def _folder(self, work: Work, ok: bool, finished_at: str,
                dest: Path | None) -> PurePosixPath | None:
        """The folder below done/ or failed/ the file goes in: the one recorded with it (a
        filing resumed goes where it was going), else the path it was dropped in (None),
        after the day it finished in done/ laid out by day (``[spool] done_layout``)."""
        if dest is not None:
            base = self.spool.done if ok else self.spool.failed
            with contextlib.suppress(ValueError):
                return PurePosixPath(dest.parent.relative_to(base).as_posix())
        if ok and self.checks.settings.spool.done_layout == "daily":
            day = datetime.fromisoformat(finished_at).astimezone().date().isoformat()
            return PurePosixPath(day) / work.claimed.rel.parent
        return None

    async def refile(self, work: Work, row: Row) -> None:
        """Finish the filing of a file a run cut short (its row is FINISHING)."""
        assert row.result_json is not None
        stored = await asyncio.to_thread(json.loads, row.result_json)
        errors = stored.pop("errors_all", [])
        dest = self.spool.filed_from_stored(row.dest_path) if row.dest_path else None
        # (A result made before instances has none: the file's is its row's, "default".)
        work.obj, work.instance = stored.get("object"), stored.get("instance", work.instance)
        # Recorded with the FINISHING row since notifications exist; a row written before
        # has none yet (recorded once: a target's second is ignored).
        await self.ledger.record_notifications(
            work.claimed.claim_id, notify.recorded(self.checks.settings.notify, stored))
        ok = row.outcome == COMPLETE
        await self.tasks.shield(self._file(work, stored, errors, ok, dest, True,
                                           self._folder(work, ok, stored["finished_at"], dest)))

    async def _file(self, work: Work, result: dict[str, Any], errors: list[Any], ok: bool,
                    dest: Path | None, resumed: bool, folder: PurePosixPath | None) -> None:
        claimed = work.claimed
        named = _Named(claimed.rel.name)  # the name filed under, once chosen
        placing = Placing(self.spool, claimed, ok, self._sidecars(work, result, errors, named),
                          folder)
        placed = await self._place(work, placing, dest, resumed, named)
        await self.ledger.mark_finished(claimed.claim_id, result["finished_at"])
        self.on_recorded()  # its notifications may go now: the file is where they say
        if placed is None:
            work.log.error("file.vanished", path=str(claimed.path))
            return
        self.counts[result["status"]] = self.counts.get(result["status"], 0) + 1
        by = self.instance_counts.setdefault(work.instance or "", {})
        by[result["status"]] = by.get(result["status"], 0) + 1
        obj, instance = work.obj or "", work.instance or ""
        self.metrics.files_finished.labels(result["status"], obj, instance).inc()
        if result["records"] and result["records"]["failed"]:
            self.metrics.records_failed.labels(obj, instance).inc(result["records"]["failed"])
        work.log.info("file.finished", status=result["status"], api_status=result["api_status"],
                      reason=result["reason"], dest=self.spool.to_stored(placed))

    async def _place(self, work: Work, placing: Placing, dest: Path | None,
                     resumed: bool, named: _Named) -> Path | None:
        """Where the file now is, trying again through trouble; None when it vanished
        from processing/ (removed by hand)."""
        key = work.rel
        for attempt in itertools.count(1):
            try:
                placed = await self._place_once(placing, dest, resumed, named)
            except OSError as exc:
                delay = backoff_delay(attempt, cap=RETRY_CAP) + 0.1
                problem = f"{exc.strerror or exc} ({exc.filename or work.claimed.path})"
                work.log.warning("file.filing_retry", error=problem, attempt=attempt,
                                 retry_in=round(delay, 2))
                self.troubles.set("filing", key, problem)
                self.metrics.io_retries.labels("filing").inc()
                await asyncio.sleep(delay)
                resumed = True  # a later attempt repeats what this one may have done
                continue
            if attempt > 1:
                self.troubles.clear("filing", key)
                work.log.info("file.filing_recovered", attempts=attempt)
            return placed
        raise AssertionError("unreachable")

    async def _place_once(self, placing: Placing, dest: Path | None, resumed: bool,
                          named: _Named) -> Path | None:
        dest = dest or placing.natural()
        named.name = dest.name
        # Sidecars that read the whole file again take a thread of their own: the quick
        # ones are for claims.
        run = self.quick if not placing.heavy else asyncio.to_thread
        while not await run(placing.prepare_and_place, dest, resumed):
            if not await self.quick(placing.claimed_exists):
                return None  # removed by hand (a resumed filing found it done instead)
            chosen = await self.quick(placing.choose)
            if chosen is None:
                return None
            dest = chosen
            if named.name != dest.name:
                named.name = dest.name
                placing.prepared = False  # the result names its failed rows' file
            # Recorded before the move: a crash leaves the ledger knowing where it goes.
            await self.ledger.record_dest(placing.claimed.claim_id, self.spool.to_stored(dest))
        return dest

    def _sidecars(self, work: Work, result: dict[str, Any], errors: list[Any],
                  named: _Named) -> Sequence[Sidecar]:
        """The errors CSV (when there are errors) and the result, written in the filing
        thread. A file's own problems are all in its errors CSV, however many: when more
        were found than were kept, the file is checked again as the CSV is written."""
        out = []
        if result["errors_total"] > len(errors):
            ref = work.claimed.ref
            columns = self.checks.columns(result.get("instance"), result["object"])
            checks = jsonfile.inspect if is_json_name(ref.path.name) else None
            out.append(Sidecar(ERRORS_SUFFIX, lambda fh: csvfile.write_problems(
                ref, columns, fh, checks), heavy=True))
        elif errors:
            out.append(Sidecar(ERRORS_SUFFIX, lambda fh: fh.write(errors_csv(errors))))
        if errors and result["status"] != REJECTED and (
                failed := self._failed_rows(work, result, errors, named)):
            out.append(failed)
        out.append(Sidecar(RESULT_SUFFIX, lambda fh: _write_json(result, fh)))
        return out

    def _failed_rows(self, work: Work, result: dict[str, Any], errors: list[Any],
                     named: _Named) -> Sidecar | None:
        """The failed rows as dropped; what it found goes into the result, written next.
        None for a file never read as CSV or JSON."""
        dialect, spans = plan_of(result)
        info = result.get("json")
        if dialect is None and not (info and info.get("form")):
            return None
        obj, instance = result["object"], result.get("instance")
        columns = self.checks.columns(instance, obj)
        conf = self.checks.settings.instance_or_default(instance).object_settings(obj)
        metadata = conf.metadata or {}
        identifier = metadata.get("identifierFieldName")
        identifier = identifier if isinstance(identifier, str) else None
        ref, suffix = work.claimed.ref, failed_suffix(work.claimed.rel.name)

        def failed(fh: BinaryIO) -> Found:
            if dialect is not None:
                return write_failed_rows(ref, dialect, columns, identifier, spans, errors, fh)
            assert info is not None
            return write_failed_objects(ref, info["form"], columns, info.get("keys") or (),
                                        identifier, spans, errors, fh)

        def write(fh: BinaryIO) -> None:
            try:
                found = failed(fh)
            except OSError:
                raise  # trouble that passes: the filing is tried again
            except Exception as exc:  # noqa: BLE001 - an extra: never worth the file
                work.log.error("file.failed_rows_unwritten", error=repr(exc))
                result["failed_rows"] = {"file": None, "error": str(exc)}
                raise Skip from exc
            result["failed_rows"] = found.as_dict(named.name + suffix)

        return Sidecar(suffix, write, heavy=True)


class _Named:
    """The name a file is being filed under (its result names its sidecars by it)."""

    def __init__(self, name: str) -> None:
        self.name = name


def _write_json(result: dict[str, Any], fh: BinaryIO) -> None:
    # An API's text may hold half a character (a lone surrogate): written as its JSON
    # escape, never an exception.
    fh.write((json.dumps(result, indent=2, ensure_ascii=False) + "\n").encode(
        "utf-8", "backslashreplace"))
