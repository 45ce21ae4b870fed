"""Connector instances: one :class:`Instance` per Open Connectors instance the daemon
serves (``[instances.<name>]``, or ``[api]`` alone as ``default``).

Each has what its trouble must stay within: its own HTTP session and rate limit, retry
policy and auth gate, slots (intake, jobs, uploads) and the jobs it follows. Credentials
refused or an outage at one instance pause its files only; the others' flow on.
"""

from __future__ import annotations

from functools import partial

from daemon.admission import Admission
from daemon.checks import Checks
from daemon.client import OpenConnectorsClient
from daemon.jobs import Jobs
from daemon.ledger import Ledger
from daemon.metrics import Metrics
from daemon.retry import RetryPolicy
from daemon.settings import InstanceSettings, Settings
from daemon.tracker import Tracker


class Instance:
    def __init__(self, settings: InstanceSettings, common: Settings, ledger: Ledger,
                 checks: Checks, metrics: Metrics) -> None:
        self.name = name = settings.name
        self.settings = settings
        w = common.workers
        self.client = OpenConnectorsClient.from_settings(settings.api)
        self.policy = RetryPolicy(settings.api.retry_deadline_seconds, instance=name)
        self.tracker = Tracker(self.client, self.policy, poll_interval=w.poll_interval_seconds,
                               poll_max_interval=w.poll_max_interval_seconds,
                               job_timeout=w.job_timeout_seconds)
        self.admission = Admission(settings.uploads, settings.max_active_jobs)
        self.jobs = Jobs(settings, common.callback.public_url, ledger, self.client,
                         self.policy, self.tracker, checks, metrics)
        self.client.on_answer = partial(metrics.api_answer, name)
        self.policy.on_retry = partial(metrics.retry, name)
        metrics.watch_instance(name, lambda: len(self.jobs.active), lambda: self.paused)

    @property
    def paused(self) -> bool:
        """The API refuses this instance's credentials: its uploads and polls wait."""
        return not self.policy.gate.is_open

    async def probe(self) -> object:
        """One light request, for readiness: the objects of the instance's hub."""
        return await self.client.objects(self.settings.api.hub)

    def status(self) -> str:
        """What it does now, for systemd's STATUS line."""
        line = f"{len(self.jobs.active)} jobs running, {self.jobs.uploads_now} uploading"
        return line + (" (paused: credentials refused)" if self.paused else "")

    async def close(self) -> None:
        await self.client.close()
