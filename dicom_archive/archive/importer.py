"""Importing files: one outcome per input, never a lost or half-written file.

A batch goes through the archive in this order (a crash at any point leaves no
index row pointing at a missing or partial file, and never touches a source):

1. each source is read once: its header parsed and validated, its bytes hashed
   and written to ``tmp/<pid>-<n>.part`` inside the archive;
2. one ``syncfs`` makes every temporary copy durable;
3. under the index write lock (``BEGIN IMMEDIATE``), each copy is linked to its
   final name, never replacing an existing file (``os.link`` fails on an existing
   name), and its temporary name removed;
4. a second ``syncfs`` makes the new directory entries durable;
5. the rows are added and the transaction commits (``synchronous=FULL``).

An archived file with no row (a crash between 3 and 5) is adopted by the next
import of the same bytes; different bytes under that name are a conflict.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import itertools
import os
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dicom_archive.archive.dicomfile import read_header
from dicom_archive.archive.faults import crash_point
from dicom_archive.archive.fsutil import link_no_replace, make_dirs_durable, syncfs
from dicom_archive.archive.index import NewInstance
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
DEFAULT_BATCH_SIZE = 64

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
    created_final: bool = False


def transient_reason(exc: OSError) -> str | None:
    """A short reason when ``exc`` may go away by itself; None when it will not."""
    if exc.errno is None:
        return None
    return _TRANSIENT_ERRNOS.get(exc.errno)


class Importer:
    """Imports files into one archive, a batch at a time."""

    def __init__(self, archive: Archive, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.archive = archive
        self.batch_size = max(1, batch_size)

    def import_files(self, sources: Iterable[Path]) -> Iterator[ImportOutcome]:
        batch: list[Path] = []
        for source in sources:
            batch.append(source)
            if len(batch) >= self.batch_size:
                yield from self.import_batch(batch)
                batch = []
        if batch:
            yield from self.import_batch(batch)

    def import_batch(self, sources: Sequence[Path]) -> list[ImportOutcome]:
        """Import ``sources`` with one group commit; one outcome per source, in order."""
        outcomes: dict[int, ImportOutcome] = {}
        staged: dict[int, _Staged] = {}
        pending_by_sop: dict[str, _Staged] = {}
        signatures: dict[Path, SourceSignature] = {}
        try:
            for position, source in enumerate(sources):
                result = self._stage(source, pending_by_sop, signatures)
                if isinstance(result, ImportOutcome):
                    outcomes[position] = result
                else:
                    staged[position] = result
                    pending_by_sop[result.header.sop_instance_uid] = result
            if staged:
                self._place_and_commit(staged, outcomes)
        finally:
            for item in staged.values():
                if item.tmp is not None:
                    _unlink_quietly(item.tmp)
        return [
            dataclasses.replace(outcomes[i], source_signature=signatures.get(source))
            for i, source in enumerate(sources)
        ]

    # -- 1. read, validate, hash, copy to a temporary name -------------------

    def _stage(
        self,
        source: Path,
        pending: dict[str, _Staged],
        signatures: dict[Path, SourceSignature],
    ) -> ImportOutcome | _Staged:
        started = time.perf_counter()
        name = str(source)
        try:
            info = os.stat(source)
            if not _is_regular(info.st_mode):
                raise RejectedFile(name, "not a regular file")
            signature = SourceSignature(info.st_size, info.st_mtime_ns, info.st_ino)
            signatures[source] = signature
            tmp: Path | None = None
            if info.st_size <= WHOLE_READ_LIMIT:
                with open(source, "rb") as handle:
                    data = handle.read()
                header = read_header(io.BytesIO(data), len(data), name)
                sha256 = hashlib.sha256(data).hexdigest()
                size = len(data)
            else:
                data = None
                with open(source, "rb") as handle:
                    header = read_header(handle, info.st_size, name)
                # Streamed: the copy and the hash come from one read of the source.
                tmp, sha256, size = self._stream_to_temporary(source)
        except RejectedFile as exc:
            return _outcome(source, Outcome.REJECTED, started, reason=exc.reason)
        except FileNotFoundError:
            return _outcome(source, Outcome.FAILED, started, reason="file vanished before import")
        except OSError as exc:
            return _os_failure(source, exc, started)

        relative = relative_instance_path(header)
        stored = self.archive.index.find_instance(header.sop_instance_uid)
        earlier = pending.get(header.sop_instance_uid)
        known_sha, known_path = (
            (stored.sha256, stored.file_path)
            if stored
            else (earlier.sha256, earlier.relative_path)
            if earlier
            else (None, "")
        )
        if known_sha is not None:
            if tmp is not None:
                _unlink_quietly(tmp)
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

        item = _Staged(source, header, relative, sha256, size, signature, started, tmp)
        if data is not None:
            try:
                item.tmp = self._write_temporary(data)
            except OSError as exc:
                return _os_failure(source, exc, started)
        return item

    def _new_temporary(self) -> Path:
        tmp_dir = self.archive.paths.tmp
        tmp_dir.mkdir(exist_ok=True)
        return tmp_dir / f"{os.getpid()}-{next(_counter)}{TMP_SUFFIX}"

    def _write_temporary(self, data: bytes) -> Path:
        tmp = self._new_temporary()
        try:
            with open(tmp, "xb") as out:
                out.write(data)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    def _stream_to_temporary(self, source: Path) -> tuple[Path, str, int]:
        tmp = self._new_temporary()
        digest = hashlib.sha256()
        size = 0
        try:
            with open(source, "rb") as handle, open(tmp, "xb") as out:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp, digest.hexdigest(), size

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
                make_dirs_durable(root, Path(item.relative_path).parent)
                if link_no_replace(item.tmp, final):
                    item.created_final = True
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
        """Remove the archived names this batch created when their rows did not commit."""
        for item in staged.values():
            if item.created_final:
                _unlink_quietly(self.archive.root / item.relative_path)
                item.created_final = False

    def _fail_all(
        self, staged: dict[int, _Staged], outcomes: dict[int, ImportOutcome], reason: str
    ) -> None:
        self._undo_links(staged)
        for position, item in staged.items():
            outcomes[position] = _outcome(item.source, Outcome.FAILED, item.started, reason=reason)
        staged.clear()


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
