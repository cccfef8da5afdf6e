"""The importer thread: takes due paths in batches and gives every file one outcome.

Due paths stream into the archive's own ``Importer.import_files`` (the CLI's code
path): one group commit for many files, the next batch read (by the worker pool)
while the current one commits. Only after that commit does anything happen to the
sources, and a source is removed only if it still is the file that was read. What
happens to the sources runs on a second thread (the disposer), so the unlinks and
folder fsyncs of one batch overlap the import of the next.

- imported / identical duplicate: removed (or moved to the processed folder);
- conflict / rejected: moved to the rejected folder with ``NAME.reason.txt`` (for a
  conflict, what differs from the archived file);
- truncated or empty: looked at again with back-off until ``max_age``, then set aside;
- transient failure: left in place and retried with back-off, never deleted;
- symlink: never followed, the link itself set aside; FIFO/device: skipped.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import sqlite3
import stat
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from structlog.contextvars import bound_contextvars

from dicom_archive.archive import conflicts, latency
from dicom_archive.archive.faults import crash_point
from dicom_archive.archive.importer import Importer
from dicom_archive.archive.index import BUSY_TIMEOUT_MS, Index, now_iso
from dicom_archive.archive.records import ImportOutcome, Outcome, SourceSignature
from dicom_archive.archive.store import open_archive
from dicom_archive.daemon.config import AfterImport, DaemonConfig
from dicom_archive.daemon.jobqueue import Job, Signature
from dicom_archive.daemon.places import (
    free_destination,
    fsync_dir,
    move_no_replace,
    relative_to,
    write_reason,
)
from dicom_archive.daemon.runtime import Runtime
from dicom_archive.errors import IndexBusy
from dicom_archive.logs import get_logger

log = get_logger("dicom_archive.daemon.worker")

#: Reasons meaning "maybe not finished yet": retried until max_age, then set aside.
_INCOMPLETE = ("truncated", "empty file")
#: Kept so a FIFO found on every rescan is reported once, in bounded memory.
_NOTED_LIMIT = 10_000
#: How often a long stream of imports records its counts for `status`.
RECORD_INTERVAL_S = 1.0
#: Recent problems kept in the index for `status`.
ERRORS_KEPT = 200
#: Past this size the worker resets the WAL itself. Readers whose transactions follow
#: each other without a gap keep SQLite's automatic (passive) checkpoints from ever
#: restarting the log, so it grew without bound (47 MB for 10,000 files with 3 s
#: readers back to back). A TRUNCATE checkpoint waits for the readers of the time to
#: finish (new ones are not blocked) and empties the file.
WAL_LIMIT_BYTES = 8 * 1024 * 1024
#: How long that checkpoint may wait for readers before trying again after the next batch.
WAL_CHECKPOINT_WAIT_MS = 5000


def signature_of(info: os.stat_result) -> Signature:
    return (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


def backoff(attempts: int, base: float, cap: float) -> float:
    return float(min(cap, base * (2 ** min(attempts, 20))))


class Worker(threading.Thread):
    def __init__(self, runtime: Runtime) -> None:
        super().__init__(name="dicom-archive-worker")
        self.runtime = runtime
        self.archive_root = runtime.config.archive
        self.last_progress = time.monotonic()
        self._noted: set[str] = set()
        self._errors: list[tuple[str, str, str, str]] = []
        self._errors_lock = threading.Lock()
        #: Outcomes on their way to the disposer thread; None stops it.
        self._handoff: queue.Queue[_Handoff | None] = queue.Queue()

    def run(self) -> None:
        rt = self.runtime
        disposer = threading.Thread(
            target=self._dispose_loop, name="dicom-archive-disposer", daemon=True
        )
        disposer.start()
        try:
            with open_archive(self.archive_root) as archive:
                importer = Importer(archive, batch_size=rt.config.batch_size)
                try:
                    importer.start_pool()
                    while not rt.stop.is_set():
                        self.last_progress = time.monotonic()
                        config = rt.config
                        jobs = rt.queue.take(config.batch_size, timeout=0.5)
                        if not jobs:
                            continue
                        importer.batch_size = config.batch_size
                        self._stream(importer, archive.index, jobs, config)
                        # Nothing more is due: let the disposer catch up, so the counts
                        # recorded (and `status`) include this stream's last files.
                        self._handoff.join()
                        self._record(archive.index)
                        self._limit_wal(archive.index)
                finally:
                    importer.close()
        finally:
            self._handoff.put(None)  # the disposer finishes what it was given, then stops
            disposer.join()

    # -- importing: a stream of due paths --------------------------------------

    def _stream(
        self, importer: Importer, index: Index, first: Sequence[Job], config: DaemonConfig
    ) -> None:
        """Import ``first`` and whatever else is due meanwhile as one stream, so the
        importer reads each batch ahead while the previous one commits; the stream
        ends when nothing more is due (its last batch then commits at once)."""
        rt = self.runtime
        pending: collections.deque[tuple[Job, Signature]] = collections.deque()

        def ready() -> Iterator[Path]:
            jobs = first
            while True:
                for job, signature in self._ready(jobs, config):
                    pending.append((job, signature))
                    yield Path(job.path)
                if rt.stop.is_set():
                    return
                jobs = rt.queue.take(config.batch_size, timeout=0)
                if not jobs:
                    return

        handed = 0
        recorded_at = time.monotonic()
        try:
            with contextlib.closing(importer.import_files(ready())) as outcomes:
                for outcome in outcomes:
                    job, signature = pending.popleft()
                    self._handoff.put(_Handoff(job, signature, outcome, config))
                    handed += 1
                    if handed % config.batch_size == 0:
                        self.last_progress = now = time.monotonic()
                        # The counts for `status` are one more synced transaction: at
                        # most once a second within a stream, not after every batch
                        # (the stream's end records them at once).
                        if now - recorded_at >= RECORD_INTERVAL_S:
                            recorded_at = now
                            self._record(index)
                        self._limit_wal(index)
        except Exception:
            # The stream broke (a bug, not a file's outcome): what is left goes through
            # one batch at a time, and one by one if that fails too, so a file that
            # trips the importer is set aside instead of retried for ever.
            log.exception("import stream failed", files=len(pending))
            left = list(pending)
            pending.clear()
            try:
                outcomes_left = self._import(importer, [Path(job.path) for job, _ in left])
                for (job, signature), outcome in zip(left, outcomes_left, strict=True):
                    self._handoff.put(_Handoff(job, signature, outcome, config))
            except Exception:
                # Keep the files (they are still in incoming); the next look retries them.
                log.exception("worker batch failed", files=len(left))
                for job, _ in left:
                    rt.queue.put_back(job, backoff(job.attempts, config.settle_time, 60))

    # -- the disposer: what happens to the sources ----------------------------

    def _dispose_loop(self) -> None:
        """Apply outcomes to the sources (remove, set aside, retry), then fsync the
        incoming folders they left, once per group of outcomes taken together."""
        while True:
            item = self._handoff.get()
            touched: set[Path] = set()
            stop = False
            taken = 1
            while item is not None:
                self._apply(item, touched)
                if len(touched) >= 64:
                    break
                try:
                    item = self._handoff.get_nowait()
                    taken += 1
                except queue.Empty:
                    break
            else:
                stop = True
            for folder in touched:
                try:
                    fsync_dir(folder)
                except FileNotFoundError:
                    continue  # emptied and removed by the scanner's tidy meanwhile
                except OSError as exc:
                    log.warning("cannot fsync folder", folder=str(folder), error=str(exc))
                self.runtime.add_tidy(folder)
            for _ in range(taken):
                self._handoff.task_done()
            if stop:
                return

    def _apply(self, item: _Handoff, touched: set[Path]) -> None:
        job, config = item.job, item.config
        with bound_contextvars(path=job.path):
            try:
                self._handle(job, item.signature, item.outcome, config, touched)
            except OSError as exc:
                self._retry(job, item.signature, config, f"cannot move the source: {exc}")
            except Exception as exc:
                log.exception("unexpected error handling a file")
                self._error("error", job.path, f"{exc.__class__.__name__}: {exc}")
                self.runtime.queue.put_back(job, backoff(job.attempts, config.settle_time, 300))

    # -- which jobs are ready -------------------------------------------------

    def _ready(self, jobs: Sequence[Job], config: DaemonConfig) -> list[tuple[Job, Signature]]:
        """The jobs whose files are regular and settled; the others are dealt with
        (links set aside, FIFOs skipped, unsettled ones put back)."""
        rt = self.runtime
        ready: list[tuple[Job, Signature]] = []
        now = time.monotonic()
        for job in jobs:
            path = Path(job.path)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                rt.queue.done(job.path, config.settle_time)
                continue
            except OSError as exc:
                self._retry(job, None, config, f"cannot look at it: {exc.strerror}")
                continue
            if stat.S_ISLNK(info.st_mode):
                self._set_aside_link(job, config)
                continue
            if not stat.S_ISREG(info.st_mode):
                self._note_skipped(path, info)
                rt.queue.done(job.path, config.settle_time)
                continue
            signature = signature_of(info)
            if not self._settled(job, signature, info, now, config):
                rt.queue.put_back(Job(job.path, signature, now, job.attempts), config.settle_time)
                continue
            ready.append((job, signature))
        return ready

    def _settled(
        self,
        job: Job,
        signature: Signature,
        info: os.stat_result,
        now: float,
        config: DaemonConfig,
    ) -> bool:
        """Unchanged for the settle time, by our own two looks; on a local disk also by
        the kernel's ctime (a clock we share, unlike a remote server's)."""
        if job.signature == signature and now - job.observed_at >= config.settle_time * 0.99:
            return True
        if config.polling:
            return False
        quiet_since = max(info.st_mtime, info.st_ctime)
        return time.time() - quiet_since >= config.settle_time

    def _import(self, importer: Importer, paths: list[Path]) -> list[ImportOutcome]:
        try:
            return importer.import_batch(paths)
        except Exception:
            log.exception("import batch raised; importing its files one by one", files=len(paths))
        outcomes: list[ImportOutcome] = []
        for path in paths:
            try:
                outcomes.extend(importer.import_batch([path]))
            except Exception as exc:
                log.error(
                    "unexpected error importing a file",
                    path=str(path),
                    error=f"{exc.__class__.__name__}: {exc}",
                    traceback=traceback.format_exc(),
                )
                outcomes.append(
                    ImportOutcome(
                        source=path,
                        outcome=Outcome.REJECTED,
                        reason=f"unexpected error while importing: {exc.__class__.__name__}: "
                        f"{exc} (see the daemon log)",
                    )
                )
        return outcomes

    # -- outcomes -------------------------------------------------------------

    def _handle(
        self,
        job: Job,
        signature: Signature,
        outcome: ImportOutcome,
        config: DaemonConfig,
        touched: set[Path],
    ) -> None:
        rt = self.runtime
        path = Path(job.path)
        if outcome.outcome is Outcome.FAILED:
            self._retry(job, signature, config, outcome.reason)
            rt.counters.add(Outcome.FAILED)
            return
        seen = outcome.source_signature or SourceSignature(signature[0], signature[1], signature[3])
        if not _unchanged(path, seen):
            # Rewritten (or replaced) while it was being read: never remove or move the
            # new bytes on the strength of the old ones; look at it again.
            log.info("source changed during import, looking again")
            rt.queue.put_back(Job(job.path), config.settle_time)
            return
        fields = {
            "sop_instance_uid": outcome.sop_instance_uid,
            "ms": round(outcome.ms, 1),
        }
        if outcome.durable_in_archive:
            self._dispose(path, config)
            crash_point("source-removed")
            touched.add(path.parent)
            rt.counters.add(outcome.outcome)
            rt.latency.observe(outcome.ms / 1000)
            log.info(
                outcome.outcome.value,
                archived_path=outcome.archived_path,
                **fields,
            )
            rt.queue.done(job.path, config.settle_time)
            return
        reason = outcome.reason
        kind = outcome.outcome.value
        if outcome.outcome is Outcome.REJECTED and reason.startswith(_INCOMPLETE):
            info = os.lstat(path)
            age = time.time() - max(info.st_mtime, info.st_ctime)
            if age < config.max_age:
                delay = min(
                    backoff(job.attempts, config.settle_time, config.retry_max_delay),
                    max(config.max_age - age, config.settle_time),
                )
                (log.info if job.attempts == 0 else log.debug)(
                    "incomplete, waiting", reason=reason, retry_in_s=round(delay, 1), **fields
                )
                rt.queue.put_back(
                    Job(job.path, signature, time.monotonic(), job.attempts + 1), delay
                )
                return
            reason = f"still incomplete after {_duration(config.max_age)}: {reason}"
            kind = "quarantined"
        differs = ""  # for a conflict: what differs from the archived file
        details: list[str] = []
        if outcome.outcome is Outcome.CONFLICT and outcome.conflict is not None:
            differs = conflicts.summary(outcome.conflict)
            details = conflicts.detail_lines(outcome.conflict)
            fields["differs"] = differs.removeprefix("differs: ")
        destination = self._set_aside(
            path,
            config,
            kind,
            reason,
            outcome.sop_instance_uid,
            differs=differs,
            details=details,
        )
        touched.add(path.parent)
        rt.counters.add(outcome.outcome)
        rt.latency.observe(outcome.ms / 1000)
        log.warning(kind, reason=reason, moved_to=str(destination), **fields)
        self._error(kind, job.path, f"{reason}; {differs}" if differs else reason)
        rt.queue.done(job.path, config.settle_time)

    def _dispose(self, path: Path, config: DaemonConfig) -> None:
        if config.after_import is AfterImport.MOVE and config.processed is not None:
            relative = relative_to(path, config.incoming)
            move_no_replace(path, free_destination(config.processed, relative))
        else:
            os.unlink(path)

    def _set_aside(
        self,
        path: Path,
        config: DaemonConfig,
        kind: str,
        reason: str,
        sop: str = "",
        *,
        differs: str = "",
        details: Sequence[str] = (),
    ) -> Path:
        relative = relative_to(path, config.incoming)
        destination = free_destination(config.rejected, relative)
        # The reason first: a crash between the two leaves the source in incoming (it
        # is looked at again), never a rejected file nobody can explain.
        write_reason(
            destination,
            outcome=kind,
            reason=reason,
            source=path,
            sop_instance_uid=sop,
            differs=differs,
            differences=details,
        )
        move_no_replace(path, destination)
        crash_point("source-removed")
        fsync_dir(destination.parent)
        return destination

    def _set_aside_link(self, job: Job, config: DaemonConfig) -> None:
        path = Path(job.path)
        with bound_contextvars(path=job.path):
            try:
                target = os.readlink(path)
                reason = (
                    f"a symbolic link (to {target}): links are not followed; "
                    "the link was moved here and its target left untouched"
                )
                destination = self._set_aside(path, config, "rejected", reason)
            except FileNotFoundError:
                self.runtime.queue.done(job.path, config.settle_time)
                return
            except OSError as exc:
                self._retry(job, None, config, f"cannot move the link aside: {exc}")
                return
            self.runtime.counters.add(Outcome.REJECTED)
            log.warning("rejected", reason=reason, moved_to=str(destination))
            self._error("rejected", job.path, reason)
            self.runtime.add_tidy(path.parent)
            self.runtime.queue.done(job.path, config.settle_time)

    def _note_skipped(self, path: Path, info: os.stat_result) -> None:
        key = str(path)
        if key in self._noted or len(self._noted) >= _NOTED_LIMIT:
            return
        self._noted.add(key)
        what = (
            "a FIFO"
            if stat.S_ISFIFO(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "a device node"
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "not a regular file"
        )
        log.warning("skipped", path=key, reason=f"{what}: never opened, left in place")

    def _retry(
        self, job: Job, signature: Signature | None, config: DaemonConfig, reason: str
    ) -> None:
        delay = backoff(job.attempts, config.settle_time, config.retry_max_delay)
        log.warning("import failed, will retry", path=job.path, reason=reason, retry_in_s=delay)
        self._error("failed", job.path, reason)
        self.runtime.queue.put_back(
            Job(job.path, signature, time.monotonic(), job.attempts + 1), delay
        )

    # -- the record in the index ---------------------------------------------

    def _limit_wal(self, index: Index) -> None:
        wal = Path(f"{index.path}-wal")
        try:
            size = wal.stat().st_size
        except OSError:
            return
        if size <= WAL_LIMIT_BYTES:
            return
        connection = index.connection
        connection.execute(f"PRAGMA busy_timeout = {WAL_CHECKPOINT_WAIT_MS}")
        try:
            busy, frames, done = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            log.info(
                "checkpointed the index log",
                wal_bytes=size,
                complete=not busy,
                frames=frames,
                copied=done,
            )
        except sqlite3.Error as exc:
            log.warning("cannot checkpoint the index log", wal_bytes=size, error=str(exc))
        finally:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def _error(self, kind: str, path: str, message: str) -> None:
        with self._errors_lock:
            if len(self._errors) < ERRORS_KEPT:
                self._errors.append((now_iso(), kind, path, message))

    def _record(self, index: Index) -> None:
        """Counts and recent problems into the index: one small transaction per batch."""
        counts = self.runtime.counters.snapshot()
        with self._errors_lock:
            errors, self._errors = self._errors, []
        latencies = self.runtime.latency.take()
        try:
            with index.write() as db:
                latency.store(db, latencies)
                db.execute(
                    "UPDATE daemon_runs SET imported = ?, duplicates = ?, conflicts = ?, "
                    "rejected = ?, failed = ? WHERE id = ?",
                    (
                        counts.imported,
                        counts.duplicates,
                        counts.conflicts,
                        counts.rejected,
                        counts.failed,
                        self.runtime.run_id,
                    ),
                )
                if errors:
                    db.executemany(
                        "INSERT INTO daemon_errors(at, kind, path, message) VALUES (?, ?, ?, ?)",
                        errors,
                    )
                    db.execute(
                        "DELETE FROM daemon_errors WHERE id <= "
                        "(SELECT MAX(id) FROM daemon_errors) - ?",
                        (ERRORS_KEPT,),
                    )
        except (IndexBusy, sqlite3.Error) as exc:
            # A locked index or a full disk: the counts catch up with the next batch;
            # letting this escape would kill the worker thread.
            self.runtime.latency.restore(latencies)
            log.warning("cannot record counts", error=str(exc))


@dataclass(frozen=True, slots=True)
class _Handoff:
    """One outcome for the disposer, with the job and the config it was imported under."""

    job: Job
    signature: Signature
    outcome: ImportOutcome
    config: DaemonConfig


def _unchanged(path: Path, seen: SourceSignature) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (info.st_size, info.st_mtime_ns, info.st_ino) == (seen.size, seen.mtime_ns, seen.inode)


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
