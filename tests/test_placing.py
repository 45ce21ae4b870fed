"""Placing on real files: a free name for the file and every sidecar, nothing of anyone's
overwritten, every step repeatable after a crash."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from daemon.placing import (
    ERRORS_SUFFIX,
    FILED_NAME_MAX,
    RESULT_SUFFIX,
    SIDECARS,
    Placing,
    Sidecar,
    Skip,
    fit,
)
from daemon.spool import Claimed, Spool
from tests.helpers import claimed_file, new_spool


def _filing(spool: Spool, claimed: Claimed, ok: bool, result: dict[str, object],
            errors: bytes | None = None) -> Placing:
    sidecars = ([Sidecar(ERRORS_SUFFIX, errors)] if errors is not None else []) + [
        Sidecar(RESULT_SUFFIX, json.dumps(result).encode())]
    return Placing(spool, claimed, ok, sidecars)


def _file(filing: Placing, resumed: bool = False) -> Path:
    """What the daemon does: its own name first, then the next free one."""
    filing.prepare()
    dest = filing.natural()
    while not filing.place(dest, resumed):
        chosen = filing.choose()
        assert chosen is not None
        dest = chosen
    return dest


def test_filing_never_overwrites_and_the_result_follows_the_name(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    dests = []
    for i in range(3):
        claimed = claimed_file(spool, "contact/a.csv", f"a\n{i}\n".encode())
        dests.append(_file(_filing(spool, claimed, True, {"n": i})).name)
    assert dests == ["a.csv", "a-1.csv", "a-2.csv"]
    folder = spool.done / "contact"
    for i, name in enumerate(dests):
        assert (folder / name).read_bytes() == f"a\n{i}\n".encode()
        assert json.loads((folder / f"{name}.result.json").read_text())["n"] == i
    assert not list(spool.processing.rglob("*")), "claim and temporary files are gone"


def test_filing_repeated_after_a_crash_files_the_file_once(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    claimed = claimed_file(spool, "contact/b.csv")
    filing = _filing(spool, claimed, False, {"status": "FAILED"}, b"x\r\n")
    filing.prepare()
    dest = filing.natural()
    dest.parent.mkdir(parents=True)
    os.link(claimed.path, dest)  # a crash here: the file linked, no result yet
    os.link(filing.tmps[ERRORS_SUFFIX], dest.with_name("b.csv.errors.csv"))  # and one more
    again = _filing(spool, claimed, False, {"status": "FAILED"}, b"x\r\n")
    assert _file(again, resumed=True) == dest      # the restart files it again, in place
    assert sorted(p.name for p in dest.parent.iterdir()) == [
        "b.csv", "b.csv.errors.csv", "b.csv.result.json"]
    # A crash before the ledger heard of it: the restart finds it all done.
    assert _filing(spool, claimed, False, {"status": "FAILED"}, b"x\r\n").place(dest, True)
    assert not _filing(spool, claimed, False, {}).place(dest, resumed=False)
    assert dest.read_bytes() == b"a,b\n1,2\n"


def test_a_sidecar_left_by_a_crash_is_replaced_never_rewritten_in_place(tmp_path: Path) -> None:
    """Written again after a restart: a new file, so a link made from the old one (a
    sidecar already published) keeps what it held."""
    spool = new_spool(tmp_path)
    claimed = claimed_file(spool, "contact/h.csv")
    first = _filing(spool, claimed, True, {"run": 1})
    first.prepare()
    published = tmp_path / "published.json"
    os.link(first.tmps[RESULT_SUFFIX], published)
    again = _filing(spool, claimed, True, {"run": 2})
    again.prepare()
    assert json.loads(published.read_text()) == {"run": 1}
    assert json.loads(again.tmps[RESULT_SUFFIX].read_text()) == {"run": 2}
    assert os.stat(published).st_nlink == 1
    dest = _file(again)
    assert json.loads(dest.with_name("h.csv.result.json").read_text()) == {"run": 2}


def test_a_filing_cut_short_while_tidying_is_done_again_on_the_same_object(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Filing retries the same Placing after an I/O error: the sidecars already tidied
    away are taken as published, the rest is finished."""
    spool = new_spool(tmp_path)
    claimed = claimed_file(spool, "contact/r.csv")
    filing = _filing(spool, claimed, False, {"status": "FAILED"}, b"x\r\n")
    filing.prepare()
    dest = filing.natural()
    real_unlink = Path.unlink

    def failing_once(self: Path, missing_ok: bool = False) -> None:
        if self == filing.tmps[RESULT_SUFFIX] and not getattr(failing_once, "failed", False):
            failing_once.failed = True  # type: ignore[attr-defined]
            raise OSError(errno.EIO, "injected", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", failing_once)
    with pytest.raises(OSError, match="injected"):
        filing.place(dest, resumed=False)
    assert filing.place(dest, resumed=True)
    assert sorted(p.name for p in dest.parent.iterdir()) == [
        "r.csv", "r.csv.errors.csv", "r.csv.result.json"]
    assert json.loads(dest.with_name("r.csv.result.json").read_text()) == {"status": "FAILED"}
    assert not list(spool.processing.rglob("*"))


@pytest.mark.parametrize("taken", ["e.csv", *(f"e.csv{suffix}" for suffix in SIDECARS)])
def test_a_name_is_free_only_when_the_file_and_every_sidecar_name_are(
        tmp_path: Path, taken: str) -> None:
    """A user's own file named like a sidecar (e.csv.errors.csv) is never overwritten by
    the errors CSV of another file, nor does it end up looking like that file's."""
    spool = new_spool(tmp_path)
    folder = spool.done / "contact"
    folder.mkdir(parents=True)
    (folder / taken).write_text("someone else's")
    claimed = claimed_file(spool, "contact/e.csv", b"mine\n")
    dest = _file(_filing(spool, claimed, True, {"n": 1}, b"line,message\r\n"))
    assert dest.name == "e-1.csv"
    assert (folder / taken).read_text() == "someone else's"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [taken, "e-1.csv", "e-1.csv.errors.csv", "e-1.csv.result.json"])


def test_a_sidecar_name_taken_at_the_last_moment_is_not_overwritten(tmp_path: Path) -> None:
    """Taken between the check and the link: the link fails, what was put there is taken
    back, and the file goes under the next free name."""
    spool = new_spool(tmp_path)
    claimed = claimed_file(spool, "contact/f.csv", b"mine\n")
    filing = _filing(spool, claimed, True, {"n": 1}, b"errors\r\n")
    filing.prepare()
    dest = filing.natural()
    dest.parent.mkdir(parents=True)
    real_free = filing._free

    def free_then_taken(name: str, folder: int) -> bool:
        answer = real_free(name, folder)
        if name == "f.csv":
            (dest.parent / "f.csv.result.json").write_text("a person's")
        return answer

    filing._free = free_then_taken  # type: ignore[method-assign]
    assert not filing.place(dest, resumed=False)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.csv.result.json"]
    assert claimed.path.read_bytes() == b"mine\n"
    filing._free = real_free  # type: ignore[method-assign]
    chosen = filing.choose()
    assert chosen is not None and chosen.name == "f-1.csv"
    assert filing.place(chosen, resumed=False)
    assert (dest.parent / "f.csv.result.json").read_text() == "a person's"


def test_a_file_gone_from_processing_is_only_taken_as_filed_when_resumed(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    other = spool.done / "contact" / "g.csv"
    other.parent.mkdir(parents=True)
    other.write_text("someone else's")
    claimed = claimed_file(spool, "contact/g.csv")
    filing = _filing(spool, claimed, True, {"n": 1})
    filing.prepare()
    claimed.path.unlink()  # removed by hand while its job ran
    assert not filing.place(other, resumed=False)      # not ours: never written over
    assert filing.choose() is None                      # and it is gone
    assert filing.place(other, resumed=True)           # the ledger says we put it there
    assert other.read_text() == "someone else's"


def test_without_hard_links_filing_renames_and_is_repeatable(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    # fs.protected_hardlinks refuses links to files the daemon does not own; root is
    # exempt, so the refusal is the one OS edge provoked by hand here.
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    spool = new_spool(tmp_path)
    taken = spool.done / "contact" / "c.csv"
    taken.parent.mkdir(parents=True)
    taken.write_text("someone else's")
    claimed = claimed_file(spool, "contact/c.csv", b"mine\n")
    monkeypatch.setattr(os, "link", refuse)
    filing = _filing(spool, claimed, True, {"n": 1}, b"e\r\n")
    dest = _file(filing)
    assert dest.name == "c-1.csv"
    assert filing.place(dest, resumed=True)  # repeated by a restart: still there
    assert dest.read_bytes() == b"mine\n" and taken.read_text() == "someone else's"
    assert json.loads(dest.with_name("c-1.csv.result.json").read_text()) == {"n": 1}
    assert not claimed.path.exists()


@pytest.mark.parametrize("length", [200, 238, 239, 242, 243, 250, 255])
def test_names_up_to_255_bytes_are_filed_with_every_sidecar(tmp_path: Path,
                                                           length: int) -> None:
    spool = new_spool(tmp_path)
    name = "é" * ((length - 4) // 2) + "x" * ((length - 4) % 2) + ".csv"
    assert len(name.encode()) == length
    claimed = claimed_file(spool, f"contact/{name}")
    assert claimed.rel.name == name
    dests = [_file(_filing(spool, claimed, False, {"file": name}, b"e\r\n"))]
    again = claimed_file(spool, f"contact/{name}")
    dests.append(_file(_filing(spool, again, False, {"file": name}, b"e\r\n")))
    for dest in dests:
        assert len(dest.name.encode()) <= FILED_NAME_MAX and dest.name.endswith(".csv")
        assert dest.exists() and dest.with_name(dest.name + RESULT_SUFFIX).exists()
    assert dests[0] != dests[1]
    if length <= FILED_NAME_MAX:
        assert dests[0].name == name
    else:
        assert dests[0].name == fit(name) != name  # shortened, marked, the same every time


def test_a_long_name_recorded_by_an_older_release_is_filed_under_a_fitting_one(
        tmp_path: Path) -> None:
    """Such a filing was linked under the full name and then failed on its result's
    temporary name: the restart takes that link back and files it where it fits."""
    spool = new_spool(tmp_path)
    name = "z" * 247 + ".csv"
    claimed = claimed_file(spool, f"contact/{name}")
    old = spool.failed / "contact" / name
    old.parent.mkdir(parents=True)
    os.link(claimed.path, old)
    filing = _filing(spool, claimed, False, {"n": 1})
    filing.prepare()
    assert not filing.place(old, resumed=True)
    assert not old.exists()
    chosen = filing.choose()
    assert chosen is not None and filing.place(chosen, resumed=True)
    assert [p.name for p in old.parent.iterdir() if not p.name.endswith(".json")] == [
        fit(name)]


def test_a_sidecar_whose_writer_skips_is_left_out_and_the_rest_filed(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    claimed = claimed_file(spool, "contact/s.csv")

    def cannot(fh: object) -> None:
        raise Skip

    placing = Placing(spool, claimed, True, [Sidecar(".failed.csv", cannot),
                                             Sidecar(RESULT_SUFFIX, b"{}")])
    dest = _file(placing)
    assert dest.exists() and dest.with_name("s.csv.result.json").read_bytes() == b"{}"
    assert not dest.with_name("s.csv.failed.csv").exists()
    assert not list(spool.processing.rglob("*")), "no temporary left behind"
