"""Prometheus ``/metrics``: every figure read from the index at scrape time.

The daemon already keeps its state in the index (a row per run with its counts and
queue depth, the listener's state in ``meta``, each integrity check in ``checks``,
the import-latency histogram in ``meta``; see ``archive/daemonstate.py`` and
``archive/latency.py``), so a custom collector that reads it gives the same answer
whether the web server runs inside the daemon or alone beside it; in-process
counters would see only one process. Nothing here is counted in this process.

Base units (seconds, bytes); no label carries a UID or a patient value.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from dicom_archive.archive import latency
from dicom_archive.archive.daemonstate import CheckInfo, parse_iso, read_status
from dicom_archive.archive.layout import INDEX_NAME, ArchivePaths
from dicom_archive.archive.store import Archive
from dicom_archive.errors import ArchiveError
from dicom_archive.web import lookup

PREFIX = "dicom_archive"
_OUTCOMES = ("imported", "duplicate", "conflict", "rejected", "failed")


class ArchiveCollector(Collector):
    """The figures of the archive at ``root``, read from its index on each collect."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def collect(self) -> Iterator[Metric]:
        index = lookup.thread_index(self.root)
        archive = Archive(ArchivePaths(self.root), index)
        status = read_status(archive, errors=0)
        with index.read() as db:
            patients, studies = db.execute(
                "SELECT (SELECT COUNT(*) FROM patients), (SELECT COUNT(*) FROM studies)"
            ).fetchone()
            series, instances, stored = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(instance_count), 0), "
                "COALESCE(SUM(total_bytes), 0) FROM series"
            ).fetchone()
            latencies = latency.read(db)

        files = CounterMetricFamily(
            f"{PREFIX}_daemon_files",
            "Files the watch-folder daemon handled, by outcome, over all its runs "
            "(from the index's daemon_runs)",
            labels=["outcome"],
        )
        totals = status.totals
        for outcome, value in zip(
            _OUTCOMES,
            (totals.imported, totals.duplicates, totals.conflicts, totals.rejected, totals.failed),
            strict=True,
        ):
            files.add_metric([outcome], value)
        yield files

        yield GaugeMetricFamily(
            f"{PREFIX}_daemon_up",
            "1 while a daemon holds the archive's lock",
            value=1 if status.running else 0,
        )
        run = status.run if status.running else None
        yield GaugeMetricFamily(
            f"{PREFIX}_daemon_queue_depth",
            "Files waiting in the running daemon's queue (its last heartbeat; 0 when none runs)",
            value=run.queue_depth if run else 0,
        )
        if run is not None:
            for name, text, stamp in (
                ("daemon_start_time_seconds", "When the running daemon started", run.started_at),
                ("daemon_heartbeat_time_seconds", "The daemon's last heartbeat", run.heartbeat_at),
            ):
                seconds = parse_iso(stamp)
                if seconds is not None:
                    yield GaugeMetricFamily(f"{PREFIX}_{name}", text, value=seconds)

        histogram = HistogramMetricFamily(
            f"{PREFIX}_import_duration_seconds",
            "Time to import one file (read, copy, fsync, index row), as the daemon's "
            "importer measured it, over all its runs",
        )
        histogram.add_metric(
            [],
            buckets=[(_bound(b), float(c)) for b, c in latencies.cumulative()],
            sum_value=latencies.total_seconds,
        )
        yield histogram

        dicom = status.dicom or {}
        yield CounterMetricFamily(
            f"{PREFIX}_dicom_associations",
            "DICOM associations the running daemon's listener accepted since it started",
            value=int(dicom.get("associations", 0)),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_dicom_associations_active",
            "DICOM associations open now (the listener's last heartbeat)",
            value=int(dicom.get("active", 0)),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_dicom_received_instances",
            "Instances the running daemon's listener received since it started",
            value=int(dicom.get("received", 0)),
        )

        for name, text, value in (
            ("index_patients", "Patients (Patient ID and name pairs) in the index", patients),
            ("index_studies", "Studies in the index", studies),
            ("index_series", "Series in the index", series),
            ("index_instances", "Instances in the index", instances),
            ("index_stored_bytes", "Bytes of the archived files the index lists", stored),
            (
                "index_file_bytes",
                "Bytes of the index itself (archive.db and its WAL)",
                _db_bytes(self.root),
            ),
        ):
            yield GaugeMetricFamily(f"{PREFIX}_{name}", text, value=value)

        yield from _check_metrics(status.last_check, status.last_verify)


def _check_metrics(last_check: CheckInfo | None, last_verify: CheckInfo | None) -> Iterator[Metric]:
    finished = GaugeMetricFamily(
        f"{PREFIX}_integrity_check_time_seconds",
        "When the last integrity check finished (scope: any check, or verify = with hashes)",
        labels=["scope"],
    )
    findings = GaugeMetricFamily(
        f"{PREFIX}_integrity_check_findings",
        "Findings of the last integrity check",
        labels=["scope"],
    )
    checked = GaugeMetricFamily(
        f"{PREFIX}_integrity_check_instances",
        "Instances the last integrity check looked at",
        labels=["scope"],
    )
    by_kind = GaugeMetricFamily(
        f"{PREFIX}_integrity_check_findings_by_kind",
        "Findings of the last integrity check, by kind",
        labels=["kind"],
    )
    for scope, check in (("any", last_check), ("verify", last_verify)):
        if check is None:
            continue
        seconds = parse_iso(check.finished_at)
        if seconds is not None:
            finished.add_metric([scope], seconds)
        findings.add_metric([scope], check.findings)
        checked.add_metric([scope], check.instances)
    if last_check is not None:
        for kind, count in sorted(last_check.counts.items()):
            by_kind.add_metric([kind], count)
    yield from (finished, findings, checked, by_kind)


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def _db_bytes(root: Path) -> int:
    total = 0
    for name in (INDEX_NAME, INDEX_NAME + "-wal"):
        try:
            total += (root / name).stat().st_size
        except FileNotFoundError:
            continue
    return total


_registries: dict[Path, CollectorRegistry] = {}
_registries_lock = threading.Lock()


def registry_for(root: Path) -> CollectorRegistry:
    """One registry per archive, holding only its collector (no process metrics: the
    scraped process may be a separate web server, not the daemon)."""
    with _registries_lock:
        registry = _registries.get(root)
        if registry is None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(ArchiveCollector(root))
            _registries[root] = registry
        return registry


def exposition(root: Path) -> bytes:
    return generate_latest(registry_for(root))


async def metrics(request: Request) -> Response:
    root: Path = request.app.state.archive_root
    try:
        body = await run_in_threadpool(exposition, root)
    except ArchiveError as exc:
        return PlainTextResponse(str(exc) + "\n", status_code=503)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def metrics_routes() -> list[BaseRoute]:
    return [Route("/metrics", metrics, methods=["GET"])]
