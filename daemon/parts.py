"""A file sent as several jobs (``objects.<name>.max_rows_per_job``).

Each part is a job of its own: the header plus up to ``max_rows_per_job`` data rows. The
cut is recorded before the first part is sent, each part's job id the moment it exists,
and each part's end once known, so a restart continues with the parts not yet done and
never sends a recorded part again. Parts go one after another: a file holds at most one
unfinished job, and one upload slot only while a part uploads. A part that fails stops
the rest; the file is done when every part is.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from daemon.ledger import Part, utcnow
from daemon.results import COMPLETE, FAILED, Outcome
from daemon.retry import Stopping

if TYPE_CHECKING:
    from daemon.pipeline import Pipeline, Work

NOT_SENT = "NOT_SENT"


async def run_parts(pipe: Pipeline, work: Work, max_rows: int) -> Outcome:
    """Send and follow every part not yet done (:class:`Stopping` when stopping part-way:
    the ledger knows which parts are out)."""
    claim_id = work.claimed.claim_id
    plan = await pipe.ledger.parts(claim_id)
    if not plan:
        total = work.rows or 0
        spans = [(first, min(max_rows, total - first)) for first in range(0, total, max_rows)]
        await pipe.ledger.plan_parts(claim_id, spans)
        plan = await pipe.ledger.parts(claim_id)
    ended: dict[int, dict[str, Any]] = {}
    for part in plan:
        if part.result_json:
            ended[part.part] = await asyncio.to_thread(json.loads, part.result_json)
            if ended[part.part]["status"] != COMPLETE:
                break
            continue
        if pipe.stopping:
            raise Stopping
        result = await _run_part(pipe, work, part, len(plan))
        ended[part.part] = result
        await pipe.ledger.finish_part(claim_id, part.part,
                                      await asyncio.to_thread(json.dumps, result))
        if result["status"] != COMPLETE:
            break
    return combine(plan, ended)


async def _run_part(pipe: Pipeline, work: Work, part: Part, count: int) -> dict[str, Any]:
    job_id, submitted_at = part.job_id, part.submitted_at
    duplicate = part.possible_duplicate
    if job_id is None:

        @asynccontextmanager
        async def upload_slot() -> AsyncIterator[None]:
            async with pipe.upload_slots:
                if pipe.stopping:
                    raise Stopping
                yield

        work.possible_duplicate, work.retry_reason = False, None
        created = await pipe.send(work, range(part.first_row, part.first_row + part.rows),
                                  around=upload_slot)
        duplicate = work.possible_duplicate
        if isinstance(created, Outcome):
            return _summary(part, None, created, duplicate)
        job_id, submitted_at = created, utcnow()
        await asyncio.shield(pipe.ledger.record_part_job(work.claimed.claim_id, part.part,
                                                         job_id, submitted_at, duplicate))
        work.log.info("job.created", job_id=job_id, part=part.part, parts=count,
                      object=work.obj, hub=work.hub, attempts=work.attempts,
                      possible_duplicate=duplicate)
    if work.job_id is None:
        work.job_id, work.submitted_at = job_id, submitted_at
    if pipe.stopping:  # its job id is recorded: followed again at the next start
        raise Stopping
    outcome = await pipe.follow(work, job_id, submitted_at or utcnow())
    return _summary(part, job_id, outcome, duplicate)


def _summary(part: Part, job_id: str | None, outcome: Outcome,
             possible_duplicate: bool) -> dict[str, Any]:
    return {"part": part.part, "rows": [part.first_row + 1, part.first_row + part.rows],
            "job_id": job_id, "status": outcome.status, "api_status": outcome.api_status,
            "records": {"total": outcome.records_total, "failed": outcome.records_failed},
            "reason": outcome.reason, "possible_duplicate": possible_duplicate,
            "errors": list(outcome.errors)}


def combine(plan: list[Part], ended: dict[int, dict[str, Any]]) -> Outcome:
    """One outcome for the file from its parts' outcomes."""
    jobs = []
    for part in plan:
        summary = ended.get(part.part)
        if summary is None:
            jobs.append({"part": part.part,
                         "rows": [part.first_row + 1, part.first_row + part.rows],
                         "job_id": None, "status": NOT_SENT})
        else:
            jobs.append({k: v for k, v in summary.items() if k != "errors"})
    errors = [{"part": s["part"], **e} if isinstance(e, dict) else {"part": s["part"], "error": e}
              for s in ended.values() for e in s["errors"]]
    totals = [s["records"]["total"] for s in ended.values()]
    failed = [s["records"]["failed"] for s in ended.values()]
    total = sum(totals) if None not in totals else None
    failed_sum = sum(f or 0 for f in failed)
    bad = next((s for s in ended.values() if s["status"] != COMPLETE), None)
    if bad is None and len(ended) == len(plan):
        reason = (f"{len(plan)} jobs completed: {total if total is not None else '?'} records"
                  + (f", {failed_sum} failed" if failed_sum else ""))
        last = ended[plan[-1].part]
        return Outcome(COMPLETE, reason, last["api_status"], total, failed_sum, errors,
                       jobs=jobs, possible_duplicate=_any_duplicate(ended))
    assert bad is not None
    first, last_row = bad["rows"]
    reason = f"part {bad['part']} of {len(plan)} (rows {first}-{last_row}): {bad['reason']}"
    unsent = [j["part"] for j in jobs if j["status"] == NOT_SENT]
    if unsent:
        reason += f"; part{'s' if len(unsent) > 1 else ''} {', '.join(map(str, unsent))} not sent"
    return Outcome(FAILED, reason, bad["api_status"], total, failed_sum, errors, jobs=jobs,
                   possible_duplicate=_any_duplicate(ended))


def _any_duplicate(ended: dict[int, dict[str, Any]]) -> bool:
    return any(s.get("possible_duplicate") for s in ended.values())
