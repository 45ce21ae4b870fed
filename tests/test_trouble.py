"""Trouble that is not a file's fault never strands it: a dropper whose umask locks the
daemon out of a folder. The daemon says so (log, metrics, /readyz, bulkdrop status) until
it is fixed, then claims the file. (A read-only done/ is in test_filing.py; a full disk
and a damaged or empty ledger in test_ledger.py.)"""

from __future__ import annotations

import aiohttp

from daemon.sim import SimServer
from tests.conftest import Users
from tests.helpers import bulkdrop_status, contacts_csv, free_port, http_get, wait_for
from tests.procs import daemons, write_config


async def test_files_a_dropper_locked_the_daemon_out_of_are_shown_until_fixed(
        sim: SimServer, users: Users) -> None:
    """A dropper with umask 022: in inbox/contact/ (made by the daemon, group-writable)
    that is fine; a folder they make themselves locks the daemon out."""
    root = users.spool()
    port = free_port()
    config = write_config(users.base / "c.toml", sim.base_url, root,
                          spool={"rescan_seconds": 0.3}, http={"listen": f"127.0.0.1:{port}"})
    config.write_text(config.read_text() + "[objects.contact]\nrequire_columns = []\n")
    base = f"http://127.0.0.1:{port}"
    async with daemons() as started, aiohttp.ClientSession() as http:
        daemon = await users.daemon(config, users.base / "d.log").start()
        started.append(daemon)
        inbox = root / "inbox"
        await wait_for((inbox / "contact").is_dir, what="inbox/contact/ made at start")
        assert (inbox / "contact").stat().st_gid == users.droppers_gid
        source = users.base / "people.csv"
        source.write_text(contacts_csv(2))
        users.as_dropper(f"cp {source} {inbox}/contact/a.csv && mkdir {inbox}/account && "
                         f"cp {source} {inbox}/account/b.csv", umask=0o022)
        await wait_for(lambda: (root / "done/contact/a.csv.result.json").exists(),
                       what="the file in inbox/contact/ done")
        await wait_for(lambda: daemon.seen("file.claim_failed") == 1, what="claim_failed")
        code, body = await http_get(http, base + "/readyz")
        assert code == 503 and "cannot be claimed" in body and "account/b.csv" in body
        _, metrics = await http_get(http, base + "/metrics")
        assert "bulkdrop_inbox_unclaimable_files 1.0" in metrics
        assert "cannot be claimed" in bulkdrop_status(config)
        users.as_dropper(f"chmod g+w {inbox}/account")
        await wait_for(lambda: (root / "done/account/b.csv.result.json").exists(),
                       what="claimed once the folder is writable")
        assert daemon.seen("file.claim_failed") == 1, "logged once, not at every rescan"
        assert (await http_get(http, base + "/readyz"))[0] == 200
