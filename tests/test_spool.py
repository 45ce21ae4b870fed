"""Spool mechanics on real files: claim by rename, filing without overwrite, repeatable finish."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path, PurePosixPath

import pytest

from daemon.spool import Claimed, FileChanged, Spool, is_ignored_name


def _spool(tmp_path: Path, node: str = "n1") -> Spool:
    spool = Spool(tmp_path / "spool", node)
    spool.ensure_layout()
    return spool


def _claimed_file(spool: Spool, rel: str, data: bytes = b"a,b\n1,2\n") -> Claimed:
    path = spool.inbox / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    claimed = spool.claim(path)
    assert claimed is not None
    return claimed


def test_claim_moves_into_processing_and_keeps_the_relative_path(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    claimed = _claimed_file(spool, "contact/sub/a.csv")
    assert claimed.rel == PurePosixPath("contact/sub/a.csv")
    assert claimed.path.parent == spool.processing / "contact" / "sub"
    assert claimed.path.exists() and not (spool.inbox / "contact/sub/a.csv").exists()
    again = spool.claimed_from_path(claimed.path)
    assert again == claimed


def test_only_one_of_many_claimers_wins(tmp_path: Path) -> None:
    spools = [_spool(tmp_path, f"n{i}") for i in range(8)]
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


def test_finish_never_overwrites_and_result_follows_the_name(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    dests = []
    for i in range(3):
        claimed = _claimed_file(spool, "contact/a.csv", f"a\n{i}\n".encode())
        dest = _file(spool, claimed, ok=True)
        spool.complete(claimed, dest, {"file": "contact/a.csv", "n": i}, None)
        dests.append(dest.name)
    assert dests == ["a.csv", "a-1.csv", "a-2.csv"]
    for i, name in enumerate(dests):
        folder = spool.done / "contact"
        assert (folder / name).read_bytes() == f"a\n{i}\n".encode()
        assert json.loads((folder / f"{name}.result.json").read_text())["n"] == i
    assert not any(spool.processing.rglob("*.csv"))


def _file(spool: Spool, claimed: Claimed, ok: bool) -> Path:
    dest = spool.choose_dest(claimed, ok)
    assert spool.move_to(claimed, dest)
    return dest


def test_finish_repeated_after_a_crash_files_the_file_once(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    claimed = _claimed_file(spool, "contact/b.csv")
    first = _file(spool, claimed, ok=False)     # crash here: linked, no result yet
    second = _file(spool, claimed, ok=False)    # the restart files it again
    assert first == second == spool.failed / "contact" / "b.csv"
    spool.complete(claimed, second, {"status": "FAILED"}, b"x\r\n")
    # Crash before the ledger heard of it: the restart finds it filed, result and all.
    assert spool.move_to(claimed, second, resumed=True)
    assert not spool.move_to(claimed, second)  # (a fresh filing: gone from processing/)
    assert sorted(p.name for p in (spool.failed / "contact").iterdir()) == [
        "b.csv", "b.csv.errors.csv", "b.csv.result.json"]


def test_own_name_is_refused_when_another_file_or_its_result_holds_it(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    first = _claimed_file(spool, "contact/d.csv", b"first\n")
    dest = spool.natural_dest(first, ok=True)
    assert dest == spool.done / "contact" / "d.csv" and not dest.parent.exists()
    assert spool.move_to(first, dest)                     # free: the folder is made too
    spool.complete(first, dest, {"n": 1}, None)
    second = _claimed_file(spool, "contact/d.csv", b"second\n")
    assert not spool.move_to(second, spool.natural_dest(second, ok=True))   # a file there
    dest.unlink()  # a person tidied the CSV away but left its result
    assert not spool.move_to(second, spool.natural_dest(second, ok=True))   # a result there
    assert spool.choose_dest(second, ok=True).name == "d-1.csv"
    assert second.path.read_bytes() == b"second\n"
    assert json.loads((spool.done / "contact" / "d.csv.result.json").read_text()) == {"n": 1}


def test_a_file_gone_from_processing_is_only_taken_as_filed_when_resumed(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    other = spool.done / "contact" / "e.csv"
    other.parent.mkdir(parents=True)
    other.write_text("someone else's")
    claimed = _claimed_file(spool, "contact/e.csv")
    claimed.path.unlink()  # removed by hand while its job ran
    assert not spool.move_to(claimed, other)               # not ours: never written over
    assert spool.move_to(claimed, other, resumed=True)     # the ledger says we put it there


def test_without_hard_links_filing_renames_and_is_repeatable(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    # fs.protected_hardlinks refuses links to files the daemon does not own; root is
    # exempt, so the refusal is the one OS edge provoked by hand here.
    def refuse(src: object, dst: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    spool = _spool(tmp_path)
    taken = spool.done / "contact" / "c.csv"
    taken.parent.mkdir(parents=True)
    taken.write_text("someone else's")
    claimed = _claimed_file(spool, "contact/c.csv", b"mine\n")
    dest = spool.choose_dest(claimed, ok=True)
    assert dest.name == "c-1.csv"
    assert spool.move_to(claimed, dest)
    assert spool.move_to(claimed, dest, resumed=True)  # repeated by a restart: still there
    assert dest.read_bytes() == b"mine\n" and taken.read_text() == "someone else's"
    assert not claimed.path.exists()


def test_a_file_changed_after_settling_is_not_claimed(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
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
    spool = _spool(tmp_path)
    name = "x" * 250 + ".csv"
    claimed = _claimed_file(spool, f"contact/{name}")
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
