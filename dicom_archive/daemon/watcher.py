"""Watching incoming: a watchdog observer whose handler only enqueues, and a scanner.

Events are hints; the folder is the truth. The handler runs on watchdog's thread
under its lock, so it does no I/O: it turns created, closed, moved (destination)
and attrib events into "look at this path soon". The scanner thread walks the
folder at start-up, when a directory appears, after an inotify overflow, when the
bounded queue dropped hints, and on a timer; it also removes folders emptied by
imports once they have been quiet for the settle time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    EVENT_TYPE_ATTRIB,
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from dicom_archive.daemon.places import is_ignored
from dicom_archive.daemon.runtime import Runtime
from dicom_archive.logs import get_logger

log = get_logger("dicom_archive.daemon.watcher")

#: Test hook: with this set, an event for a file named ``KILL-WATCHER`` kills the
#: observer thread the way a buggy handler would, so the health check can be seen to work.
FAULT_ENV = "DICOM_ARCHIVE_DAEMON_FAULT"
_HINT_EVENTS = (EVENT_TYPE_CREATED, EVENT_TYPE_CLOSED, EVENT_TYPE_MOVED, EVENT_TYPE_ATTRIB)
#: Pending subtree scans beyond this many become one full scan.
_SUBTREE_LIMIT = 1000
#: After lost events, full scans start at most this often (seconds after the previous
#: one ended). A queue too small for the load overflows again and again; walking a
#: big incoming back to back for each overflow starved the worker (3,000 files took
#: 36 s instead of 5 with a 32-event queue) and flooded the log.
OVERFLOW_RESCAN_GAP = 2.0
NETWORK_FILESYSTEMS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "fuse.sshfs",
    "9p",
    "afs",
    "ceph",
    "glusterfs",
    "fuse.glusterfs",
    "davfs",
    "fuse.rclone",
}


class IncomingHandler(FileSystemEventHandler):
    def __init__(self, offer: Callable[[str], None], scan_below: Callable[[str], None]) -> None:
        self._offer = offer
        self._scan_below = scan_below
        self._fault = os.environ.get(FAULT_ENV) == "watcher-dies"

    def dispatch(self, event: FileSystemEvent) -> None:
        if self._fault and os.path.basename(_text(event.src_path)) == "KILL-WATCHER":
            raise RuntimeError("fault injection: the observer thread dies")
        try:
            kind = event.event_type
            if kind not in _HINT_EVENTS:
                return
            path = _text(event.dest_path if kind == EVENT_TYPE_MOVED else event.src_path)
            if event.is_directory:
                if kind in (EVENT_TYPE_CREATED, EVENT_TYPE_MOVED):
                    self._scan_below(path)
                return
            self._offer(path)
        except Exception:
            # An exception escaping here would kill watchdog's dispatcher thread.
            log.exception("event handler failed", event=repr(event))


def _text(value: str | bytes) -> str:
    return os.fsdecode(value)


class OverflowListener(logging.Handler):
    """watchdog reports a lost-events overflow only in its log: listen there, ask for a
    full scan, and pass watchdog's warnings on to our log."""

    def __init__(self, on_overflow: Callable[[], bool]) -> None:
        """``on_overflow`` returns False when a rescan was already pending: then
        watchdog's repeated overflow warnings go to the debug log only."""
        super().__init__(level=logging.WARNING)
        self._on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if "overflow" in message.lower() and not self._on_overflow():
                log.debug("watchdog", message=message, logger=record.name)
                return
            log.warning("watchdog", message=message, logger=record.name)
        except Exception:
            self.handleError(record)


class Watcher:
    """The observer on incoming: inotify, or polling for network mounts."""

    def __init__(self, incoming: Path, handler: IncomingHandler, polling: bool, interval: float):
        self.incoming = incoming
        self.polling = polling
        self.observer: BaseObserver = PollingObserver(timeout=interval) if polling else Observer()
        self.observer.name = "dicom-archive-observer"
        self.observer.schedule(handler, str(incoming), recursive=True)

    def start(self) -> None:
        self.observer.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.observer.stop()
        if self.observer.is_alive():
            self.observer.join(timeout)

    def healthy(self) -> bool:
        if not self.observer.is_alive():
            return False
        return all(emitter.is_alive() for emitter in self.observer.emitters)


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path``, from /proc/mounts ("" if unknown)."""
    try:
        target = str(path.resolve())
        best, kind = "", ""
        with open("/proc/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, fields[2]
        return kind
    except OSError:
        return ""


class Scanner(threading.Thread):
    """Walks incoming when asked, on a timer, and when the queue dropped hints."""

    def __init__(self, runtime: Runtime, offer: Callable[[str], bool]) -> None:
        super().__init__(name="dicom-archive-scanner")
        self.runtime = runtime
        self._offer = offer
        self._lock = threading.Lock()
        self._full_requested = True  # the start-up scan
        self._overflow_pending = False
        self._subtrees: dict[str, float] = {}
        self._resume_when_room = False
        self._next_rescan = time.monotonic() + runtime.config.rescan_interval
        self.last_full_scan: float | None = None
        self.scans = 0

    # -- requests (from any thread; cheap) ----------------------------------

    def request_full(self) -> None:
        with self._lock:
            self._full_requested = True
        self.runtime.scan_wakeup.set()

    def request_after_overflow(self) -> bool:
        """Events were lost: a full scan, no sooner than ``OVERFLOW_RESCAN_GAP`` after
        the previous one (a later scan still sees every file). False when one is
        already pending."""
        with self._lock:
            if self._overflow_pending:
                return False
            self._overflow_pending = True
        self.runtime.scan_wakeup.set()
        return True

    def request_subtree(self, path: str) -> None:
        """A folder appeared: scan it now, and once more after the settle time, since
        files written before its watch existed produce no events."""
        now = time.monotonic()
        with self._lock:
            if len(self._subtrees) >= _SUBTREE_LIMIT:
                self._full_requested = True
            else:
                self._subtrees[path] = now
                self._subtrees[path + os.sep] = now + self.runtime.config.settle_time
        self.runtime.scan_wakeup.set()

    # -- the thread ----------------------------------------------------------

    def run(self) -> None:
        rt = self.runtime
        while not rt.stop.is_set():
            rt.scan_wakeup.wait(0.5)
            rt.scan_wakeup.clear()
            if rt.stop.is_set():
                break
            try:
                self._tick()
            except Exception:
                log.exception("scanner failed; trying again")
                time.sleep(1)

    def _tick(self) -> None:
        rt = self.runtime
        config = rt.config
        now = time.monotonic()
        if rt.queue.consume_overflow():
            self._resume_when_room = True
        with self._lock:
            full = self._full_requested
            if config.rescan_interval > 0 and now >= self._next_rescan:
                full = True
            if self._resume_when_room and rt.queue.depth() <= rt.queue.limit // 2:
                full = True
            if self._overflow_pending and (
                self.last_full_scan is None or now - self.last_full_scan >= OVERFLOW_RESCAN_GAP
            ):
                full = True
                self._overflow_pending = False
            self._full_requested = False
            due = [p for p, t in self._subtrees.items() if t <= now]
            for path in due:
                del self._subtrees[path]
        if full:
            self._resume_when_room = False
            started = time.perf_counter()
            complete, found = self.scan(config.incoming, prune=config.remove_empty_folders)
            self._next_rescan = time.monotonic() + config.rescan_interval
            self.last_full_scan = time.monotonic()
            self.scans += 1
            if not complete:
                self._resume_when_room = True
            log.info(
                "scanned incoming",
                files=found,
                complete=complete,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
        else:
            for path in due:
                self.scan(Path(path.rstrip(os.sep)), prune=False)
        if config.remove_empty_folders and rt.queue.idle():
            self._tidy(config.incoming, config.settle_time)

    def scan(self, top: Path, *, prune: bool) -> tuple[bool, int]:
        """Offer every candidate below ``top``; (finished, files offered). Stops early
        when the queue is full: the rest waits for the next scan."""
        config = self.runtime.config
        incoming = config.incoming
        found = 0
        stack = [str(top)]
        visited: list[str] = []
        while stack:
            if self.runtime.stop.is_set():
                return False, found
            folder = stack.pop()
            visited.append(folder)
            try:
                entries = os.scandir(folder)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot list folder", folder=folder, error=exc.strerror)
                continue
            with entries:
                for entry in entries:
                    relative = os.path.relpath(entry.path, incoming)
                    if is_ignored(relative, config.ignore):
                        continue
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    if is_dir:
                        stack.append(entry.path)
                        continue
                    if not self._offer(entry.path):
                        return False, found
                    found += 1
        if prune:
            # Deepest first, so a study folder goes after its series folders.
            for folder in sorted(visited, key=len, reverse=True):
                if self._remove_if_empty(Path(folder), incoming, config.settle_time) is None:
                    self.runtime.add_tidy(Path(folder))
        return True, found

    def _tidy(self, incoming: Path, settle: float) -> None:
        rt = self.runtime
        for folder in rt.take_tidy():
            current = folder
            while current != incoming and current.is_relative_to(incoming):
                outcome = self._remove_if_empty(current, incoming, settle)
                if outcome is None:
                    rt.add_tidy(current)  # not quiet yet: try again later
                    break
                if not outcome:
                    break
                current = current.parent

    @staticmethod
    def _remove_if_empty(folder: Path, incoming: Path, settle: float) -> bool | None:
        """True: removed; False: kept (not empty, gone, not ours); None: not quiet yet.

        A folder a sender created a moment ago may be about to receive files, so only
        folders untouched for the settle time go.
        """
        if folder == incoming or not folder.is_relative_to(incoming):
            return False
        try:
            info = os.lstat(folder)
            if time.time() - info.st_mtime < settle:
                return None
            os.rmdir(folder)
        except OSError:
            return False
        log.debug("removed empty folder", folder=str(folder))
        return True
