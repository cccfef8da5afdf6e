"""Importing files: one outcome per input, never a lost or half-written file.

A batch goes through the archive in this order (a crash at any point leaves no
index row pointing at a missing or partial file, and never touches a source):

1. each source is read once: its header parsed and validated, its bytes hashed
   and written to ``tmp/<pid>-<n>.part`` inside the archive;
2. one ``syncfs`` makes every temporary copy durable;
3. under the index write lock (``BEGIN IMMEDIATE``), each copy is moved to its
   final name, never replacing an existing file (``renameat2(RENAME_NOREPLACE)``
   fails on an existing name, as ``os.link`` does where renameat2 is missing);
4. a second ``syncfs`` makes the new directory entries durable;
5. the rows are added and the transaction commits (``synchronous=FULL``).

An archived file with no row (a crash between 3 and 5) is adopted by the next
import of the same bytes; different bytes under that name are a conflict.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import dataclasses
import errno
import functools
import hashlib
import io
import itertools
import os
import signal
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_archive.archive.conflicts import diff_files
from dicom_archive.archive.dicomfile import read_header
from dicom_archive.archive.faults import crash_point
from dicom_archive.archive.fsutil import make_dirs_durable, move_no_replace, syncfs
from dicom_archive.archive.index import NewInstance, StoredInstance
from dicom_archive.archive.integrity import stale_temporaries
from dicom_archive.archive.layout import TMP_SUFFIX, relative_instance_path
from dicom_archive.archive.records import (
    ImportOutcome,
    InstanceHeader,
    Outcome,
    SourceSignature,
)
from dicom_archive.archive.store import Archive
from dicom_archive.errors import IndexBusy, RejectedFile

#: Files up to this size are read into memory once (parse, hash and copy from one
#: buffer); larger ones are parsed from disk and streamed through the hash.
WHOLE_READ_LIMIT = 64 * 1024 * 1024
_CHUNK = 1024 * 1024
DEFAULT_BATCH_SIZE = 256
#: Files at least this large start their writeback as soon as they are copied.
WRITEBACK_MIN_SIZE = 64 * 1024
#: Batches at least this large are read by the worker pool (when there is one).
POOL_MIN_BATCH = 32
#: ... and their files (sampled) at least this large on average. 0: any size. The
#: workers write the temporary copies themselves and send back only the header and
#: the hash, so even 9 KB files gain: the parse, the hash and the kernel's file
#: creation (about 0.3 ms of system time a file on these machines) use both cores.
POOL_MIN_FILE_SIZE = 0

_TRANSIENT_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only filesystem",
    errno.EIO: "input/output error",
    errno.EMFILE: "too many open files",
    errno.ENOMEM: "out of memory",
}

_counter = itertools.count()


@dataclass(slots=True)
class _Staged:
    source: Path
    header: InstanceHeader
    relative_path: str
    sha256: str
    size: int
    signature: SourceSignature
    started: float
    tmp: Path | None = None
    #: The temporary copy's inode as its writer saw it (0: unknown, stat it).
    inode: int = 0
    created_final: bool = False
    #: The temporary copy's inode, noted just before linking: an archived name with
    #: this inode is this batch's own, whatever instant an interrupt arrived at.
    tmp_inode: int = 0


def transient_reason(exc: OSError) -> str | None:
    """A short reason when ``exc`` may go away by itself; None when it will not."""
    if exc.errno is None:
        return None
    return _TRANSIENT_ERRNOS.get(exc.errno)


class Importer:
    """Imports files into one archive, a batch at a time."""

    def __init__(
        self,
        archive: Archive,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int | None = None,
    ) -> None:
        """``workers``: processes that read, parse, hash and copy a batch's files in
        parallel (None: one per CPU, up to 4; 0 or 1: all in this process). Batches
        smaller than ``POOL_MIN_BATCH`` are always read here.
        """
        self.archive = archive
        self.batch_size = max(1, batch_size)
        self.workers = min(os.cpu_count() or 1, 4) if workers is None else workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._folders: set[str] = set()  # series folders known to exist
        #: Read the next files in a thread while a batch commits (large batches only).
        self.prefetch = True
        # A killed import leaves its temporary copies; they are never the only copy
        # of anything (the source stays until its row commits), so clear them here
        # rather than leave `check` to report them.
        for stale in stale_temporaries(archive):
            _unlink_quietly(stale)

    def import_files(self, sources: Iterable[Path]) -> Generator[ImportOutcome, None, None]:
        """Outcomes in source order, a batch at a time.

        The next batch is read (parsed, hashed, copied to temporary names) while
        the current one is synced and committed: by the worker pool for large
        files, else by one reader thread that lives as long as this call.
        """
        thread = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dicom-archive-reader")
            if self.prefetch
            else None
        )
        previous: tuple[list[Path], _Reading] | None = None  # read ahead, not finished
        try:
            batch: list[Path] = []
            for source in sources:
                batch.append(source)
                if len(batch) >= self.batch_size:
                    done, previous = previous, (batch, self._start_reading(batch, thread))
                    batch = []
                    if done is not None:
                        yield from self._finish(*done)
            if batch:
                done, previous = previous, (batch, self._start_reading(batch, thread))
                if done is not None:
                    yield from self._finish(*done)
            if previous is not None:
                done, previous = previous, None
                yield from self._finish(*done)
        finally:
            if previous is not None:  # abandoned or failed: drop what was read ahead
                _discard(previous[1])
            if thread is not None:
                thread.shutdown(wait=True, cancel_futures=True)

    def discard_own_temporaries(self) -> None:
        """Remove every temporary copy this process owns. Only for a process with no
        other import running (the CLI after Ctrl-C): the reader thread or the pool
        may have left copies that no outcome will ever claim."""
        prefix = f"{os.getpid()}-"
        for entry in self.archive.paths.tmp.glob(f"{prefix}*{TMP_SUFFIX}"):
            if entry.name[len(prefix) :].split(TMP_SUFFIX)[0].replace(".", "").isdigit():
                _unlink_quietly(entry)

    def import_batch(self, sources: Sequence[Path]) -> list[ImportOutcome]:
        """Import ``sources`` with one group commit; one outcome per source, in order."""
        batch = list(sources)
        return self._finish(batch, self._start_reading(batch, None))

    def close(self) -> None:
        """Stop the worker pool, if one was started."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Importer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- 1. read, validate, hash, copy to a temporary name -------------------

    def _start_reading(
        self, batch: list[Path], thread: concurrent.futures.ThreadPoolExecutor | None
    ) -> _Reading:
        reader = functools.partial(
            _read_source, tmp_dir=self.archive.paths.tmp, owner_pid=os.getpid(), write=True
        )
        pool = self._pool_for(batch)
        if pool is not None:
            chunk = max(1, len(batch) // (4 * self.workers))
            return _Reading(pool.map(reader, batch, chunksize=chunk))
        if thread is None or len(batch) < POOL_MIN_BATCH:
            return _Reading(None)
        # Small files: one reader thread. Parsing holds the GIL, but the thread
        # reads and copies while this one waits on syncfs and the commit's fsync.
        return _Reading(thread.map(reader, batch))

    def start_pool(self) -> None:
        """Start the worker pool now rather than with the first large batch (the
        daemon: with other threads running, the pool forks from a fresh server
        process, which takes a few hundred milliseconds to start)."""
        if self.workers < 2:
            return
        pool = self._pool_or_none()
        assert pool is not None
        try:
            # Processes start on demand: one trivial task each brings them up now.
            for started in [pool.submit(os.getpid) for _ in range(self.workers)]:
                started.result()
        except Exception:  # no pool here after all: read in this process
            self.close()
            self.workers = 1

    def _pool_for(self, batch: list[Path]) -> concurrent.futures.ProcessPoolExecutor | None:
        if self.workers < 2 or len(batch) < POOL_MIN_BATCH:
            return None
        if POOL_MIN_FILE_SIZE and not _large_files(batch):
            return None
        return self._pool_or_none()

    def _pool_or_none(self) -> concurrent.futures.ProcessPoolExecutor | None:
        if self._pool is None:
            # fork is cheap but unsafe once other threads hold locks (the daemon
            # runs watchdog's); forkserver children start from a clean process.
            import multiprocessing  # here: an import of a few files never needs it

            method = "fork" if threading.active_count() == 1 else "forkserver"
            context = multiprocessing.get_context(method)
            if method == "forkserver":
                # The server imports the importer once; each worker forks from it.
                context.set_forkserver_preload([__name__])
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=context,
                initializer=_pool_worker_init,
                # forkserver: the parent is the server, which exits with the importer.
                initargs=(os.getpid() if method == "fork" else 0,),
            )
            self._finalizer = weakref.finalize(self, self._pool.shutdown, wait=False)
        return self._pool

    def _read_all(
        self, batch: list[Path], reading: _Reading
    ) -> Iterator[_ReadResult] | list[_ReadResult]:
        if reading.results is None:
            # One file at a time: its bytes are written out (or dropped) before the
            # next is read, so memory holds one file, not a batch.
            return (self._read_here(source) for source in batch)
        done: list[_ReadResult] = []
        try:
            done.extend(reading.results)
        except concurrent.futures.BrokenExecutor:  # BrokenProcessPool
            # A worker died (killed, out of memory): drop the pool, read here.
            for result, _ in done:
                if isinstance(result, _Read) and result.tmp is not None:
                    _unlink_quietly(result.tmp)
            self._pool = None
            self.workers = 1
            return (self._read_here(source) for source in batch)
        return done

    def _read_here(self, source: Path) -> _ReadResult:
        return _read_source(source, self.archive.paths.tmp, os.getpid(), write=False)

    def _finish(self, batch: list[Path], reading: _Reading) -> list[ImportOutcome]:
        outcomes: dict[int, ImportOutcome] = {}
        staged: dict[int, _Staged] = {}
        pending_by_sop: dict[str, _Staged] = {}
        signatures: dict[Path, SourceSignature] = {}
        reads = self._read_all(batch, reading)
        copies: list[Path] = []  # temporaries made while reading, for cleanup on error
        try:
            try:
                # Read ahead (a list): one indexed look-up for the whole batch.
                indexed = (
                    self.archive.index.find_instances(
                        [r.header.sop_instance_uid for r, _ in reads if isinstance(r, _Read)]
                    )
                    if isinstance(reads, list)
                    else None
                )
                for position, (source, (read, signature)) in enumerate(
                    zip(batch, reads, strict=True)
                ):
                    if signature is not None:
                        signatures[source] = signature
                    if isinstance(read, _Read) and read.tmp is not None:
                        copies.append(read.tmp)
                    result = (
                        read
                        if isinstance(read, ImportOutcome)
                        else self._classify(source, read, signature, pending_by_sop, indexed)
                    )
                    if isinstance(result, ImportOutcome):
                        outcomes[position] = result
                    else:
                        staged[position] = result
                        pending_by_sop[result.header.sop_instance_uid] = result
            except BaseException:
                # Copies made for files not yet staged must not linger.
                # (the rest of a generator; all of a list: unlinking twice is harmless)
                for read, _ in reads:
                    if isinstance(read, _Read) and read.tmp is not None:
                        copies.append(read.tmp)
                for tmp in copies:
                    _unlink_quietly(tmp)
                raise
            if staged:
                self._place_and_commit(staged, outcomes)
        finally:
            for item in staged.values():
                if item.tmp is not None:
                    _unlink_quietly(item.tmp)
        return [
            self._explained(
                dataclasses.replace(outcomes[i], source_signature=signatures.get(source))
            )
            for i, source in enumerate(batch)
        ]

    def _explained(self, outcome: ImportOutcome) -> ImportOutcome:
        """A conflict, with what differs from the archived file. Conflicts are rare, so
        both files are read again here, after the batch, off every other file's path."""
        if outcome.outcome is not Outcome.CONFLICT:
            return outcome
        diff = diff_files(self.archive.root / outcome.archived_path, outcome.source)
        return dataclasses.replace(outcome, conflict=diff)

    def _classify(
        self,
        source: Path,
        read: _Read,
        signature: SourceSignature | None,
        pending: dict[str, _Staged],
        indexed: dict[str, StoredInstance] | None = None,
    ) -> ImportOutcome | _Staged:
        """``indexed``: the batch's rows already looked up (None: look this one up)."""
        header, sha256, size, started = read.header, read.sha256, read.size, read.started
        relative = relative_instance_path(header)
        stored = (
            self.archive.index.find_instance(header.sop_instance_uid)
            if indexed is None
            else indexed.get(header.sop_instance_uid)
        )
        earlier = pending.get(header.sop_instance_uid)
        known_sha, known_path = (
            (stored.sha256, stored.file_path)
            if stored
            else (earlier.sha256, earlier.relative_path)
            if earlier
            else (None, "")
        )
        if known_sha is not None:
            if read.tmp is not None:
                _unlink_quietly(read.tmp)
            if known_sha == sha256:
                return _outcome(
                    source,
                    Outcome.DUPLICATE,
                    started,
                    header.sop_instance_uid,
                    known_path,
                    size,
                    reason=f"already archived as {known_path}",
                )
            return _outcome(
                source,
                Outcome.CONFLICT,
                started,
                header.sop_instance_uid,
                known_path,
                size,
                reason=f"SOP Instance UID {header.sop_instance_uid} already archived "
                f"with different bytes at {known_path}",
            )
        if read.write_error is not None:
            return _os_failure(source, read.write_error, started)
        assert signature is not None
        item = _Staged(
            source, header, relative, sha256, size, signature, started, read.tmp, read.inode
        )
        if read.data is not None:
            try:
                item.tmp, item.inode = self._write_temporary(read.data)
            except OSError as exc:
                return _os_failure(source, exc, started)
        return item

    def _new_temporary(self) -> Path:
        return _new_temporary(self.archive.paths.tmp, os.getpid())

    def _write_temporary(self, data: bytes) -> tuple[Path, int]:
        return _write_temporary(data, self.archive.paths.tmp, os.getpid())

    # -- 2-4. make durable, link to final names ------------------------------

    def _place_and_commit(
        self, staged: dict[int, _Staged], outcomes: dict[int, ImportOutcome]
    ) -> None:
        root = self.archive.root
        crash_point("temp-written")
        try:
            syncfs(root)
        except OSError as exc:
            self._fail_all(staged, outcomes, _os_reason(exc))
            return
        crash_point("temp-synced")
        try:
            # Links and rows happen under one write lock: whoever takes the lock (a
            # check re-verifying an orphan, another importer) never sees an archived
            # file of a batch still on its way to the index.
            with self.archive.index.write() as connection:
                try:
                    self._link(staged, outcomes)
                    crash_point("linked")
                    syncfs(root)
                    self._record(connection, staged, outcomes)
                except BaseException:
                    self._undo_links(staged)
                    raise
            crash_point("index-committed")
        except IndexBusy as exc:
            self._fail_all(staged, outcomes, f"index: {exc}")
        except OSError as exc:
            self._fail_all(staged, outcomes, _os_reason(exc))
        except sqlite3.OperationalError as exc:
            self._fail_all(staged, outcomes, f"index: {exc}")

    # -- 3. link each copy to its final name, never replacing ----------------

    def _link(self, staged: dict[int, _Staged], outcomes: dict[int, ImportOutcome]) -> None:
        root = self.archive.root
        for position, item in list(staged.items()):
            assert item.tmp is not None
            final = root / item.relative_path
            try:
                item.tmp_inode = item.inode or os.stat(item.tmp).st_ino
                if not self._link_into_known_folder(item.tmp, final, item.relative_path):
                    make_dirs_durable(root, Path(item.relative_path).parent)
                    linked = move_no_replace(str(item.tmp), str(final))
                else:
                    linked = True
                if linked:
                    item.created_final = True
                    item.tmp = None  # moved: the temporary name is gone
                else:
                    existing_sha, _ = _hash_file(final)
                    if existing_sha != item.sha256:
                        outcomes[position] = _outcome(
                            item.source,
                            Outcome.CONFLICT,
                            item.started,
                            item.header.sop_instance_uid,
                            item.relative_path,
                            item.size,
                            reason=f"a different file is already at {item.relative_path}",
                        )
                        del staged[position]
                # else: identical bytes left by an interrupted import: adopt them.
            except OSError as exc:
                outcomes[position] = _os_failure(item.source, exc, item.started)
                del staged[position]
            finally:
                if item.tmp is not None and (item.created_final or position not in staged):
                    _unlink_quietly(item.tmp)
                    item.tmp = None

    def _link_into_known_folder(self, tmp: Path, final: Path, relative: str) -> bool:
        """Move the copy to its final name when the series folder was seen before (no
        mkdir calls); False when the folder is new to this importer, vanished, or the
        name is taken, so the caller takes the general path (create folders, then
        move or compare).
        """
        folder = relative.rpartition("/")[0]
        if folder not in self._folders:
            self._folders.add(folder)
            return False
        try:
            if move_no_replace(str(tmp), str(final)):
                return True
        except OSError:
            pass
        self._folders.discard(folder)
        return False

    # -- 5. the rows, in the transaction that holds the links ----------------

    def _record(
        self,
        connection: sqlite3.Connection,
        staged: dict[int, _Staged],
        outcomes: dict[int, ImportOutcome],
    ) -> None:
        index = self.archive.index
        # Another importer may have committed the same SOP before we got the lock.
        already = index.find_instances([s.header.sop_instance_uid for s in staged.values()])
        rows: list[NewInstance] = []
        for position, item in staged.items():
            stored = already.get(item.header.sop_instance_uid)
            if stored is None:
                rows.append(NewInstance(item.header, item.relative_path, item.size, item.sha256))
                outcomes[position] = _outcome(
                    item.source,
                    Outcome.IMPORTED,
                    item.started,
                    item.header.sop_instance_uid,
                    item.relative_path,
                    item.size,
                )
                continue
            if item.created_final and stored.file_path != item.relative_path:
                _unlink_quietly(self.archive.root / item.relative_path)
            item.created_final = False
            item.tmp_inode = 0  # the name, if any, now belongs to the indexed row
            same = stored.sha256 == item.sha256
            outcomes[position] = _outcome(
                item.source,
                Outcome.DUPLICATE if same else Outcome.CONFLICT,
                item.started,
                item.header.sop_instance_uid,
                stored.file_path,
                item.size,
                reason=(
                    f"already archived as {stored.file_path}"
                    if same
                    else f"SOP Instance UID {item.header.sop_instance_uid} already "
                    f"archived with different bytes at {stored.file_path}"
                ),
            )
        index.add_instances(connection, rows)

    def _undo_links(self, staged: dict[int, _Staged]) -> None:
        """Remove the archived names this batch created when their rows did not commit.

        By inode, not by flag: Ctrl-C can land between ``os.link`` and the line that
        records it, and a name holding another file's inode is never ours to remove.
        """
        for item in staged.values():
            if not item.tmp_inode:
                continue
            final = self.archive.root / item.relative_path
            try:
                ours = os.stat(final).st_ino == item.tmp_inode
            except FileNotFoundError:
                ours = False
            if ours:
                _unlink_quietly(final)
            item.created_final = False
            item.tmp_inode = 0

    def _fail_all(
        self, staged: dict[int, _Staged], outcomes: dict[int, ImportOutcome], reason: str
    ) -> None:
        self._undo_links(staged)
        for position, item in staged.items():
            outcomes[position] = _outcome(item.source, Outcome.FAILED, item.started, reason=reason)
        staged.clear()


@dataclass(frozen=True, slots=True)
class _Read:
    """A source read once: header, hash and size; its bytes or its temporary copy."""

    header: InstanceHeader
    sha256: str
    size: int
    started: float
    data: bytes | None = None
    tmp: Path | None = None
    inode: int = 0
    write_error: OSError | None = None


_ReadResult = tuple[_Read | ImportOutcome, SourceSignature | None]


@dataclass(frozen=True, slots=True)
class _Reading:
    """A batch being read by the pool (an iterator of results), or None: read in place."""

    results: Iterator[_ReadResult] | None


def _read_source(source: Path, tmp_dir: Path, owner_pid: int, write: bool) -> _ReadResult:
    """Read, validate and hash one source; with ``write`` also copy it to a temporary.

    Runs in the importing process or in a pool worker (which never touches the
    index): the duplicate check and everything after it stay with the importer.
    """
    started = time.perf_counter()
    name = str(source)
    signature: SourceSignature | None = None
    tmp: Path | None = None
    data: bytes | None = None
    inode = 0
    try:
        info = os.stat(source)
        if not _is_regular(info.st_mode):
            raise RejectedFile(name, "not a regular file")
        signature = SourceSignature(info.st_size, info.st_mtime_ns, info.st_ino)
        if info.st_size <= WHOLE_READ_LIMIT:
            with open(source, "rb") as handle:
                data = handle.read()
            header = read_header(io.BytesIO(data), len(data), name)
            sha256 = hashlib.sha256(data).hexdigest()
            size = len(data)
        else:
            with open(source, "rb") as handle:
                header = read_header(handle, info.st_size, name)
            # Streamed: the copy and the hash come from one read of the source.
            tmp, sha256, size, inode = _stream_to_temporary(source, tmp_dir, owner_pid)
    except RejectedFile as exc:
        return _outcome(source, Outcome.REJECTED, started, reason=exc.reason), signature
    except FileNotFoundError:
        reason = "file vanished before import"
        return _outcome(source, Outcome.FAILED, started, reason=reason), signature
    except OSError as exc:
        return _os_failure(source, exc, started), signature
    if not write or data is None:
        return _Read(header, sha256, size, started, data=data, tmp=tmp, inode=inode), signature
    try:
        tmp, inode = _write_temporary(data, tmp_dir, owner_pid)
    except OSError as exc:
        # Reported only if the file is new: a duplicate never needed the copy.
        return _Read(header, sha256, size, started, write_error=exc), signature
    return _Read(header, sha256, size, started, tmp=tmp, inode=inode), signature


_PR_SET_PDEATHSIG = 1
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _pool_worker_init(parent_pid: int) -> None:
    """A pool worker dies with the importer and leaves Ctrl-C to it.

    A killed importer (SIGKILL, OOM) would otherwise leave its workers waiting on
    their queue for ever, holding the parent's stdout and stderr open. What they
    were writing is a temporary copy under the dead importer's pid: stale, cleared
    by the next import.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name = ctypes.util.find_library("c")
    if name is not None:
        libc = ctypes.CDLL(name, use_errno=True)
        if hasattr(libc, "prctl"):
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if hasattr(libc, "mallopt"):
            # Each file is read into a new bytes object; above glibc's default 128 KiB
            # that is a fresh mmap, zero-filled page by page (128 page faults for a
            # 512 KiB file) and unmapped again. Keeping such buffers on the heap lets
            # the next file reuse the same, already mapped memory.
            libc.mallopt(_M_MMAP_THRESHOLD, WHOLE_READ_LIMIT)
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * WHOLE_READ_LIMIT)
    if parent_pid and os.getppid() != parent_pid:  # died before prctl took effect
        os._exit(1)


def _discard(reading: _Reading) -> None:
    """Remove the temporaries of a batch read ahead but never imported."""
    if reading.results is None:
        return
    try:
        for result, _ in reading.results:
            if isinstance(result, _Read) and result.tmp is not None:
                _unlink_quietly(result.tmp)
    except Exception:  # noqa: S110 - best effort; leftovers are stale temporaries
        pass


def _large_files(batch: list[Path]) -> bool:
    """Whether the batch's files look large enough (sampled) to repay the pool.

    Hashing and copying large files parallelise well; for small files the
    transfer between processes costs more than the parsing it spreads.
    """
    sizes = []
    for source in batch[:4]:
        try:
            sizes.append(os.stat(source).st_size)
        except OSError:
            continue
    return bool(sizes) and sum(sizes) / len(sizes) >= POOL_MIN_FILE_SIZE


def _new_temporary(tmp_dir: Path, owner_pid: int) -> Path:
    """``tmp/<importer pid>-<n>.part``; a pool worker adds its own pid after the dash."""
    me = os.getpid()
    tag = f"{owner_pid}-" if me == owner_pid else f"{owner_pid}-{me}."
    return tmp_dir / f"{tag}{next(_counter)}{TMP_SUFFIX}"


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _create_temporary(tmp_dir: Path, owner_pid: int) -> tuple[Path, int]:
    """A new temporary name and its open descriptor; ``tmp/`` made only when missing
    (no mkdir call per file)."""
    tmp = _new_temporary(tmp_dir, owner_pid)
    try:
        return tmp, os.open(tmp, _NEW_FILE, 0o644)
    except FileNotFoundError:
        tmp_dir.mkdir(exist_ok=True)
        return tmp, os.open(tmp, _NEW_FILE, 0o644)


def _write_temporary(data: bytes, tmp_dir: Path, owner_pid: int) -> tuple[Path, int]:
    """Write ``data`` to a new temporary copy: (its path, its inode)."""
    tmp, fd = _create_temporary(tmp_dir, owner_pid)
    try:
        try:
            # Plain os.write: open() would add an fstat and an isatty ioctl per file.
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if len(data) >= WRITEBACK_MIN_SIZE:
                _start_writeback(fd)
            inode = os.fstat(fd).st_ino
        finally:
            os.close(fd)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp, inode


def _stream_to_temporary(source: Path, tmp_dir: Path, owner_pid: int) -> tuple[Path, str, int, int]:
    tmp, fd = _create_temporary(tmp_dir, owner_pid)
    digest = hashlib.sha256()
    size = 0
    try:
        with open(source, "rb") as handle, open(fd, "wb", closefd=True) as out:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            _start_writeback(fd)
            inode = os.fstat(fd).st_ino
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp, digest.hexdigest(), size, inode


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: Any = None


def _start_writeback(fd: int) -> None:
    """Ask the kernel to start writing this file out now, without waiting.

    git's batch fsync mode does the same (``sync_file_range(SYNC_FILE_RANGE_WRITE)``
    per object, then one flush): by the time the batch's ``syncfs`` runs, most pages
    are already on their way, so the disk works while the next files are parsed and
    hashed. Durability still comes from ``syncfs`` alone; this only moves work earlier.
    Small files are left to the flush, where the kernel can merge their writes.
    """
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name, use_errno=True) if name else None
        if libc is not None and hasattr(libc, "sync_file_range"):
            function = libc.sync_file_range
            function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            function.restype = ctypes.c_int
            _sync_file_range = function
    if _sync_file_range:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def import_paths(
    archive: Archive, sources: Iterable[Path], *, batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[ImportOutcome]:
    """Import files one outcome at a time (the function the CLI and daemon share)."""
    return Importer(archive, batch_size=batch_size).import_files(sources)


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _os_reason(exc: OSError) -> str:
    return transient_reason(exc) or exc.strerror or str(exc)


def _os_failure(source: Path, exc: OSError, started: float) -> ImportOutcome:
    return _outcome(source, Outcome.FAILED, started, reason=_os_reason(exc))


def _outcome(
    source: Path,
    outcome: Outcome,
    started: float,
    sop: str = "",
    archived_path: str = "",
    size: int = 0,
    *,
    reason: str = "",
) -> ImportOutcome:
    return ImportOutcome(
        source=source,
        outcome=outcome,
        sop_instance_uid=sop,
        archived_path=archived_path,
        size=size,
        reason=reason,
        ms=(time.perf_counter() - started) * 1000,
    )
