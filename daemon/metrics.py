"""Prometheus metrics: one registry per daemon, named for what an operator asks.

Gauges that describe the present (uploads in flight, unfinished jobs, ledger size, the
oldest waiting file) are read when scraped, from the objects that know; counters and
histograms are moved where things happen. What is about one connector instance (files,
records, requests, retries, uploads, jobs, a pause) carries its ``instance`` label.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from daemon.trouble import Troubles

DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.files_finished = Counter(
            "bulkdrop_files_finished_total", "Files filed to done/ or failed/, by outcome.",
            ["outcome", "object", "instance"], registry=r)
        self.records_failed = Counter(
            "bulkdrop_records_failed_total", "Records the API reported as failed.",
            ["object", "instance"], registry=r)
        self.uploaded_bytes = Counter(
            "bulkdrop_uploaded_bytes_total", "Bytes sent in job uploads.", ["instance"],
            registry=r)
        self.upload_seconds = Histogram(
            "bulkdrop_upload_duration_seconds", "Time to upload a file and get its job id.",
            buckets=DURATION_BUCKETS, registry=r)
        self.job_seconds = Histogram(
            "bulkdrop_job_duration_seconds", "Time from job creation to its end.",
            buckets=DURATION_BUCKETS, registry=r)
        self.api_requests = Counter(
            "bulkdrop_api_requests_total", "Requests to Open Connectors, by endpoint and status.",
            ["instance", "endpoint", "code"], registry=r)
        self.retries = Counter(
            "bulkdrop_retries_total", "Requests retried, by reason.", ["instance", "reason"],
            registry=r)
        self.create_retries = Counter(
            "bulkdrop_create_retries_total",
            "Job creations retried after a request that may have reached the API (a lost "
            "answer, a timeout, a 5xx): each may have made a second job. By reason.",
            ["instance", "reason"], registry=r)
        self.io_retries = Counter(
            "bulkdrop_io_retries_total",
            "Local steps retried after trouble that is not the file's (full disk, "
            "read-only folder, no free descriptors), by step: reading, filing, ledger.",
            ["step"], registry=r)
        self.inbox_files = Gauge(
            "bulkdrop_inbox_files", "Files waiting in inbox/ at the last scan.", registry=r)
        self._oldest_mtime: float | None = None
        Gauge("bulkdrop_inbox_oldest_file_age_seconds",
              "Age of the oldest file waiting in inbox/ at the last scan, since it arrived "
              "there (its ctime; 0: none).",
              registry=r).set_function(self._oldest_age)
        self.uploads_in_flight = Gauge(
            "bulkdrop_uploads_in_flight", "Uploads running now.", ["instance"], registry=r)
        self._unfinished = Gauge(
            "bulkdrop_unfinished_jobs", "Jobs created and not yet finished.", ["instance"],
            registry=r)
        self._paused = Gauge(
            "bulkdrop_instance_paused",
            "1 while the instance's API refuses its credentials (its files wait), else 0.",
            ["instance"], registry=r)
        self._ledger = Gauge("bulkdrop_ledger_bytes", "Size of the ledger with its WAL.",
                             registry=r)
        self._unclaimable = Gauge(
            "bulkdrop_inbox_unclaimable_files",
            "Files in inbox/ the daemon cannot claim (no write access to their folder).",
            registry=r)
        self._unreadable = Gauge(
            "bulkdrop_inbox_unreadable_dirs", "Folders in inbox/ the daemon cannot read.",
            registry=r)
        self._retrying = Gauge(
            "bulkdrop_files_retrying", "Files whose reading or filing fails now for a "
            "reason not theirs, and is being retried, by step.", ["step"], registry=r)
        self.notifications = Counter(
            "bulkdrop_notifications_total",
            "Notification attempts by target and outcome: sent, retry, gave_up.",
            ["target", "outcome"], registry=r)
        self._pending = Gauge(
            "bulkdrop_notifications_pending",
            "Notifications recorded and not yet answered (as of the sender's last look).",
            registry=r)
        self._http_refused = Counter(
            "bulkdrop_http_connections_refused_total",
            "HTTP connections refused because every connection was busy.", registry=r)

    def http_refused(self) -> None:
        self._http_refused.inc()

    def watch_instance(self, name: str, unfinished: Callable[[], int],
                       paused: Callable[[], bool]) -> None:
        """Read one instance's present at scrape time."""
        self._unfinished.labels(name).set_function(lambda: float(unfinished()))
        self._paused.labels(name).set_function(lambda: float(paused()))
        self.uploads_in_flight.labels(name)
        self.uploaded_bytes.labels(name)

    def watch(self, ledger: Path, troubles: Troubles | None = None) -> None:
        """Read the present from its owners at scrape time."""
        self._ledger.set_function(lambda: float(_size(ledger) + _size(Path(f"{ledger}-wal"))))
        if troubles is not None:
            self._unclaimable.set_function(lambda: float(troubles.count("unclaimable")))
            self._unreadable.set_function(lambda: float(troubles.count("unreadable_dir")))
            for step in ("reading", "filing"):
                self._retrying.labels(step).set_function(
                    lambda step=step: float(troubles.count(step)))  # type: ignore[misc]

    def watch_notifications(self, pending: Callable[[], int]) -> None:
        self._pending.set_function(lambda: float(pending()))

    def inbox_scanned(self, waiting: int, oldest_mtime: float | None) -> None:
        self.inbox_files.set(waiting)
        self._oldest_mtime = oldest_mtime

    def _oldest_age(self) -> float:
        return max(0.0, time.time() - self._oldest_mtime) if self._oldest_mtime else 0.0

    def api_answer(self, instance: str, endpoint: str, code: int | str) -> None:
        self.api_requests.labels(instance, endpoint, str(code)).inc()

    def retry(self, instance: str, reason: str) -> None:
        self.retries.labels(instance, reason).inc()


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
