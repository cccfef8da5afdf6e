"""Periodic upkeep: integrity checks, deep verification, the JSON snapshot.

One stop-aware thread on a monotonic loop (no APScheduler: three jobs do not need
misfire rules). When each job is next due comes from the index (the last recorded
check, the archive's creation date), so restarting the daemon neither repeats a
week-long verification nor postpones it for ever. Checks wait while imports are
queued (up to ``_MAX_DEFER``) and the thread runs at a lower CPU priority, so that
upkeep never starves imports; a stop request aborts a check between files.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from dicom_archive.archive import trash
from dicom_archive.archive.daemonstate import parse_iso
from dicom_archive.archive.index import Index, now_iso
from dicom_archive.archive.integrity import check_archive, record_check
from dicom_archive.archive.retention import apply_retention, record_settings
from dicom_archive.archive.snapshot import snapshot_state, write_snapshot
from dicom_archive.archive.store import Archive, open_archive
from dicom_archive.daemon.config import DaemonConfig
from dicom_archive.daemon.runtime import Runtime
from dicom_archive.errors import ArchiveError
from dicom_archive.logs import get_logger

log = get_logger("dicom_archive.daemon.scheduler")

_MAX_DEFER = 600.0
#: How often retention and the trash delay are looked at (each is cheap when not due).
_LIFECYCLE_POLL = 60.0
_META_RETENTION_RUN = "retention_last_run"
_NICE = 10


class _Stopped(Exception):
    pass


@dataclass(frozen=True, slots=True)
class CheckResult:
    verified: bool
    clean: bool
    instances: int
    findings: int
    seconds: float


def last_check_time(index: Index, verified: bool) -> float | None:
    query = "SELECT MAX(finished_at) FROM checks" + (" WHERE verified = 1" if verified else "")
    row = index.connection.execute(query).fetchone()
    return parse_iso(row[0] if row else None)


#: The snapshot waits at least this many times its own last duration between rewrites.
_SNAPSHOT_COST_FACTOR = 10


def _lifecycle_poll(config: DaemonConfig) -> float:
    """Seconds until retention and the trash delay are looked at again: a minute, or
    less when a configured delay is shorter (never more often than each second)."""
    delays = [_LIFECYCLE_POLL]
    delays += [d for d in (config.retention.interval, config.trash.empty_after) if d > 0]
    return max(1.0, min(delays))


class Scheduler(threading.Thread):
    def __init__(self, runtime: Runtime) -> None:
        super().__init__(name="dicom-archive-scheduler")
        self.runtime = runtime
        self.archive_root = runtime.config.archive
        self.last_result: CheckResult | None = None

    def run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICE)
        except (OSError, AttributeError):
            pass
        rt = self.runtime
        with open_archive(self.archive_root) as archive:
            next_snapshot = time.monotonic() + rt.config.snapshot_interval
            deferred_since: float | None = None
            next_lifecycle = 0.0
            recorded: object = None
            while not rt.stop.wait(1.0):
                config = rt.config
                try:
                    if config.retention is not recorded:  # at start and after a reload
                        record_settings(archive, config.retention)
                        recorded = config.retention
                    if time.monotonic() >= next_lifecycle:
                        next_lifecycle = time.monotonic() + _lifecycle_poll(config)
                        self.run_lifecycle(archive)
                    if config.snapshot_interval > 0 and time.monotonic() >= next_snapshot:
                        started = time.monotonic()
                        self.refresh_snapshot(archive)
                        # A full rewrite grows with the archive: never let it take more
                        # than a tenth of the time, whatever the configured interval.
                        cost = time.monotonic() - started
                        next_snapshot = time.monotonic() + max(
                            config.snapshot_interval, _SNAPSHOT_COST_FACTOR * cost
                        )
                    job = self._due_job(archive)
                    if job is None:
                        deferred_since = None
                        continue
                    if not rt.queue.idle():
                        deferred_since = deferred_since or time.monotonic()
                        if time.monotonic() - deferred_since < _MAX_DEFER:
                            continue
                    deferred_since = None
                    self.run_check(archive, verify=job)
                except _Stopped:
                    break
                except ArchiveError as exc:
                    log.warning("upkeep failed", error=str(exc))
                except Exception:
                    log.exception("upkeep failed")
            try:
                # Leave the snapshot in step with the index for tools that read it.
                self.refresh_snapshot(archive)
            except Exception:
                log.exception("final snapshot failed")

    def _due_job(self, archive: Archive) -> bool | None:
        """True: a verification is due; False: a check; None: nothing."""
        config = self.runtime.config
        now = time.time()
        created = parse_iso(archive.index.meta("created_at")) or now
        if config.verify_interval > 0:
            last = last_check_time(archive.index, verified=True) or created
            if now >= last + config.verify_interval:
                return True
        if config.check_interval > 0:
            last = last_check_time(archive.index, verified=False) or created
            if now >= last + config.check_interval:
                return False
        return None

    def run_check(self, archive: Archive, *, verify: bool) -> CheckResult:
        stop = self.runtime.stop

        def on_progress(_done: int) -> None:
            if stop.is_set():
                raise _Stopped

        started_at = now_iso()
        log.info("integrity check started", verify_files=verify)
        report = check_archive(archive, verify_files=verify, on_progress=on_progress)
        record_check(archive.index, report, started_at)
        result = CheckResult(
            verify, report.clean, report.instances_checked, len(report.findings), report.seconds
        )
        self.last_result = result
        if report.clean:
            log.info(
                "integrity check clean",
                verify_files=verify,
                instances=report.instances_checked,
                ms=round(report.seconds * 1000, 1),
            )
        else:
            counts = {k: v for k, v in report.counts().items() if v}
            log.warning(
                "integrity check found problems",
                verify_files=verify,
                instances=report.instances_checked,
                findings=len(report.findings),
                **counts,
            )
            for finding in report.findings[:20]:
                log.warning(
                    "integrity finding",
                    kind=finding.kind.value,
                    path=finding.path,
                    detail=finding.detail,
                )
        return result

    def run_lifecycle(self, archive: Archive, now: float | None = None) -> None:
        """Retention when due (its last run is kept in the index, so a restart neither
        repeats nor postpones it), then trash entries older than the configured delay."""
        config = self.runtime.config
        moment = time.time() if now is None else now
        retention = config.retention
        if retention.rules and retention.interval > 0:
            last = parse_iso(archive.index.meta(_META_RETENTION_RUN)) or 0.0
            if moment >= last + retention.interval:
                result = apply_retention(archive, retention, now=moment)
                with archive.index.write() as connection:
                    connection.execute(
                        "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                        (_META_RETENTION_RUN, now_iso()),
                    )
                if result.studies or result.skipped:
                    log.info(
                        "retention applied",
                        studies=len(result.studies),
                        instances=result.instances,
                        bytes=result.bytes,
                        trash_ids=list(result.trash_ids),
                        skipped=len(result.skipped),
                    )
        if config.trash.empty_after > 0:
            days = config.trash.empty_after / 86400.0
            emptied = trash.empty(
                archive,
                older_than_days=days,
                now=moment,
                audit_selection=f"daemon: trash older than {days:g} days",
            )
            if emptied.entries:
                log.info(
                    "trash emptied",
                    entries=list(emptied.entries),
                    instances=emptied.instances,
                    bytes=emptied.bytes,
                    strangers_left=len(emptied.strangers),
                )

    def refresh_snapshot(self, archive: Archive) -> bool:
        """Rewrite ``archive_index.json`` unless it shows the index as it is now: also
        when a CLI import left it stale (see ``snapshot.refresh_if_cheap``)."""
        if snapshot_state(archive.paths, archive.index).current:
            return False
        started = time.perf_counter()
        write_snapshot(archive.paths, archive.index)
        log.info("snapshot written", ms=round((time.perf_counter() - started) * 1000, 1))
        return True
