"""Finding complete files in inbox/ (the watcher): a file is handed on only once it has
settled, so one written slowly goes up whole and once; a folder renamed into inbox/ is
found by its event alone; each rescan keeps the inbox gauges true. In-process daemon,
the simulator over HTTP."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from daemon.inboxevents import InboxEvents
from daemon.sim import SimServer
from tests.conftest import SlowWriter
from tests.helpers import contacts_csv, drop, result_of, wait_for


async def test_file_written_slowly_is_uploaded_whole_once(make_settings, run_daemon,
                                                          sim: SimServer, spool_root: Path,
                                                          slow_writer: SlowWriter) -> None:
    await run_daemon(make_settings(spool__settle_seconds=0.6))
    target = spool_root / "inbox" / "contact" / "slow.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    content = contacts_csv(400).encode()
    slow_writer(target, content, 20, 2.0)  # 20 chunks over about 2 s, like a slow export
    done = spool_root / "done" / "contact" / "slow.csv"
    await wait_for(lambda: done.with_name("slow.csv.result.json").exists(), timeout=30,
                   what="slow file result")
    assert len(sim.sim.jobs) == 1
    job = next(iter(sim.sim.jobs.values()))
    assert job.bytes == len(content)
    assert job.body == content
    assert result_of(done)["records"] == {"total": 400, "failed": 0, "succeeded": 400}


async def test_folder_moved_into_inbox_is_picked_up_by_its_event(make_settings, run_daemon,
                                                                 spool_root: Path,
                                                                 tmp_path: Path) -> None:
    await run_daemon(make_settings(spool__rescan_seconds=600))  # no rescan will help
    staging = tmp_path / "staging" / "account"
    staging.mkdir(parents=True)
    for i in range(3):
        (staging / f"acc{i}.csv").write_text(contacts_csv(2, tag=str(i)))
    staging.rename(spool_root / "inbox" / "account")
    done = spool_root / "done" / "account"
    await wait_for(lambda: len(list(done.glob("*.result.json"))) == 3, what="3 results")


async def test_the_inbox_gauges_match_the_inbox_within_one_rescan(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    """A backlog while uploads are paused (credentials refused): the claimer is full,
    the watcher waits, and the gauges still say what is there, and since when."""
    sim.sim.config.auth_broken = True
    daemon = await run_daemon(make_settings(spool__rescan_seconds=0.5))
    registry = daemon.metrics.registry
    drop(spool_root, "contact/first.csv", contacts_csv(2))
    await wait_for(lambda: not daemon.instance().policy.gate.is_open, what="uploads paused")
    oldest = time.time()
    for i in range(300):
        drop(spool_root, f"contact/b{i:03}.csv", contacts_csv(2, tag=str(i)))
    inbox = spool_root / "inbox" / "contact"
    scans = daemon.watcher.scans
    await wait_for(lambda: daemon.watcher.scans >= scans + 2, what="two rescans")
    waiting = len(list(inbox.iterdir()))
    assert waiting > 250, "most of the backlog waits in inbox/"
    assert registry.get_sample_value("bulkdrop_inbox_files") == waiting
    age = registry.get_sample_value("bulkdrop_inbox_oldest_file_age_seconds")
    assert age is not None and 0 < age <= time.time() - oldest + 2


@pytest.mark.parametrize("force_polling", [False, True], ids=["inotify", "watchfiles"])
async def test_files_in_folders_made_after_start_are_seen_by_their_events(
        make_settings, run_daemon, spool_root: Path, force_polling: bool) -> None:
    """No rescan will come: each new folder, at any depth, is watched as it appears,
    and what was put in it before its watch was set is found all the same."""
    await run_daemon(make_settings(spool__rescan_seconds=600,
                                   spool__force_polling=force_polling))
    deep = spool_root / "inbox" / "contact" / "2026" / "12"
    deep.mkdir(parents=True)
    drop(spool_root, "contact/2026/12/a.csv", contacts_csv(2))
    await wait_for(lambda: (spool_root / "done" / "contact" / "2026" / "12" /
                            "a.csv.result.json").exists(), what="a.csv filed")
    drop(spool_root, "contact/2026/12/b.csv", contacts_csv(2, tag="b"))  # watched by now
    await wait_for(lambda: (spool_root / "done" / "contact" / "2026" / "12" /
                            "b.csv.result.json").exists(), what="b.csv filed")


async def test_inotify_watches_folders_never_through_a_link(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    (inbox / "contact").mkdir(parents=True)
    (outside / "deep").mkdir(parents=True)
    (inbox / "linked").symlink_to(outside, target_is_directory=True)
    (inbox / "moving").mkdir()
    events = InboxEvents(inbox)
    seen: list[Path | None] = []

    async def read() -> None:
        async for batch in events.batches():
            seen.extend(batch)

    reader = asyncio.create_task(read())
    try:
        await wait_for(lambda: len(events.folders) == 3, what="three folders watched")
        assert set(events.folders.values()) == {inbox, inbox / "contact", inbox / "moving"}
        # A folder moved away is forgotten: what happens in it later names no inbox path.
        (inbox / "moving").rename(outside / "moved")
        await wait_for(lambda: len(events.folders) == 2, what="the moved folder forgotten")
        (outside / "moved" / "x.csv").write_text("a\n")
        (outside / "deep" / "y.csv").write_text("a\n")
        (inbox / "contact" / "z.csv").write_text("a\n")
        await wait_for(lambda: inbox / "contact" / "z.csv" in seen, what="z.csv's event")
        assert all(p is None or inbox in p.parents for p in seen)
        assert not [p for p in seen if p is not None and p.name in ("x.csv", "y.csv")]
    finally:
        events.stop()
        await asyncio.wait_for(reader, 5)


async def test_a_file_landing_before_the_watches_is_found_without_a_rescan(
        make_settings, run_daemon, spool_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The instant a start cannot pin down: the file lands after a walk of inbox/ could
    have listed it and before its folder has a watch (so it has no event)."""
    landed = spool_root / "done" / "contact" / "early.csv.result.json"
    watch_tree = InboxEvents.watch_tree
    daemon_box: list[object] = []

    def late_watches(self: InboxEvents, top: Path) -> bool:
        if top == spool_root / "inbox":
            deadline = time.monotonic() + 1.0  # a walk, if one runs first, is done by then
            while time.monotonic() < deadline and not any(
                    getattr(d, "watcher", None) and d.watcher.scans for d in daemon_box):
                time.sleep(0.01)
            drop(spool_root, "contact/early.csv", contacts_csv(2))
        return watch_tree(self, top)

    monkeypatch.setattr(InboxEvents, "watch_tree", late_watches)
    daemon_box.append(await run_daemon(make_settings(spool__rescan_seconds=3600)))
    await wait_for(lambda: landed.exists(), timeout=10, what="early.csv filed")
