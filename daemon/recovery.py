"""Start-up recovery: go on with every file a run left unfinished, claim afresh the files
of ours the ledger does not know, and say so when the ledger was damaged or lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from daemon.ledger import Ledger, utcnow
from daemon.logs import get_logger
from daemon.pipeline import Pipeline
from daemon.placing import stale_temporaries
from daemon.spool import Spool
from daemon.work import Work

log = get_logger()


async def recover(spool: Spool, ledger: Ledger, pipeline: Pipeline,
                  spawn: Callable[[Coroutine[Any, Any, Any], str], object]) -> None:
    rows = await ledger.unfinished()
    known = {spool.from_stored(r.claimed_path) for r in rows}
    strays = [p for p in await asyncio.to_thread(spool.list_processing) if p not in known]
    keep = {r.claim_id for r in rows}
    for tmp in await asyncio.to_thread(stale_temporaries, spool, keep):
        await asyncio.to_thread(tmp.unlink, True)
    for row in rows:
        spawn(pipeline.resume(row), row.rel_path)
    for path in strays:
        claimed = await asyncio.to_thread(spool.claimed_from_path, path)
        if claimed is None:
            log.warning("recovery.unknown_file", path=str(path))
            continue
        instance = pipeline.checks.route(claimed.rel).instance
        await ledger.add_claim(claimed.claim_id, str(claimed.rel), spool.to_stored(path),
                               utcnow(), claimed.problem, instance or "")
        spawn(pipeline.process(Work(claimed, utcnow(), instance),
                               pipeline.resume_ticket(instance)), str(claimed.rel))
    report_ledger(ledger, len(strays))
    if rows or strays:
        log.info("recovery.started", resumed=len(rows), reclaimed=len(strays),
                 following=sum(1 for r in rows if r.job_id))
    others = await asyncio.to_thread(spool.other_nodes_with_files)
    if others:
        # Each node recovers only its own folder: a node renamed (a new container
        # hostname) leaves its files behind until it runs again under its old name.
        log.warning("spool.other_nodes_busy", nodes=others, node=spool.processing.name,
                    note="files there are finished only by a daemon with that node_id")


def report_ledger(ledger: Ledger, reclaimed: int) -> None:
    """Say so when the ledger was damaged, empty or missing: then the files found in
    processing/ are claimed afresh, and those whose job had been created are sent
    again."""
    note = "files in processing/ are uploaded again" if reclaimed else None
    if ledger.set_aside is not None:
        log.error("ledger.rebuilt", unreadable=str(ledger.set_aside), path=str(ledger.path),
                  reclaimed=reclaimed, note=note)
    elif ledger.created and ledger.existed:
        (log.error if reclaimed else log.warning)(
            "ledger.empty", path=str(ledger.path), reclaimed=reclaimed,
            note=note or "the ledger file held no ledger: a new one is started")
    elif ledger.created and reclaimed:
        log.error("ledger.missing", path=str(ledger.path), reclaimed=reclaimed, note=note)
