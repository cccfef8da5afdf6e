"""Wiring: locks, threads, signals, the heartbeat and systemd notifications.

Threads: watchdog's observer (enqueue only), the scanner (walks incoming), the
worker (imports) and the scheduler (checks, snapshot). The main thread only waits:
signal handlers set events, and every second it checks that the observer, the
worker and the index are healthy. ``WATCHDOG=1`` is sent only then; when a part
has died the daemon exits non-zero so that systemd restarts it, and the start-up
scan picks up whatever arrived meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from dicom_archive.archive.index import BUSY_TIMEOUT_MS, Index, now_iso
from dicom_archive.archive.integrity import stale_temporaries
from dicom_archive.archive.store import Archive, is_archive, open_archive
from dicom_archive.daemon.config import DaemonConfig, load_config
from dicom_archive.daemon.jobqueue import JobQueue
from dicom_archive.daemon.lock import FolderLock
from dicom_archive.daemon.notify import Notifier
from dicom_archive.daemon.places import is_ignored
from dicom_archive.daemon.runtime import Runtime
from dicom_archive.daemon.scheduler import Scheduler
from dicom_archive.daemon.watcher import (
    NETWORK_FILESYSTEMS,
    IncomingHandler,
    OverflowListener,
    Scanner,
    Watcher,
    filesystem_type,
)
from dicom_archive.daemon.worker import Worker
from dicom_archive.errors import ArchiveError, ConfigError, IndexBusy, NotAnArchive
from dicom_archive.logs import configure_logging, get_logger

if TYPE_CHECKING:
    from dicom_archive.network.server import DicomServer
    from dicom_archive.web.server import WebServer

log = get_logger("dicom_archive.daemon")

EXIT_UNHEALTHY = 1
HEARTBEAT_INTERVAL = 5.0
_TICK = 0.5
#: How long a stop waits for the batch in progress; after that it is abandoned,
#: which is safe: sources are touched only after their batch is committed.
STOP_GRACE = 20.0
#: The heartbeat gives up on a locked index after this long: the main thread must
#: keep sending WATCHDOG=1 while another process holds the write lock.
HEARTBEAT_BUSY_MS = 200


class Daemon:
    def __init__(
        self,
        config: DaemonConfig,
        *,
        config_path: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self.notifier = notifier or Notifier()
        self._stop_requested = threading.Event()
        self._reload_requested = threading.Event()
        self._archive_lock = FolderLock(config.archive)
        self._incoming_lock: FolderLock | None = None
        self._watcher: Watcher | None = None
        self._dicom: DicomServer | None = None
        self._web: WebServer | None = None
        self._overflow = OverflowListener(self._on_overflow)
        self.runtime: Runtime | None = None
        self.scanner: Scanner | None = None

    # -- signals ----------------------------------------------------------------

    def request_stop(self, *_args: object) -> None:
        self._stop_requested.set()

    def request_reload(self, *_args: object) -> None:
        self._reload_requested.set()

    def _install_signals(self) -> None:
        def on_stop(signum: int, _frame: FrameType | None) -> None:
            self._stop_requested.set()

        def on_hup(signum: int, _frame: FrameType | None) -> None:
            self._reload_requested.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    # -- running ------------------------------------------------------------------

    def run(self) -> int:
        config = self.config
        for folder in (config.incoming, config.rejected, config.processed):
            if folder is not None:
                _make_folder(folder)
        if not is_archive(config.archive):
            raise NotAnArchive(config.archive)
        self._archive_lock.acquire(holder=f"archive {config.archive}")
        try:
            self._incoming_lock = self._lock_incoming(config.incoming)
            try:
                with open_archive(config.archive) as archive:
                    return self._run(archive)
            finally:
                self._incoming_lock.release()
        finally:
            self._archive_lock.release()

    def _lock_incoming(self, incoming: Path) -> FolderLock:
        lock = FolderLock(incoming)
        lock.acquire(holder=f"incoming folder {incoming}")
        return lock

    def _run(self, archive: Archive) -> int:
        config = self.config
        # A thread that dies (watchdog's observer, say) is logged as one JSON event
        # under the log's lock, not as a raw traceback on stderr, which could land in
        # the middle of another thread's log line (seen once the disposer thread
        # logged while the observer died: an "imported" line lost to the parser).
        threading.excepthook = _log_thread_death
        self._warn_about_filesystems(config)
        _remove_stale_temporaries(archive)
        run_id = _start_run(archive.index, config)
        runtime = Runtime(config=config, queue=JobQueue(config.queue_limit), run_id=run_id)
        self.runtime = runtime
        self.scanner = Scanner(runtime, self._offer)
        worker = Worker(runtime)
        scheduler = Scheduler(runtime)
        threads: list[threading.Thread] = [worker, self.scanner, scheduler]
        for thread in threads:
            thread.daemon = True  # an abandoned batch must not keep the process alive
            thread.start()
        watchdog_logger = _watchdog_logger()
        watchdog_logger.addHandler(self._overflow)
        exit_code = 0
        try:
            self._watcher = self._start_watcher(config)
            self._dicom = self._start_dicom(config)
            self._web = self._start_web(config)
            self._install_signals()
            log.info("daemon started", pid=os.getpid(), **config.summary())
            self.notifier.send("READY=1", f"MAINPID={os.getpid()}", "STATUS=" + self._status_line())
            _set_state(archive.index, run_id, "running", runtime.queue.depth())
            exit_code = self._main_loop(archive, worker, threads)
        finally:
            self.notifier.send("STOPPING=1", "STATUS=stopping")
            log.info("daemon stopping", queue=runtime.queue.depth())
            if self._web is not None:
                self._web.stop()  # finishes the requests in flight (10 s at most)
            if self._dicom is not None:
                self._dicom.stop()  # answers what is in flight, then refuses
            if self._watcher is not None:
                self._watcher.stop()
            runtime.stop.set()
            runtime.queue.close()
            runtime.scan_wakeup.set()
            deadline = time.monotonic() + STOP_GRACE
            for thread in threads:
                thread.join(max(0.1, deadline - time.monotonic()))
                if thread.is_alive():
                    log.warning("abandoning a busy thread at stop", thread=thread.name)
            watchdog_logger.removeHandler(self._overflow)
            _finish_run(archive.index, run_id, runtime, "stopped" if exit_code == 0 else "failed")
            counts = runtime.counters.snapshot()
            log.info("daemon stopped", exit_code=exit_code, **counts.as_dict())
            self.notifier.close()
        return exit_code

    def _main_loop(self, archive: Archive, worker: Worker, threads: list[threading.Thread]) -> int:
        assert self.runtime is not None
        runtime = self.runtime
        interval = _TICK
        if self.notifier.watchdog_interval is not None:
            interval = min(interval, self.notifier.watchdog_interval)
        next_beat = 0.0
        last_status = ""
        while not self._stop_requested.wait(interval):
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self._reload()
            problem = self._health_problem(archive.index, threads)
            if problem:
                log.error("daemon unhealthy, exiting so that it is restarted", problem=problem)
                return EXIT_UNHEALTHY
            self.notifier.send("WATCHDOG=1")
            status = self._status_line()
            if status != last_status:
                self.notifier.send("STATUS=" + status)
                last_status = status
            if time.monotonic() >= next_beat:
                _heartbeat(
                    archive.index, runtime.run_id, runtime.queue.depth(), self._dicom, self._web
                )
                next_beat = time.monotonic() + HEARTBEAT_INTERVAL
        return 0

    def _start_dicom(self, config: DaemonConfig) -> DicomServer | None:
        """The DICOM listener of the [dicom] table; a port already taken is fatal."""
        if config.dicom is None:
            return None
        from dicom_archive.network.server import DicomServer  # pynetdicom only when on

        server = DicomServer(config.archive, config.dicom)
        try:
            server.start()
        except OSError as exc:
            where = f"{config.dicom.bind}:{config.dicom.port}"
            raise ConfigError(
                "[dicom]", "port", f"cannot listen on {where} ({exc.strerror})"
            ) from exc
        return server

    def _start_web(self, config: DaemonConfig) -> WebServer | None:
        """The DICOMweb face of the [web] table; a port already taken is fatal."""
        if config.web is None:
            return None
        from dicom_archive.web.server import WebServer  # starlette only when on

        server = WebServer(config.web)
        try:
            server.start()
        except OSError as exc:
            where = f"{config.web.bind}:{config.web.port}"
            raise ConfigError(
                "[web]", "port", f"cannot listen on {where} ({exc.strerror or exc})"
            ) from exc
        return server

    def _health_problem(self, index: Index, threads: list[threading.Thread]) -> str:
        if self._watcher is None or not self._watcher.healthy():
            return "the folder watcher (observer thread) died"
        for thread in threads:
            if not thread.is_alive():
                return f"thread {thread.name} died"
        if self._web is not None and not self._web.alive():
            return "the web server (uvicorn thread) died"
        try:
            index.connection.execute("SELECT 1 FROM meta LIMIT 1").fetchall()
        except Exception as exc:
            return f"the index cannot be read: {exc}"
        return ""

    def _status_line(self) -> str:
        assert self.runtime is not None
        counts = self.runtime.counters.snapshot()
        return (
            f"queue {self.runtime.queue.depth()}, imported {counts.imported}, "
            f"duplicates {counts.duplicates}, rejected {counts.rejected}, "
            f"conflicts {counts.conflicts}, failed {counts.failed}"
        )

    # -- the watcher ----------------------------------------------------------------

    def _offer(self, path: str) -> bool:
        assert self.runtime is not None
        config = self.runtime.config
        relative = os.path.relpath(path, config.incoming)
        if relative.startswith(".." + os.sep) or relative == "..":
            return True
        if is_ignored(relative, config.ignore):
            return True
        return self.runtime.queue.hint(path)

    def _offer_from_event(self, path: str) -> None:
        self._offer(path)

    def _scan_below(self, path: str) -> None:
        assert self.runtime is not None and self.scanner is not None
        config = self.runtime.config
        if not is_ignored(os.path.relpath(path, config.incoming), config.ignore):
            self.scanner.request_subtree(path)

    def _on_overflow(self) -> bool:
        if self.scanner is None or not self.scanner.request_after_overflow():
            return False
        log.warning("events were lost (inotify queue overflow); rescanning incoming")
        return True

    def _start_watcher(self, config: DaemonConfig) -> Watcher:
        handler = IncomingHandler(self._offer_from_event, self._scan_below)
        watcher = Watcher(config.incoming, handler, config.polling, config.poll_interval)
        try:
            watcher.start()
        except OSError as exc:
            hint = (
                " (raise fs.inotify.max_user_watches / max_user_instances, or set polling = true)"
                if exc.errno in (24, 28)
                else ""
            )
            raise ArchiveError(
                f"{config.incoming}: cannot watch the folder: {exc.strerror or exc}{hint}"
            ) from exc
        log.info(
            "watching incoming",
            incoming=str(config.incoming),
            observer="polling" if config.polling else "inotify",
        )
        return watcher

    def _warn_about_filesystems(self, config: DaemonConfig) -> None:
        kind = filesystem_type(config.incoming)
        if kind in NETWORK_FILESYSTEMS and not config.polling:
            log.warning(
                "incoming is on a network filesystem: inotify misses remote writes; "
                "set polling = true (poll_interval 5-30 s) and a settle_time of 30 s or more",
                incoming=str(config.incoming),
                filesystem=kind,
            )
        archive_kind = filesystem_type(config.archive)
        if archive_kind in NETWORK_FILESYSTEMS:
            log.warning(
                "the archive is on a network filesystem: SQLite locking is unreliable there; "
                "keep the archive on local disk",
                archive=str(config.archive),
                filesystem=archive_kind,
            )

    # -- reload ---------------------------------------------------------------------

    def _reload(self) -> None:
        assert self.runtime is not None and self.scanner is not None
        if self.config_path is None:
            log.warning("reload requested, but the daemon runs without a config file")
            return
        try:
            new = load_config(self.config_path, self.overrides)
        except ConfigError as exc:
            log.error("reload failed, keeping the current configuration", error=str(exc))
            return
        old = self.runtime.config
        if new.archive.resolve() != old.archive.resolve():
            log.error(
                "reload refused: the archive cannot change while the daemon runs; restart it",
                archive=str(new.archive),
            )
            return
        self.notifier.send(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )
        try:
            for folder in (new.incoming, new.rejected, new.processed):
                if folder is not None:
                    _make_folder(folder)
            self._switch_watcher(old, new)
        except ArchiveError as exc:
            log.error("reload failed, keeping the current configuration", error=str(exc))
            self.notifier.send("READY=1")
            return
        self.runtime.config = new
        self.config = new
        configure_logging(new.log_level, new.log_format)
        changed = {
            key: value for key, value in new.summary().items() if old.summary().get(key) != value
        }
        log.info("configuration reloaded", changed=changed)
        # Ignore patterns or folders may have changed: the folder is the truth.
        self.scanner.request_full()
        self.notifier.send("READY=1")

    def _switch_watcher(self, old: DaemonConfig, new: DaemonConfig) -> None:
        same = (old.incoming, old.polling, old.poll_interval) == (
            new.incoming,
            new.polling,
            new.poll_interval,
        )
        if same:
            return
        new_lock: FolderLock | None = None
        if new.incoming != old.incoming:
            new_lock = self._lock_incoming(new.incoming)
        try:
            watcher = self._start_watcher(new)
        except ArchiveError:
            if new_lock is not None:
                new_lock.release()
            raise
        if self._watcher is not None:
            self._watcher.stop()
        self._watcher = watcher
        if new_lock is not None and self._incoming_lock is not None:
            self._incoming_lock.release()
            self._incoming_lock = new_lock


def _log_thread_death(args: threading.ExceptHookArgs) -> None:
    name = args.thread.name if args.thread is not None else "?"
    log.error(
        "thread died",
        thread=name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArchiveError(f"{folder}: cannot create the folder ({exc.strerror})") from exc


def _remove_stale_temporaries(archive: Archive) -> None:
    """Temporary copies of importers that no longer run (this daemon, SIGKILLed), so a
    crash leaves ``check`` clean once the daemon is back. Never the only copy: a
    source leaves incoming only after its batch committed, and a committed file
    lives under its final name. A live importer's copies (its pid in the name) stay.
    """
    removed = 0
    for path in stale_temporaries(archive):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove a stale temporary copy", path=str(path), error=str(exc))
    if removed:
        log.info("removed temporary copies left by stopped imports", files=removed)


def _watchdog_logger() -> Any:
    import logging

    return logging.getLogger("watchdog")


def _start_run(index: Index, config: DaemonConfig) -> int:
    now = now_iso()
    with index.write() as db:
        # A run that never recorded its stop ended by a crash or SIGKILL.
        db.execute(
            "UPDATE daemon_runs SET state = 'crashed', stopped_at = heartbeat_at "
            "WHERE stopped_at IS NULL"
        )
        cursor = db.execute(
            "INSERT INTO daemon_runs(pid, hostname, started_at, heartbeat_at, state, incoming) "
            "VALUES (?, ?, ?, ?, 'starting', ?)",
            (os.getpid(), socket.gethostname(), now, now, str(config.incoming)),
        )
        return int(cursor.lastrowid or 0)


def _set_state(index: Index, run_id: int, state: str, depth: int) -> None:
    with index.write() as db:
        db.execute(
            "UPDATE daemon_runs SET heartbeat_at = ?, state = ?, queue_depth = ? WHERE id = ?",
            (now_iso(), state, depth, run_id),
        )


def _heartbeat(
    index: Index,
    run_id: int,
    depth: int,
    dicom: DicomServer | None = None,
    web: WebServer | None = None,
) -> None:
    """The run's heartbeat, never blocking the main thread for long: a locked index
    (another writer) or a full disk costs one skipped beat and a warning, not the
    WATCHDOG=1 pings nor the daemon."""
    connection = index.connection
    connection.execute(f"PRAGMA busy_timeout = {HEARTBEAT_BUSY_MS}")
    try:
        _set_state(index, run_id, "running", depth)
        if dicom is not None:
            with index.write() as db:
                db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('dicom_listener', ?)",
                    (json.dumps(dicom.status() | {"run": run_id}),),
                )
        if web is not None:
            with index.write() as db:
                db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('web_listener', ?)",
                    (json.dumps(web.status() | {"run": run_id}),),
                )
    except (IndexBusy, sqlite3.Error) as exc:
        log.warning("cannot write the heartbeat", error=str(exc))
    finally:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def _finish_run(index: Index, run_id: int, runtime: Runtime, state: str) -> None:
    counts = runtime.counters.snapshot()
    try:
        with index.write() as db:
            db.execute(
                "UPDATE daemon_runs SET heartbeat_at = ?, stopped_at = ?, state = ?, "
                "queue_depth = 0, imported = ?, duplicates = ?, conflicts = ?, rejected = ?, "
                "failed = ? WHERE id = ?",
                (
                    now_iso(),
                    now_iso(),
                    state,
                    counts.imported,
                    counts.duplicates,
                    counts.conflicts,
                    counts.rejected,
                    counts.failed,
                    run_id,
                ),
            )
    except (IndexBusy, sqlite3.Error) as exc:
        log.warning("cannot record the stop", error=str(exc))


def _log_python_warnings() -> None:
    """pydicom warns about odd values through ``warnings``: make those log events, not
    bare lines on stderr that break the JSON stream."""
    import warnings

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        log.debug("python warning", category=category.__name__, message=str(message))

    warnings.showwarning = show


def run_daemon(
    config_path: Path | None, overrides: Mapping[str, Any], *, init_archive: bool = False
) -> int:
    """Load the config, set up logging and run until stopped (the CLI's entry point)."""
    config = load_config(config_path, overrides)
    configure_logging(config.log_level, config.log_format)
    _log_python_warnings()
    if init_archive and not is_archive(config.archive):
        from dicom_archive.archive.store import init_archive as create

        create(config.archive).close()
        log.info("created an empty archive", archive=str(config.archive))
    return Daemon(config, config_path=config_path, overrides=overrides).run()
