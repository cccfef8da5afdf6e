"""A cumulative histogram of import latencies, kept in the index's ``meta`` table.

The daemon's worker observes each file's import time and folds what it saw into
the stored histogram in the same small transaction that records its counts, so
any process that reads the index (``/metrics`` served by the daemon or by a
separate ``dicom-archive web``) sees the same totals, and they survive restarts
(a Prometheus counter that only ever grows).
"""

from __future__ import annotations

import bisect
import json
import sqlite3
import threading
from dataclasses import dataclass

META_KEY = "import_latency"
#: Upper bounds in seconds: one file takes ~1 ms in a batch, a big one or a busy
#: disk seconds.
BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@dataclass(frozen=True, slots=True)
class LatencyTotals:
    """Counts per bucket (not cumulative; the last one is +Inf), their sum and count."""

    buckets: tuple[float, ...]
    counts: tuple[int, ...]
    total_seconds: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, files at or under it), ending with +Inf."""
        running = 0
        pairs = []
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs


def empty() -> LatencyTotals:
    return LatencyTotals(BUCKETS, (0,) * (len(BUCKETS) + 1), 0.0)


class LatencyRecorder:
    """Observations since the last flush, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        slot = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            self._counts[slot] += 1
            self._sum += seconds

    def take(self) -> LatencyTotals:
        """The observations since the last take, cleared here."""
        with self._lock:
            counts, total = self._counts, self._sum
            self._counts, self._sum = [0] * (len(BUCKETS) + 1), 0.0
        return LatencyTotals(BUCKETS, tuple(counts), total)

    def restore(self, taken: LatencyTotals) -> None:
        """Give back what ``take`` returned when storing it failed (rolled back)."""
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, taken.counts, strict=True)]
            self._sum += taken.total_seconds


def store(connection: sqlite3.Connection, taken: LatencyTotals) -> None:
    """Add ``taken`` to the stored totals; call inside a write transaction."""
    if not taken.count:
        return
    stored = read(connection)
    if stored.buckets != taken.buckets:
        stored = empty()  # other bounds (another version): start again, never mix
    merged = {
        "buckets": list(taken.buckets),
        "counts": [a + b for a, b in zip(stored.counts, taken.counts, strict=True)],
        "sum": stored.total_seconds + taken.total_seconds,
    }
    connection.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (META_KEY, json.dumps(merged))
    )


def read(connection: sqlite3.Connection) -> LatencyTotals:
    row = connection.execute("SELECT value FROM meta WHERE key = ?", (META_KEY,)).fetchone()
    if row is None:
        return empty()
    try:
        value = json.loads(row[0])
        buckets = tuple(float(b) for b in value["buckets"])
        counts = tuple(int(c) for c in value["counts"])
        total = float(value["sum"])
    except (ValueError, KeyError, TypeError):
        return empty()
    if len(counts) != len(buckets) + 1:
        return empty()
    return LatencyTotals(buckets, counts, total)
