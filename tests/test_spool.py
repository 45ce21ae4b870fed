"""Spool mechanics on real files: claim by rename, filing without overwrite, repeatable finish."""

from __future__ import annotations

import os
import threading
from pathlib import Path, PurePosixPath

import pytest

from daemon.fileref import hard_links_protected
from daemon.spool import Claimed, FileChanged, Spool, is_ignored_name
from tests.helpers import claimed_file, new_spool


def test_claim_moves_into_processing_and_keeps_the_relative_path(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    claimed = claimed_file(spool, "contact/sub/a.csv")
    assert claimed.rel == PurePosixPath("contact/sub/a.csv")
    assert claimed.path.parent == spool.processing / "contact" / "sub"
    assert claimed.path.exists() and not (spool.inbox / "contact/sub/a.csv").exists()
    again = spool.claimed_from_path(claimed.path)
    assert again == claimed


def test_only_one_of_many_claimers_wins(tmp_path: Path) -> None:
    spools = [new_spool(tmp_path, f"n{i}") for i in range(8)]
    target = spools[0].inbox / "contact" / "race.csv"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"a\n1\n")
    results: list[Claimed | None] = []
    barrier = threading.Barrier(len(spools))

    def claim(spool: Spool) -> None:
        barrier.wait()
        results.append(spool.claim(target))

    threads = [threading.Thread(target=claim, args=(s,)) for s in spools]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1


def test_a_file_changed_after_settling_is_not_claimed(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    path = spool.inbox / "contact" / "growing.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"a\n1\n")
    st = path.stat()
    with path.open("ab") as fh:
        fh.write(b"2\n")
    with pytest.raises(FileChanged):
        spool.claim(path, expect=(st.st_size, st.st_mtime_ns))
    assert path.exists()


def test_a_very_long_name_is_claimed_under_a_shortened_name(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    name = "x" * 250 + ".csv"
    claimed = claimed_file(spool, f"contact/{name}")
    assert claimed.rel.name == name
    assert len(claimed.path.name.encode()) <= 255 and claimed.path.name.endswith(".csv")


def test_ignore_rules() -> None:
    for name in (".x.csv", "~x.csv", "a.tmp", "a.PART", "a.partial", "a.crdownload", "a.swp"):
        assert is_ignored_name(name), name
    for name in ("a.csv", "a.tsv", "a.TXT", "a.xlsx", "tmp.csv", "a~.csv"):
        assert not is_ignored_name(name), name


def test_unwritable_spool_is_a_clear_error(tmp_path: Path) -> None:
    from daemon.spool import SpoolError

    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("not a folder")
        with pytest.raises(SpoolError, match=str(blocker)):
            Spool(blocker / "spool", "n").ensure_layout()
        return
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(SpoolError, match="locked"):
        Spool(locked / "spool", "n").ensure_layout()


def test_a_hard_linked_file_is_refused_only_where_anyone_may_link_any_file(
        tmp_path: Path) -> None:
    setting = tmp_path / "protected_hardlinks"
    setting.write_text("1\n")
    assert hard_links_protected(str(setting))
    setting.write_text("0\n")
    assert not hard_links_protected(str(setting))
    assert not hard_links_protected(str(tmp_path / "missing"))

    spool = new_spool(tmp_path)
    original = tmp_path / "elsewhere.csv"
    for refuse in (False, True):
        original.write_bytes(b"a,b\n1,2\n")
        dropped = spool.inbox / "contact" / f"linked-{refuse}.csv"
        dropped.parent.mkdir(parents=True, exist_ok=True)
        os.link(original, dropped)
        spool.refuse_hard_links = refuse
        claimed = spool.claim(dropped)
        assert claimed is not None
        assert (claimed.problem is not None and "2 hard links" in claimed.problem) is refuse
        original.unlink()
