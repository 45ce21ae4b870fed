"""What a careless user or an attacker drops: links swapped in after settling, FIFOs,
sockets, folders named like files, names that are not UTF-8 or 255 bytes long, names
like another file's sidecar, folders the daemon may not read. Each ends in failed/ or
done/ with a reason, nothing is read through a link, and the daemon stays up."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest

from daemon.fileref import FileRef, NotAFile
from daemon.sim import SimServer
from tests.conftest import Users
from tests.helpers import contacts_csv, drop, free_port, result_of, wait_for
from tests.procs import DaemonProc, daemons, write_config

SECRET = b"email,api_key\r\nceo@example.com,TOPSECRET-7d1e\r\n"


def _sent(sim: SimServer) -> bytes:
    """Everything the API was sent, every job's body."""
    return b"".join(job.body or b"" for job in sim.sim.jobs.values())


async def _result(root: Path, where: str, rel: str, timeout: float = 20) -> dict:
    path = root / where / rel
    await wait_for(lambda: path.with_name(path.name + ".result.json").exists(), timeout,
                   what=f"{where}/{rel} and its result")
    return result_of(path)


def _dropped_by(users: Users, target: Path, text: str) -> None:
    """The dropper writes a file elsewhere and renames it into inbox/."""
    source = users.base / f"source-{target.name}"
    source.write_text(text)
    users.as_dropper(f"cp {source} {target.parent}/.{target.name}.tmp && "
                     f"mv {target.parent}/.{target.name}.tmp {target}")


def _write(path: bytes, data: bytes) -> None:
    """A file under a name given as bytes (any bytes but / and NUL)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def _log_times(proc: DaemonProc, event: str) -> list[float]:
    return [datetime.fromisoformat(e["timestamp"]).timestamp() for e in proc.events()
            if e.get("event") == event]


async def test_a_link_swapped_in_after_the_file_settled_is_never_read(
        sim: SimServer, users: Users) -> None:
    """The attack: a decoy with the secret's size and mtime settles while the daemon is
    busy; a link to the secret (mode 0600, the daemon's own) is renamed over it before
    the claim. The daemon must move the link to failed/ and never read what it names."""
    sim.sim.config.job_seconds = 120
    private = users.base / "private"
    private.mkdir()
    users.as_daemon_user(private, 0o700)
    secret = private / "secret.csv"
    secret.write_bytes(SECRET)
    users.as_daemon_user(secret, 0o600)
    root = users.spool()
    config = write_config(users.base / "c.toml", sim.base_url, root,
                          spool={"settle_seconds": 0.3, "rescan_seconds": 0.5,
                                 "default_object": "contact"},
                          workers={"uploads": 1, "max_active_jobs": 1},
                          log={"level": "debug"})
    async with daemons() as started:
        daemon = await users.daemon(config, users.base / "d.log").start()
        started.append(daemon)
        inbox = root / "inbox" / "contact"
        await wait_for((root / "inbox").is_dir, what="the spool made by the daemon")
        users.as_dropper(f"mkdir -p {inbox}")
        _dropped_by(users, inbox / "first.csv", contacts_csv(2, "a"))
        await wait_for(lambda: len(sim.sim.jobs) == 1, what="the first job running")
        _dropped_by(users, inbox / "second.csv", contacts_csv(2, "b"))
        await wait_for(lambda: any((root / "processing").rglob("*second.csv")),
                       what="the second file claimed, waiting for the job slot")
        st = secret.stat()
        decoy_at = time.time()
        seconds, nanoseconds = divmod(st.st_mtime_ns, 10**9)
        users.as_dropper(f"truncate -s {st.st_size} {inbox}/.x.tmp && "
                         f"touch -d @{seconds}.{nanoseconds:09d} {inbox}/.x.tmp && "
                         f"mv {inbox}/.x.tmp {inbox}/x.csv")
        # Handed on (settled) and waiting for the claimer: two walks of inbox/ later.
        await wait_for(lambda: len([t for t in _log_times(daemon, "scan.done")
                                    if t > decoy_at]) >= 2, what="two scans after the decoy")
        users.as_dropper(f"ln -s {secret} {inbox}/.link.tmp && mv -T {inbox}/.link.tmp "
                         f"{inbox}/x.csv")
        sim.sim.config.job_seconds = 0.2
        sim.sim.cancel(sim.sim.jobs["1001"])  # frees the job slot: the claims go on
        result = await _result(root, "failed", "contact/x.csv")
        assert result["status"] == "REJECTED"
        assert "a symbolic link" in result["reason"]
        assert result["sha256"] is None and result["bytes"] is None
        filed = root / "failed" / "contact" / "x.csv"
        assert filed.is_symlink() and os.readlink(filed) == str(secret)
        assert b"TOPSECRET" not in _sent(sim)
        assert secret.read_bytes() == SECRET
        assert daemon.running


def test_a_file_replaced_after_its_claim_is_never_read(tmp_path: Path) -> None:
    """Reads check the inode they open against the one claimed."""
    path = tmp_path / "claimed.csv"
    path.write_bytes(b"a,b\n1,2\n")
    st = path.stat()
    ref = FileRef(path, (st.st_dev, st.st_ino))
    with ref.open_binary() as fh:
        assert fh.read() == b"a,b\n1,2\n"
    replacement = tmp_path / "other.csv"
    replacement.write_bytes(b"secret\n")
    replacement.rename(path)
    with pytest.raises(NotAFile, match="replaced after it was claimed"):
        ref.open_binary()
    path.unlink()
    path.symlink_to(replacement)
    with pytest.raises(NotAFile, match="symbolic link"):
        FileRef(path).open_binary()


async def test_what_is_not_a_file_is_filed_unopened_with_a_reason(
        make_settings, run_daemon, sim: SimServer, spool_root: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.csv"
    target.write_bytes(SECRET)
    await run_daemon(make_settings())
    inbox = spool_root / "inbox" / "contact"
    inbox.mkdir(parents=True)
    (inbox / "link.csv").symlink_to(target)
    (inbox / "dangling.csv").symlink_to(tmp_path / "missing.csv")
    os.mkfifo(inbox / "pipe.csv")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(inbox / "sock.csv"))
    folder = inbox / "folder.csv"
    folder.mkdir()
    (folder / "inner.csv").write_text(contacts_csv(2))
    expected = {"link.csv": "a symbolic link", "dangling.csv": "a symbolic link",
                "pipe.csv": "a named pipe (FIFO)", "sock.csv": "a socket",
                "folder.csv": "a folder named like a file"}
    if os.geteuid() == 0:
        os.mknod(inbox / "null.csv", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        expected["null.csv"] = "a device"
    drop(spool_root, "contact/good.csv", contacts_csv(2))
    try:
        for name, reason in expected.items():
            result = await _result(spool_root, "failed", f"contact/{name}")
            assert result["status"] == "REJECTED" and reason in result["reason"], name
        assert (spool_root / "failed/contact/link.csv").is_symlink()
        assert stat.S_ISFIFO((spool_root / "failed/contact/pipe.csv").lstat().st_mode)
        assert (spool_root / "failed/contact/folder.csv/inner.csv").exists()
        assert (await _result(spool_root, "done", "contact/good.csv"))["status"] == "COMPLETE"
    finally:
        listener.close()
    assert not list(inbox.iterdir())
    assert b"TOPSECRET" not in _sent(sim)
    assert [job.filename for job in sim.sim.jobs.values()] == ["good.csv"]


async def test_a_name_that_is_not_utf8_is_rejected_under_a_safe_name(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    daemon = await run_daemon(make_settings())
    inbox = os.fsencode(spool_root / "inbox")
    os.makedirs(os.path.join(inbox, b"contact"))
    for rel in (b"contact/bad\xff.csv", b"caf\xe9/x.csv"):
        _write(os.path.join(inbox, rel), contacts_csv(2).encode())
    for rel, shown in (("contact/bad%FF.csv", "bad\\xff.csv"), ("caf%E9/x.csv", "caf\\xe9")):
        result = await _result(spool_root, "failed", rel)
        assert result["status"] == "REJECTED" and result["file"] == rel
        assert "not UTF-8" in result["reason"] and shown in result["reason"]
    drop(spool_root, "contact/after.csv", contacts_csv(2))
    assert (await _result(spool_root, "done", "contact/after.csv"))["status"] == "COMPLETE"
    assert not any(t.done() for t in daemon.core), "the watcher and claimer still run"
    assert [job.filename for job in sim.sim.jobs.values()] == ["after.csv"]


@pytest.mark.parametrize("length", [238, 239, 240, 243, 250, 255])
async def test_names_up_to_255_bytes_are_filed(make_settings, run_daemon, sim: SimServer,
                                               spool_root: Path, length: int) -> None:
    await run_daemon(make_settings())
    name = "n" * (length - 4) + ".csv"
    drop(spool_root, f"contact/{name}", contacts_csv(2, bad_every=2))  # an errors CSV too
    bad = "b" * (length - 4) + ".csv"
    drop(spool_root, f"contact/{bad}", "email\n")   # rejected: header only
    for where, dropped in (("done", name), ("failed", bad)):
        folder = spool_root / where / "contact"
        await wait_for(lambda f=folder: any(p.name.endswith(".result.json")
                                            for p in f.glob("*")) if f.exists() else False,
                       what=f"a result in {where}/")
        results = [p for p in folder.iterdir() if p.name.endswith(".result.json")]
        assert len(results) == 1
        assert json.loads(results[0].read_text())["file"] == f"contact/{dropped}"
        assert all(len(p.name.encode()) <= 255 for p in folder.iterdir())
    # The result is written before the file is moved beside it.
    await wait_for(lambda: not any((spool_root / "processing").rglob("*.csv")),
                   what="both files out of processing/")


async def test_a_users_file_named_like_a_sidecar_is_never_overwritten(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    await run_daemon(make_settings())
    theirs = contacts_csv(2, tag="theirs")
    drop(spool_root, "contact/e.csv.errors.csv", theirs)
    await _result(spool_root, "done", "contact/e.csv.errors.csv")
    drop(spool_root, "contact/e.csv", contacts_csv(4, bad_every=2))  # failing records
    folder = spool_root / "done" / "contact"
    await wait_for(lambda: (folder / "e-1.csv.result.json").exists(), what="e.csv filed")
    assert (folder / "e.csv.errors.csv").read_text() == theirs
    assert json.loads((folder / "e-1.csv.result.json").read_text())["file"] == "contact/e.csv"
    assert (folder / "e-1.csv.errors.csv").read_text().count("\n") == 3  # header + 2
    assert not (folder / "e.csv").exists()


async def test_a_folder_it_cannot_read_is_skipped_reported_and_taken_once_readable(
        sim: SimServer, users: Users) -> None:
    root = users.spool()
    port = free_port()
    config = write_config(users.base / "c.toml", sim.base_url, root,
                          spool={"rescan_seconds": 0.3, "default_object": "contact"},
                          http={"listen": f"127.0.0.1:{port}"}, log={"level": "debug"})
    async with daemons() as started, aiohttp.ClientSession() as http:
        daemon = await users.daemon(config, users.base / "d.log").start()
        started.append(daemon)
        inbox = root / "inbox" / "contact"
        await wait_for((root / "inbox").is_dir, what="the spool made by the daemon")
        users.as_dropper(f"mkdir -p {inbox}")
        private = inbox / "private"
        private.mkdir()
        drop(root, "contact/private/inside.csv", contacts_csv(2))
        users.as_daemon_user(private, 0o000)
        await wait_for(lambda: daemon.seen("spool.unreadable_dir") == 1,
                       what="spool.unreadable_dir")
        drop(root, "contact/open.csv", contacts_csv(2))
        assert (await _result(root, "done", "contact/open.csv"))["status"] == "COMPLETE"

        async def readyz() -> tuple[int, dict]:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as answer:
                return answer.status, await answer.json()

        code, body = await readyz()
        assert code == 503 and any("cannot be read" in p and str(private) in p
                                   for p in body["problems"])
        scans = daemon.seen("scan.done")
        await wait_for(lambda: daemon.seen("scan.done") >= scans + 3, what="3 more scans")
        assert daemon.seen("spool.unreadable_dir") == 1, "logged once, not at every scan"
        os.chmod(private, 0o775)
        assert (await _result(root, "done", "contact/private/inside.csv"))["status"] == \
            "COMPLETE"
        await wait_for(lambda: daemon.seen("spool.readable_again") == 1, what="readable again")
        assert (await readyz())[0] == 200
        assert daemon.running
