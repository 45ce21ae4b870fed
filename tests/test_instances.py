"""Several connector instances in one daemon: each with its own credentials (from the file,
the environment, ``_FILE`` variables and systemd credentials), its own folder below
inbox/, its own limits and rate, and its own pause: one whose credentials are refused
holds up only its own files."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon import ops
from daemon.client import OpenConnectorsClient
from daemon.config import load_settings
from daemon.ledger import Ledger, utcnow
from daemon.ratelimit import busiest_second
from daemon.settings import ConfigError, Route, Secret, Settings
from daemon.sim import SimServer
from daemon.sim.gate import token_space
from daemon.spool import Spool
from daemon.web import PROBE_SECONDS
from tests.helpers import (
    contacts_csv,
    drop,
    finish,
    finished,
    free_port,
    left_in_processing,
    result_of,
    wait_for,
)

TOKENS = {"crm": "crm-t0ken", "marketing": "mkt-t0ken"}
TWO = f"""
[instances.crm]
user_secret = "u-crm"
element_token = "{TOKENS['crm']}"
hub = "crm"

[instances.marketing]
user_secret = "u-mkt"
element_token = "{TOKENS['marketing']}"
default_object = "contact"
"""


def two_instances(make_settings: Callable[..., Settings], extra: str = "",
                  **overrides: Any) -> Settings:
    """crm and marketing, and [api] no instance of its own (no element_token)."""
    return make_settings(TWO + extra, api__element_token="", api__user_secret="", **overrides)


def load(tmp_path: Path, toml: str, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "bulkdrop.toml"
    api = '[api]\nbase_url = "http://127.0.0.1:9"\n'
    path.write_text(toml.replace("[api]\n", api) if "[api]\n" in toml else api + toml)
    return load_settings(path, env or {})


# -- configuration ----------------------------------------------------------------------

def test_each_instances_secrets_come_from_file_env_file_variables_and_credentials(
        tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "eloqua-prod.user_secret").write_text("cred-user\n")
    (tmp_path / "token").write_text("file-token\n")
    settings = load(tmp_path, """
[objects.contact]
partial = "failed"
max_rows_per_job = 7

[instances.crm]
element_token = "toml-token"
user_secret = "toml-user"
uploads = 2
requests_per_second = 5

[instances.crm.objects.contact]
max_rows_per_job = 10

[instances.eloqua-prod]
base_url = "https://eu.example.com/elements/api-v2/"
hub = "marketing"
""", {"BULKDROP_INSTANCES_ELOQUA_PROD_ELEMENT_TOKEN_FILE": str(tmp_path / "token"),
      "BULKDROP_INSTANCES_CRM_ELEMENT_TOKEN": "env-token",
      "CREDENTIALS_DIRECTORY": str(creds)})
    crm, eloqua = settings.instances["crm"], settings.instances["eloqua-prod"]
    assert list(settings.instances) == ["crm", "eloqua-prod"], "[api] has no token: none"
    assert settings.default_instance is None and settings.instance_folders
    assert crm.api.element_token.reveal() == "env-token", "the variable over the file"
    assert crm.api.user_secret.reveal() == "toml-user"
    assert eloqua.api.element_token.reveal() == "file-token"
    assert eloqua.api.user_secret.reveal() == "cred-user"
    assert eloqua.api.base_url == "https://eu.example.com/elements/api-v2"
    assert crm.api.base_url == "http://127.0.0.1:9", "[api]'s, shared"
    assert (crm.uploads, crm.api.requests_per_second, eloqua.uploads) == (2, 5, 4)
    assert (crm.api.hub, eloqua.api.hub) == ("marketing", "marketing")
    # An instance's object table goes over the shared one, key by key.
    assert crm.object_settings("contact").max_rows_per_job == 10
    assert crm.object_settings("contact").partial == "failed"
    assert eloqua.object_settings("contact").max_rows_per_job == 7
    origins = settings.origins
    assert origins["instances.crm.element_token"] == "env BULKDROP_INSTANCES_CRM_ELEMENT_TOKEN"
    assert origins["instances.eloqua-prod.user_secret"] == (
        f"credential {creds / 'eloqua-prod.user_secret'}")
    shown = "\n".join(f"{k} = {v}  # {o}" for k, v, o in ops.effective_config(settings))
    for secret in ("env-token", "toml-user", "file-token", "cred-user", "toml-token"):
        assert secret not in shown and secret not in repr(settings)
    assert 'instances.crm.element_token = "***"' in shown
    assert "instances.crm.objects.contact.max_rows_per_job = 10" in shown


@pytest.mark.parametrize(("toml", "env", "key", "words"), [
    ('[instances.CRM]\nelement_token = "t"\n', {}, "instances.CRM", "lower-case"),
    ('[instances.crm]\nuploadz = 3\n', {}, "instances.crm.uploadz", "did you mean 'uploads'"),
    ('[instances.crm]\nuploads = 0\n', {}, "instances.crm.uploads", ">= 1"),
    ('[instances.crm]\nrequests_per_second = -1\n', {}, "instances.crm.requests_per_second",
     ">= 0"),
    ('[instances.crm]\nbase_url = "ftp://x"\n', {}, "instances.crm.base_url", "http"),
    ('[instances.crm]\n[instances.mkt]\n[spool]\ndefault_instance = "crn"\n', {},
     "spool.default_instance", "did you mean 'crm'"),
    ('[instances.crm]\n', {"BULKDROP_INSTANCES_CRN_ELEMENT_TOKEN": "t"},
     "BULKDROP_INSTANCES_CRN_ELEMENT_TOKEN", "BULKDROP_INSTANCES_CRM_ELEMENT_TOKEN"),
    ('[instances.a-b]\n[instances.a_b]\n', {}, "instances.a_b", "rename one"),
    ('[api]\nelement_token = "t"\n[instances.default]\n', {}, "instances.default",
     "[api]'s name"),
    ('[instances.crm.objects.contact]\nmax_rows = 3\n', {},
     "instances.crm.objects.contact.max_rows", "did you mean 'max_rows_per_job'"),
    ('[instances.crm]\nobjects = 5\n', {}, "instances.crm.objects", "tables"),
    ('[objects.contact]\n[instances.contact]\n', {}, "instances.contact", "an object too"),
])
def test_a_bad_instance_setting_names_its_key(tmp_path: Path, toml: str, env: dict[str, str],
                                              key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, toml, env)
    assert caught.value.key == key and words in str(caught.value), str(caught.value)
    assert "\"t\"" not in str(caught.value)


def test_an_instance_needs_a_base_url_its_own_or_apis(tmp_path: Path) -> None:
    path = tmp_path / "bulkdrop.toml"
    path.write_text('[instances.crm]\nelement_token = "t"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert caught.value.key == "instances.crm.base_url"
    path.write_text('[instances.crm]\nbase_url = "https://x.example"\n')
    assert load_settings(path, {}).instances["crm"].api.base_url == "https://x.example"


def test_routes(tmp_path: Path) -> None:
    legacy = load(tmp_path, '[spool]\ndefault_object = "contact"\n')
    assert list(legacy.instances) == ["default"] and not legacy.instance_folders
    for rel, route in [("a.csv", Route("default", "contact")),
                       ("account/a.csv", Route("default", "account")),
                       ("default/a.csv", Route("default", "default"))]:  # as it always was
        assert legacy.route(PurePosixPath(rel)) == route
    with_api = load(tmp_path, '[api]\nelement_token = "t"\n[instances.crm]\n'
                              '[instances.mkt]\ndefault_object = "lead"\n')
    assert with_api.default_instance == "default"
    for rel, route in [("contact/a.csv", Route("default", "contact")),
                       ("crm/contact/a.csv", Route("crm", "contact")),
                       ("crm/contact/deeper/a.csv", Route("crm", "contact")),
                       ("mkt/a.csv", Route("mkt", "lead")),
                       ("default/account/a.csv", Route("default", "account"))]:
        assert with_api.route(PurePosixPath(rel)) == route
    assert with_api.inbox_folders == ["crm", "mkt", "mkt/lead"]
    assert "set [instances.crm] default_object" in str(
        with_api.route(PurePosixPath("crm/a.csv")).problem)
    none = load(tmp_path, "[instances.crm]\n[instances.mkt]\n")
    assert none.default_instance is None
    for rel in ("contact/a.csv", "a.csv"):
        route = none.route(PurePosixPath(rel))
        assert route.instance is None and "(configured: crm, mkt)" in str(route.problem)
    only = load(tmp_path, "[instances.crm]\n")
    assert only.default_instance == "crm"
    assert only.route(PurePosixPath("contact/a.csv")) == Route("crm", "contact")


# -- the daemon ----------------------------------------------------------------------------

async def test_each_instance_sends_its_files_with_its_own_token(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    await run_daemon(two_instances(make_settings))
    inbox = spool_root / "inbox"
    assert (inbox / "marketing" / "contact").is_dir() and (inbox / "crm").is_dir()
    drop(spool_root, "crm/contact/a.csv", contacts_csv(3, tag="a"))
    drop(spool_root, "marketing/contact/b.csv", contacts_csv(2, tag="b"))
    drop(spool_root, "marketing/c.csv", contacts_csv(2, tag="c"))   # its default object
    drop(spool_root, "contact/d.csv", contacts_csv(2, tag="d"))     # no default instance
    drop(spool_root, "e.csv", contacts_csv(2, tag="e"))
    drop(spool_root, "crm/f.csv", contacts_csv(2, tag="f"))          # crm has no default
    await wait_for(lambda: len(finished(spool_root)) == 6, what="6 files filed")
    done, failed = spool_root / "done", spool_root / "failed"
    a, b = result_of(done / "crm/contact/a.csv"), result_of(done / "marketing/contact/b.csv")
    c = result_of(done / "marketing/c.csv")
    assert (a["instance"], b["instance"], c["instance"]) == ("crm", "marketing", "marketing")
    assert (a["hub"], b["hub"], c["object"]) == ("crm", "marketing", "contact")
    assert sim.sim.jobs[a["job_id"]].space == token_space(TOKENS["crm"])
    assert {sim.sim.jobs[r["job_id"]].space for r in (b, c)} == {
        token_space(TOKENS["marketing"])}
    for rel in ("contact/d.csv", "e.csv"):
        rejected = result_of(failed / rel)
        assert rejected["status"] == "REJECTED" and rejected["instance"] is None
        assert "no connector instance (configured: crm, marketing)" in rejected["reason"]
    assert "set [instances.crm] default_object" in result_of(failed / "crm/f.csv")["reason"]
    assert len(sim.sim.jobs) == 3


async def test_a_mistyped_instance_folder_gets_a_hint(make_settings, run_daemon,
                                                      sim: SimServer, spool_root: Path) -> None:
    """With a default instance, inbox/markting/ is an object of it; the API refuses such
    an object, and the reason says which instance was likely meant."""
    await run_daemon(two_instances(make_settings, '[spool]\ndefault_instance = "crm"\n'))
    drop(spool_root, "markting/x.csv", contacts_csv(2))
    await wait_for(lambda: len(finished(spool_root)) == 1, what="x.csv filed")
    reason = result_of(spool_root / "failed" / "markting" / "x.csv")["reason"]
    assert "the API refused the upload (404)" in reason
    assert "did you mean instance 'marketing'? its files go in inbox/marketing/<object>/" in reason


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_an_instance_whose_credentials_are_refused_pauses_alone(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    port = free_port()
    settings = two_instances(make_settings, http__listen=f"127.0.0.1:{port}")
    sim.sim.config.refused_tokens = [TOKENS["crm"]]
    daemon = await run_daemon(settings)
    for api in daemon.readiness.instances.values():
        api.ttl = 0
    for i in range(3):
        drop(spool_root, f"crm/contact/c{i}.csv", contacts_csv(2, tag=f"c{i}"))
    await wait_for(lambda: daemon.instance("crm").paused, what="crm paused")
    for i in range(4):
        drop(spool_root, f"marketing/contact/m{i}.csv", contacts_csv(2, tag=f"m{i}"))
    # counted once the ledger says finished (a moment after the result is in place)
    await wait_for(lambda: sum(daemon.filer.counts.values()) == 4,
                   what="marketing's 4 files filed")
    assert all(p.parts[-3] == "marketing" for p in finished(spool_root))
    assert daemon.instance("crm").paused and not daemon.instance("marketing").paused
    assert daemon.status_line() == (
        "crm: 0 jobs running, 0 uploading (paused: credentials refused), done 0, failed 0, "
        "rejected 0; marketing: 0 jobs running, 0 uploading, done 4, failed 0, "
        "rejected 0; all: done 4, failed 0, rejected 0")
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 503
            body = await resp.json()
        assert body["instances"]["marketing"] == "ready"
        assert body["instances"]["crm"].startswith("credentials refused (HTTP 401: ")
        assert any(p.startswith("instance crm: credentials refused") for p in body["problems"])
        async with http.get(base + "/metrics") as resp:
            samples = _samples(await resp.text())
        assert samples[("bulkdrop_instance_paused", (("instance", "crm"),))] == 1
        assert samples[("bulkdrop_instance_paused", (("instance", "marketing"),))] == 0
        assert samples[("bulkdrop_files_finished_total", (
            ("instance", "marketing"), ("object", "contact"), ("outcome", "COMPLETE")))] == 4
        assert samples[("bulkdrop_api_requests_total", (
            ("code", "401"), ("endpoint", "create_job"), ("instance", "crm")))] >= 1
        report = await asyncio.to_thread(ops.status, settings)
        shown = ops.format_status(report)
        assert "marketing: COMPLETE 4" in shown and "crm: COMPLETE 0" in shown
        assert "credentials refused" in shown
        daemon.readiness.ready_when = "any"
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 200, await resp.text()
        sim.sim.config.refused_tokens = []
        async with http.get(base + "/readyz") as resp:  # its probe opens crm's gate
            assert resp.status == 200
            assert set((await resp.json())["instances"].values()) == {"ready"}
    await wait_for(lambda: len(finished(spool_root)) == 7, what="crm's files filed too")
    assert {result_of(spool_root / "done" / f"crm/contact/c{i}.csv")["status"]
            for i in range(3)} == {"COMPLETE"}


async def test_each_instance_keeps_to_its_own_rate(make_settings, run_daemon,
                                                   sim: SimServer, spool_root: Path) -> None:
    # crm at 4 requests a second; marketing without a limit.
    await run_daemon(make_settings(
        TWO.replace('hub = "crm"', 'hub = "crm"\nrequests_per_second = 4'),
        api__element_token="", api__user_secret=""))
    for i in range(8):
        drop(spool_root, f"crm/contact/c{i}.csv", contacts_csv(2, tag=f"c{i}"))
        drop(spool_root, f"marketing/contact/m{i}.csv", contacts_csv(2, tag=f"m{i}"))
    await wait_for(lambda: len(finished(spool_root)) == 16, timeout=60, what="16 files filed")
    spaces = list(sim.sim.request_spaces)
    times = list(sim.sim.request_times)
    crm = [t for t, s in zip(times, spaces, strict=True) if s == token_space(TOKENS["crm"])]
    mkt = [t for t, s in zip(times, spaces, strict=True)
           if s == token_space(TOKENS["marketing"])]
    assert len(crm) >= 16 and len(mkt) >= 16        # a create and a poll at least, each
    assert busiest_second(crm) <= 4
    assert crm[-1] - crm[0] >= (len(crm) - 4) / 4 - 0.5
    assert mkt[-1] < crm[-1], "marketing is not held to crm's rate"


async def test_failed_rows_go_back_to_the_instance_they_came_from(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    settings = two_instances(make_settings)
    await run_daemon(settings)
    drop(spool_root, "marketing/contact/people.csv", contacts_csv(4, bad_every=2))
    await wait_for(lambda: len(finished(spool_root)) == 1, what="people.csv filed")
    filed = spool_root / "done" / "marketing" / "contact" / "people.csv"
    assert result_of(filed)["failed_rows"]["rows"] == 2
    again = ops.retry_failed_rows(Spool(settings.spool.root, settings.spool.node_id), filed)
    assert again == spool_root / "inbox" / "marketing" / "contact" / "people.retry-1.csv"
    await wait_for(lambda: len(finished(spool_root)) == 2, what="the retry filed")
    # The same bad rows again, unfixed: every record fails, so it is filed in failed/.
    retried = result_of(spool_root / "failed" / "marketing" / "contact" / "people.retry-1.csv")
    assert retried["instance"] == "marketing" and retried["records"]["total"] == 2
    assert sim.sim.jobs[retried["job_id"]].space == token_space(TOKENS["marketing"])


# -- upgrades: rows of a single-instance ledger (instance NULL) -------------------------

async def _legacy_rows(settings: Settings, with_job: bool) -> str | None:
    """A file a single-instance release left in processing/: its row has no instance
    (and, *with_job*, a job made with [api]'s token). The job's id, if made."""
    spool, path = left_in_processing(settings, "contact/old.csv", contacts_csv(3))
    ledger = Ledger(settings.spool.state_dir / "bulkdrop.db")
    await ledger.open()
    claimed = spool.claimed_from_path(path)
    assert claimed is not None
    await ledger.add_claim(claimed.claim_id, str(claimed.rel), spool.to_stored(path), utcnow())
    job_id = None
    if with_job:
        client = OpenConnectorsClient(settings.api.base_url, user_secret=Secret("u"),
                                      organization_secret=Secret(""),
                                      element_token=Secret(API_TOKEN))
        try:
            job_id = (await client.create_job("marketing", "contact", "old.csv",
                                              path.read_bytes())).id
        finally:
            await client.close()
        await ledger.record_job(claimed.claim_id, job_id, utcnow(), "contact", "marketing", 1)
    await ledger.close()
    return job_id


API_TOKEN = "api-t0ken"


@pytest.mark.parametrize("with_job", [False, True], ids=["claimed", "job-recorded"])
async def test_a_single_instance_ledgers_files_finish_under_default(
        make_settings, run_daemon, sim: SimServer, spool_root: Path, with_job: bool) -> None:
    # [api] keeps its token (so it is "default"), but new files go to crm by default.
    settings = make_settings(TWO + '[spool]\ndefault_instance = "crm"\n',
                             api__element_token=API_TOKEN, api__user_secret="u")
    job_id = await _legacy_rows(settings, with_job)
    await run_daemon(settings)
    await wait_for(lambda: len(finished(spool_root)) == 1, what="old.csv filed")
    result = result_of(spool_root / "done" / "contact" / "old.csv")
    assert result["status"] == "COMPLETE" and result["instance"] == "default"
    if job_id is not None:
        assert result["job_id"] == job_id and len(sim.sim.jobs) == 1
    assert {job.space for job in sim.sim.jobs.values()} == {token_space(API_TOKEN)}


async def test_a_legacy_job_without_api_credentials_fails_saying_what_to_do(
        make_settings, run_daemon, sim: SimServer, spool_root: Path) -> None:
    before = make_settings(api__element_token=API_TOKEN, api__user_secret="u")
    job_id = await _legacy_rows(before, with_job=True)
    await run_daemon(two_instances(make_settings))  # [api] has no token any more
    await wait_for(lambda: len(finished(spool_root)) == 1, what="old.csv filed")
    result = result_of(spool_root / "failed" / "contact" / "old.csv")
    assert result["status"] == "FAILED" and result["job_id"] == job_id
    assert "put [api] element_token back" in result["reason"]
    assert len(sim.sim.jobs) == 1, "never sent again"


# -- what stands in the way -------------------------------------------------------------

async def test_a_link_or_file_where_an_instance_folder_goes_is_not_followed(
        make_settings, run_daemon, sim: SimServer, spool_root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (spool_root / "inbox").mkdir(parents=True)
    (spool_root / "inbox" / "marketing").symlink_to(outside)
    (spool_root / "inbox" / "crm").write_text("not a folder")
    daemon = await run_daemon(two_instances(make_settings))
    assert list(outside.iterdir()) == [], "nothing made through the link"
    assert daemon.ready.is_set()
    # Both are files of inbox/ like any other: claimed and rejected, never followed.
    failed = spool_root / "failed"
    await wait_for(lambda: len(list(failed.glob("*.result.json"))) == 2, what="both filed")
    assert {result_of(failed / name)["status"] for name in ("crm", "marketing")} == {
        "REJECTED"}
    assert (failed / "marketing").is_symlink()
    assert outside.exists() and list(outside.iterdir()) == []


async def test_readyz_never_waits_long_on_a_slow_api(make_settings, run_daemon,
                                                     sim: SimServer) -> None:
    port = free_port()
    daemon = await run_daemon(two_instances(make_settings, http__listen=f"127.0.0.1:{port}"))
    sim.sim.config.latency_seconds = 30
    started = time.monotonic()
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{port}/readyz") as resp:
        body = await resp.json()
    assert resp.status == 503 and time.monotonic() - started < PROBE_SECONDS + 2
    assert set(body["instances"].values()) == {
        f"the API does not answer within {PROBE_SECONDS:g} s"}
    sim.sim.config.latency_seconds = 0
    for api in daemon.readiness.instances.values():
        api.ttl = 0
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{port}/readyz") as resp:
        assert resp.status == 200


def test_the_sandbox_takes_no_instance_secrets_from_the_environment(tmp_path: Path) -> None:
    from daemon.cli import SANDBOX_INSTANCES

    env = {"BULKDROP_INSTANCES_CRM_ELEMENT_TOKEN": "REAL-TOKEN",
           "BULKDROP_INSTANCES_SALES_ELEMENT_TOKEN": "another-real-one"}
    settings = load_settings(None, env, forced={"api.base_url": "http://127.0.0.1:9"},
                             instances=SANDBOX_INSTANCES)
    assert settings.instances["crm"].api.element_token.reveal() == "sandbox-crm"


async def test_submit_needs_an_instance_when_there_is_no_default(spawn,
                                                                 tmp_path: Path) -> None:
    config = tmp_path / "bulkdrop.toml"
    config.write_text('[api]\nbase_url = "http://127.0.0.1:9"\n[instances.crm]\n'
                      '[instances.mkt]\n')
    data = tmp_path / "a.csv"
    data.write_text(contacts_csv(1))
    code, _, said = await finish(await spawn("submit", "--config", str(config), str(data),
                                             "--object", "contact"))
    assert code == 2 and "name one with --instance (instances: crm, mkt)" in said


def test_an_instance_with_a_hub_of_its_own_keeps_it(tmp_path: Path) -> None:
    settings = load(tmp_path, '[objects.contact]\nhub = "marketing"\n'
                              '[instances.crm]\nhub = "crm"\n[instances.other]\n'
                              '[instances.third]\nhub = "crm"\n'
                              '[instances.third.objects.contact]\nhub = "ecommerce"\n')
    assert settings.instances["crm"].hub_for("contact") == "crm"
    assert settings.instances["other"].hub_for("contact") == "marketing"
    assert settings.instances["third"].hub_for("contact") == "ecommerce"
