"""The importer thread: takes due paths in batches and gives every file one outcome.

A batch goes through the archive's own ``Importer`` (the CLI's code path): one
group commit for many files. Only after that commit does anything happen to the
sources, and a source is removed only if it still is the file that was read.

- imported / identical duplicate: removed (or moved to the processed folder);
- conflict / rejected: moved to the rejected folder with ``NAME.reason.txt`` (for a
  conflict, what differs from the archived file);
- truncated or empty: looked at again with back-off until ``max_age``, then set aside;
- transient failure: left in place and retried with back-off, never deleted;
- symlink: never followed, the link itself set aside; FIFO/device: skipped.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from structlog.contextvars import bound_contextvars

from dicom_archive.archive import conflicts
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

    def run(self) -> None:
        rt = self.runtime
        with open_archive(self.archive_root) as archive:
            importer = Importer(archive, batch_size=rt.config.batch_size)
            while not rt.stop.is_set():
                self.last_progress = time.monotonic()
                config = rt.config
                jobs = rt.queue.take(config.batch_size, timeout=0.5)
                if not jobs:
                    continue
                importer.batch_size = config.batch_size
                try:
                    self._process(importer, jobs, config)
                except Exception:
                    # A bug outside the per-file handling: keep the files (they are
                    # still in incoming) and carry on; the next look retries them.
                    log.exception("worker batch failed", files=len(jobs))
                    for job in jobs:
                        rt.queue.put_back(job, backoff(job.attempts, config.settle_time, 60))
                self._record(archive.index)
                self._limit_wal(archive.index)

    # -- one batch ------------------------------------------------------------

    def _process(self, importer: Importer, jobs: Sequence[Job], config: DaemonConfig) -> None:
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
        if not ready:
            return
        outcomes = self._import(importer, [Path(job.path) for job, _ in ready])
        touched: set[Path] = set()
        for (job, signature), outcome in zip(ready, outcomes, strict=True):
            with bound_contextvars(path=job.path):
                try:
                    self._handle(job, signature, outcome, config, touched)
                except OSError as exc:
                    self._retry(job, signature, config, f"cannot move the source: {exc}")
                except Exception as exc:
                    log.exception("unexpected error handling a file")
                    self._error("error", job.path, f"{exc.__class__.__name__}: {exc}")
                    rt.queue.put_back(job, backoff(job.attempts, config.settle_time, 300))
        for folder in touched:
            try:
                fsync_dir(folder)
            except OSError as exc:
                log.warning("cannot fsync folder", folder=str(folder), error=str(exc))
            rt.add_tidy(folder)

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
        if len(self._errors) < ERRORS_KEPT:
            self._errors.append((now_iso(), kind, path, message))

    def _record(self, index: Index) -> None:
        """Counts and recent problems into the index: one small transaction per batch."""
        counts = self.runtime.counters.snapshot()
        errors, self._errors = self._errors, []
        try:
            with index.write() as db:
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
            log.warning("cannot record counts", error=str(exc))


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
