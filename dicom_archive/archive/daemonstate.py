"""The daemon's state as kept in the index, read back for ``dicom-archive status``, the
study browser and ``/metrics`` (here in archive/, since the faces never import the daemon).

The daemon writes a row per run (pid, heartbeat, queue depth, counts) and the recent
problems; integrity checks land in ``checks``. Whether it runs now is told by its
lock on the archive folder, which the kernel drops even on SIGKILL.
"""

from __future__ import annotations

import calendar
import fcntl
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_archive.archive.store import Archive


@dataclass(frozen=True, slots=True)
class Counts:
    imported: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "imported": self.imported,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "rejected": self.rejected,
            "failed": self.failed,
        }


def parse_iso(text: str | None) -> float | None:
    """Seconds since the epoch from the index's ``YYYY-MM-DDTHH:MM:SSZ``."""
    if not text:
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def is_locked(folder: Path) -> bool:
    """Whether a daemon holds ``folder`` now (an instant's probe)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@dataclass(frozen=True, slots=True)
class RunInfo:
    pid: int
    hostname: str
    started_at: str
    heartbeat_at: str
    stopped_at: str | None
    state: str
    incoming: str
    queue_depth: int
    counts: Counts


@dataclass(frozen=True, slots=True)
class CheckInfo:
    started_at: str
    finished_at: str
    verified: bool
    instances: int
    findings: int
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    at: str
    kind: str
    path: str
    message: str


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    running: bool
    run: RunInfo | None
    heartbeat_age: float | None
    totals: Counts
    last_check: CheckInfo | None
    last_verify: CheckInfo | None
    errors: tuple[ErrorInfo, ...]
    #: The running daemon's DICOM listener (AE title, port, counts), if it has one.
    dicom: dict[str, Any] | None = None
    #: The running daemon's DICOMweb face (URL, auth), if it has one.
    web: dict[str, Any] | None = None


def read_status(archive: Archive, errors: int = 10) -> DaemonStatus:
    db = archive.index.connection
    running = is_locked(archive.root)
    with archive.index.read():
        row = db.execute(
            "SELECT pid, hostname, started_at, heartbeat_at, stopped_at, state, incoming, "
            "queue_depth, imported, duplicates, conflicts, rejected, failed "
            "FROM daemon_runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        total_row = db.execute(
            "SELECT COALESCE(SUM(imported), 0), COALESCE(SUM(duplicates), 0), "
            "COALESCE(SUM(conflicts), 0), COALESCE(SUM(rejected), 0), COALESCE(SUM(failed), 0) "
            "FROM daemon_runs"
        ).fetchone()
        last_check = _check(db, "")
        last_verify = _check(db, "WHERE verified = 1")
        error_rows = db.execute(
            "SELECT at, kind, path, message FROM daemon_errors ORDER BY id DESC LIMIT ?",
            (errors,),
        ).fetchall()
        run_id = db.execute("SELECT MAX(id) FROM daemon_runs").fetchone()[0]
        listener_row = db.execute("SELECT value FROM meta WHERE key = 'dicom_listener'").fetchone()
        web_row = db.execute("SELECT value FROM meta WHERE key = 'web_listener'").fetchone()
    run = None
    age = None
    if row is not None:
        pid, host, started, beat, stopped, state, incoming, depth = row[:8]
        run = RunInfo(pid, host, started, beat, stopped, state, incoming, depth, Counts(*row[8:]))
        beat = parse_iso(run.heartbeat_at)
        age = None if beat is None else max(0.0, time.time() - beat)
    return DaemonStatus(
        running=running,
        run=run,
        heartbeat_age=age,
        totals=Counts(*total_row),
        last_check=last_check,
        last_verify=last_verify,
        errors=tuple(ErrorInfo(*e) for e in error_rows),
        dicom=_listener(listener_row, run_id) if running else None,
        web=_listener(web_row, run_id) if running else None,
    )


def _listener(row: tuple[str] | None, run_id: int | None) -> dict[str, Any] | None:
    """The listener state the current run last wrote; another run's is stale."""
    if row is None:
        return None
    try:
        state: dict[str, Any] = json.loads(row[0])
    except ValueError:
        return None
    return state if state.get("run") == run_id else None


def _check(db: sqlite3.Connection, where: str) -> CheckInfo | None:
    row = db.execute(
        "SELECT started_at, finished_at, verified, instances, findings, summary FROM checks "
        f"{where} ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    try:
        counts = {k: int(v) for k, v in json.loads(row[5]).items() if v}
    except (ValueError, AttributeError):
        counts = {}
    return CheckInfo(row[0], row[1], bool(row[2]), row[3], row[4], counts)
