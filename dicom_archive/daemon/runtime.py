"""What the daemon's threads share: the current config, the queue, counters, stop.

The config is a frozen value; a reload swaps the reference (atomic in Python), so
a thread sees either the old or the new config whole, never a mix.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from dicom_archive.archive.daemonstate import Counts as Counts  # re-exported: status_cmd, tests
from dicom_archive.archive.latency import LatencyRecorder
from dicom_archive.archive.records import Outcome
from dicom_archive.daemon.config import DaemonConfig
from dicom_archive.daemon.jobqueue import JobQueue

#: Folders to try to remove once they are empty; beyond this many, a full scan prunes.
TIDY_LIMIT = 10_000


class Counters:
    """Outcomes since start, updated by the worker, read by the status writer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = {o: 0 for o in Outcome}

    def add(self, outcome: Outcome) -> None:
        with self._lock:
            self._values[outcome] += 1

    def snapshot(self) -> Counts:
        with self._lock:
            v = self._values
            return Counts(
                v[Outcome.IMPORTED],
                v[Outcome.DUPLICATE],
                v[Outcome.CONFLICT],
                v[Outcome.REJECTED],
                v[Outcome.FAILED],
            )


@dataclass(slots=True)
class Runtime:
    config: DaemonConfig
    queue: JobQueue
    run_id: int
    stop: threading.Event = field(default_factory=threading.Event)
    counters: Counters = field(default_factory=Counters)
    #: Import times since the worker last recorded them in the index (for /metrics).
    latency: LatencyRecorder = field(default_factory=LatencyRecorder)
    #: Set by the scanner/worker, read by the scanner: folders that may now be empty.
    tidy: set[Path] = field(default_factory=set)
    tidy_lock: threading.Lock = field(default_factory=threading.Lock)
    #: Wakes the scanner early (a scan was requested).
    scan_wakeup: threading.Event = field(default_factory=threading.Event)

    def add_tidy(self, folder: Path) -> None:
        with self.tidy_lock:
            if len(self.tidy) < TIDY_LIMIT:
                self.tidy.add(folder)

    def take_tidy(self) -> set[Path]:
        with self.tidy_lock:
            taken, self.tidy = self.tidy, set()
            return taken
