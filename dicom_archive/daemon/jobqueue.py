"""Paths waiting to be looked at: deduplicated, each with a time it is due.

The folder, not this queue, is the durable record of work: the queue holds at most
``limit`` paths, and a hint that finds it full is dropped after raising the
``overflowed`` flag, which makes the scanner walk the folder again once there is
room. So 100,000 files landing at once cost a bounded amount of memory.

A path the worker has taken is "in flight": a new hint for it is remembered and
the path comes back (after the settle time) when the worker is done with it, so a
file replaced during its import is looked at again.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

#: (size, mtime_ns, ctime_ns, inode) as seen by lstat.
Signature = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class Job:
    """One path to look at, with what the worker last saw of it."""

    path: str
    #: What the previous look saw (None: never looked at), and when (monotonic).
    signature: Signature | None = None
    observed_at: float = 0.0
    #: Failed attempts so far (truncated or transient), for the back-off.
    attempts: int = 0


class JobQueue:
    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = max(1, limit)
        self._clock = clock
        self._lock = threading.Condition(threading.Lock())
        self._jobs: dict[str, tuple[float, int, Job]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._in_flight: set[str] = set()
        self._hinted_in_flight: set[str] = set()
        self._overflowed = False
        self._closed = False

    # -- producers ---------------------------------------------------------

    def hint(self, path: str, delay: float = 0.0) -> bool:
        """ "Look at this path soon". False when the queue is full (the hint is dropped)."""
        with self._lock:
            if path in self._jobs:
                return True
            if path in self._in_flight:
                self._hinted_in_flight.add(path)
                return True
            if len(self._jobs) >= self.limit:
                self._overflowed = True
                return False
            self._push(Job(path), self._clock() + delay)
            return True

    def put_back(self, job: Job, delay: float) -> None:
        """The worker returns a taken job to wait ``delay`` more seconds (never dropped:
        it already counted against the limit when it was taken)."""
        with self._lock:
            self._in_flight.discard(job.path)
            self._hinted_in_flight.discard(job.path)
            current = self._jobs.get(job.path)
            if current is None or current[0] > self._clock() + delay:
                self._push(job, self._clock() + delay)

    def done(self, path: str, settle: float) -> None:
        """The worker is finished with ``path``; a hint that came meanwhile brings it back."""
        with self._lock:
            self._in_flight.discard(path)
            if path in self._hinted_in_flight:
                self._hinted_in_flight.discard(path)
                if path not in self._jobs:
                    self._push(Job(path), self._clock() + settle)

    def _push(self, job: Job, due: float) -> None:
        seq = next(self._seq)
        self._jobs[job.path] = (due, seq, job)
        heapq.heappush(self._heap, (due, seq, job.path))
        self._lock.notify_all()

    # -- the consumer -------------------------------------------------------

    def take(self, max_items: int, timeout: float) -> list[Job]:
        """Up to ``max_items`` due jobs, waiting at most ``timeout`` s for the first."""
        deadline = self._clock() + timeout
        with self._lock:
            while True:
                if self._closed:
                    return []
                now = self._clock()
                taken: list[Job] = []
                while self._heap and len(taken) < max_items:
                    due, seq, path = self._heap[0]
                    entry = self._jobs.get(path)
                    if entry is None or entry[1] != seq:
                        heapq.heappop(self._heap)  # superseded
                        continue
                    if due > now:
                        break
                    heapq.heappop(self._heap)
                    del self._jobs[path]
                    self._in_flight.add(path)
                    taken.append(entry[2])
                if taken:
                    return taken
                wait = deadline - now
                if self._heap:
                    wait = min(wait, self._heap[0][0] - now)
                if deadline - now <= 0:
                    return []
                self._lock.wait(max(0.005, wait))

    def close(self) -> None:
        """Wake the consumer for good (the stop sentinel)."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    # -- observation --------------------------------------------------------

    def depth(self) -> int:
        with self._lock:
            return len(self._jobs) + len(self._in_flight)

    def has_room(self) -> bool:
        with self._lock:
            return len(self._jobs) < self.limit

    def consume_overflow(self) -> bool:
        """Whether hints were dropped since the last call (then the folder needs a scan)."""
        with self._lock:
            flag, self._overflowed = self._overflowed, False
            return flag

    def idle(self) -> bool:
        with self._lock:
            return not self._jobs and not self._in_flight
