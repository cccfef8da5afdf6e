"""Rebuilding the index from the files under ``data/``.

The files are the source of truth: each file's place in the layout and its own
header say everything the index holds. A rebuild never deletes or moves a data
file. It builds a complete new index beside the old one (a scratch database in
``tmp/``), compares the two, and only then, unless it is a dry run, puts the new
index in place; the previous index (healthy, damaged, or the original tool's
``archive_index.json``) is kept aside under a new name, never overwritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_archive.archive import snapshot
from dicom_archive.archive.dicomfile import read_header
from dicom_archive.archive.fsutil import fsync_path, link_no_replace
from dicom_archive.archive.index import Index, NewInstance, now_iso, touch_modified
from dicom_archive.archive.layout import ArchivePaths, relative_instance_path
from dicom_archive.archive.records import InstanceHeader
from dicom_archive.errors import IndexBusy, NotAnArchive, RejectedFile, UsageError

#: Files up to this size are read once into memory; larger ones are streamed.
_WHOLE_READ_LIMIT = 64 * 1024 * 1024
_CHUNK = 1024 * 1024
_BATCH = 500
#: data/PATIENT/STUDY/SERIES/FILE: instances live only in series folders.
_INSTANCE_DEPTH = 5
#: How long to wait for other users of the index to let go before giving up.
_SWAP_TIMEOUT_S = 5.0

_OLD_ROWS = """
CREATE TABLE old_rows (
    sop_instance_uid    TEXT PRIMARY KEY,
    file_path           TEXT,
    file_size           INTEGER,
    sha256              TEXT,
    imported_at         TEXT,
    sop_class_uid       TEXT,
    series_instance_uid TEXT,
    study_instance_uid  TEXT,
    patient_id          TEXT,
    patient_name        TEXT,
    study_date          TEXT,
    study_description   TEXT,
    modality            TEXT,
    series_description  TEXT
)
"""
_OLD_COLUMNS = (
    "sop_instance_uid",
    "file_path",
    "file_size",
    "sha256",
    "imported_at",
    "sop_class_uid",
    "series_instance_uid",
    "study_instance_uid",
    "patient_id",
    "patient_name",
    "study_date",
    "study_description",
    "modality",
    "series_description",
)
#: The columns compared between the old index and the files (imported_at is not a
#: property of the file, so a difference there is not a change).
_COMPARED = tuple(c for c in _OLD_COLUMNS if c not in ("sop_instance_uid", "imported_at"))

_ROWS_SELECT = """
SELECT i.sop_instance_uid, i.file_path, i.file_size, i.sha256, i.imported_at,
       i.sop_class_uid, se.series_instance_uid, st.study_instance_uid,
       p.patient_id, p.patient_name, st.study_date, st.description,
       se.modality, se.description
FROM instances i
JOIN series se ON se.id = i.series_pk
JOIN studies st ON st.id = se.study_pk
JOIN patients p ON p.id = st.patient_pk
"""


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A file under ``data/`` that the rebuilt index does not hold, and why."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class ValueChange:
    sop_instance_uid: str
    column: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class IndexedFile:
    sop_instance_uid: str
    path: str


@dataclass(frozen=True, slots=True)
class RebuildReport:
    dry_run: bool
    #: What the rebuild started from: "index", "damaged index", "snapshot" (the
    #: original tool's archive_index.json) or "nothing".
    previous: str
    previous_detail: str
    files_seen: int
    instances: int
    added: tuple[IndexedFile, ...]
    dropped: tuple[IndexedFile, ...]
    changed: tuple[ValueChange, ...]
    skipped: tuple[SkippedFile, ...]
    #: Files indexed where they are, though the layout would name them differently.
    misplaced: tuple[str, ...]
    #: Archive-relative names the previous index files were moved to.
    kept_aside: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def changes(self) -> bool:
        return bool(self.added or self.dropped or self.changed)


@dataclass(slots=True)
class _Scan:
    files_seen: int = 0
    instances: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    misplaced: list[str] = field(default_factory=list)


# -- the files -----------------------------------------------------------------


def _walk_files(data: Path) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(archive-relative path, entry) of every non-folder under ``data``, sorted,
    without following symlinks."""
    root_len = len(str(data.parent)) + 1
    stack = [data]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        folders = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append(Path(entry.path))
            else:
                yield entry.path[root_len:], entry
        stack.extend(reversed(folders))


def read_archived_file(path: Path, relative: str) -> tuple[InstanceHeader, int, str]:
    """(header, size, SHA-256) of one archived file, reading it once (streamed when large).

    Raises ``RejectedFile`` for a file that is not a valid instance, ``OSError``
    when it cannot be read.
    """
    size = os.stat(path).st_size
    if size <= _WHOLE_READ_LIMIT:
        with open(path, "rb") as handle:
            data = handle.read()
        return read_header(io.BytesIO(data), len(data), relative), len(data), _sha256(data)
    with open(path, "rb") as handle:
        header = read_header(handle, size, relative)
        handle.seek(0)
        digest = hashlib.sha256()
        total = 0
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            total += len(chunk)
    return header, total, digest.hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _index_files(paths: ArchivePaths, index: Index, connection: sqlite3.Connection) -> _Scan:
    scan = _Scan()
    pending: dict[str, NewInstance] = {}

    def flush() -> None:
        index.add_instances(connection, list(pending.values()))
        pending.clear()

    for relative, entry in _walk_files(paths.data):
        scan.files_seen += 1
        if not entry.is_file(follow_symlinks=False):
            scan.skipped.append(SkippedFile(relative, "not a regular file"))
            continue
        if relative.count("/") != _INSTANCE_DEPTH - 1:
            scan.skipped.append(
                SkippedFile(relative, "not in a series folder (data/PATIENT/STUDY/SERIES/)")
            )
            continue
        try:
            header, size, sha256 = read_archived_file(Path(entry.path), relative)
        except RejectedFile as exc:
            scan.skipped.append(SkippedFile(relative, exc.reason))
            continue
        except OSError as exc:
            scan.skipped.append(SkippedFile(relative, f"unreadable: {exc.strerror or exc}"))
            continue
        sop = header.sop_instance_uid
        first = pending.get(sop) or index.find_instance(sop)
        if first is not None:
            what = "identical copy" if first.sha256 == sha256 else "different file"
            scan.skipped.append(
                SkippedFile(relative, f"{what} with SOP Instance UID {sop} of {first.file_path}")
            )
            continue
        pending[sop] = NewInstance(header, relative, size, sha256)
        scan.instances += 1
        if relative != relative_instance_path(header):
            scan.misplaced.append(relative)
        if len(pending) >= _BATCH:
            flush()
    flush()
    return scan


# -- the previous index ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Previous:
    kind: str
    detail: str = ""
    created_at: str = ""


def _index_health(path: Path) -> str:
    """ "" when the index at ``path`` opens and passes ``PRAGMA integrity_check``,
    else why not."""
    try:
        connection = sqlite3.connect(path, timeout=_SWAP_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        return f"SQLite cannot open it ({exc})"
    try:
        rows = connection.execute("PRAGMA integrity_check").fetchall()
        if [tuple(r) for r in rows] != [("ok",)]:
            return "PRAGMA integrity_check failed: " + "; ".join(str(r[0]) for r in rows[:3])
        connection.execute("SELECT count(*) FROM instances").fetchone()
    except sqlite3.Error as exc:
        return f"SQLite cannot read it ({exc})"
    finally:
        connection.close()
    return ""


def _load_previous(paths: ArchivePaths, scratch: sqlite3.Connection) -> _Previous:
    """Fill ``old_rows`` from the previous index, or the snapshot when there is none
    usable; say which it was."""
    marks = ",".join("?" * len(_OLD_COLUMNS))
    insert = f"INSERT OR IGNORE INTO old_rows({','.join(_OLD_COLUMNS)}) VALUES ({marks})"
    damage = ""
    if paths.index.exists():
        damage = _index_health(paths.index)
        if not damage:
            old = sqlite3.connect(paths.index, timeout=_SWAP_TIMEOUT_S, isolation_level=None)
            try:
                cursor = old.execute(_ROWS_SELECT)
                while rows := cursor.fetchmany(_BATCH):
                    scratch.executemany(insert, rows)
                found = old.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()
            finally:
                old.close()
            return _Previous("index", created_at=str(found[0]) if found else "")
    if paths.snapshot.is_file():
        try:
            created = _load_snapshot(paths.snapshot, scratch, insert)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            detail = f"archive_index.json unreadable ({exc})"
            return _Previous("damaged index" if damage else "nothing", _join(damage, detail))
        kind = "damaged index" if damage else "snapshot"
        return _Previous(kind, _join(damage, "rows compared with archive_index.json"), created)
    return _Previous("damaged index" if damage else "nothing", damage)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _load_snapshot(path: Path, scratch: sqlite3.Connection, insert: str) -> str:
    with open(path, encoding="utf-8") as handle:
        document: dict[str, Any] = json.load(handle)
    rows = []
    for patient in document.get("patients") or []:
        for study in patient.get("studies") or []:
            for series in study.get("series") or []:
                for instance in series.get("instances") or []:
                    rows.append(
                        (
                            instance.get("sopInstanceUID"),
                            instance.get("filePath"),
                            instance.get("fileSize"),
                            None,
                            instance.get("importDate"),
                            instance.get("sopClassUID"),
                            series.get("seriesInstanceUID"),
                            study.get("studyInstanceUID"),
                            patient.get("patientID"),
                            patient.get("patientName"),
                            study.get("studyDate"),
                            study.get("studyDescription"),
                            series.get("modality"),
                            series.get("seriesDescription"),
                        )
                    )
    scratch.executemany(insert, [r for r in rows if r[0]])
    return str(document.get("creationDate") or "")


# -- comparing -----------------------------------------------------------------

_BOTH_ROWS = (
    _ROWS_SELECT.replace("\nFROM instances i", ", o.*\nFROM instances i")
    + " JOIN old_rows o ON o.sop_instance_uid = i.sop_instance_uid ORDER BY i.file_path"
)


def _compare(
    scratch: sqlite3.Connection,
) -> tuple[list[IndexedFile], list[IndexedFile], list[ValueChange]]:
    added = [
        IndexedFile(sop, path)
        for sop, path in scratch.execute(
            "SELECT sop_instance_uid, file_path FROM instances i WHERE NOT EXISTS "
            "(SELECT 1 FROM old_rows o WHERE o.sop_instance_uid = i.sop_instance_uid) "
            "ORDER BY file_path"
        )
    ]
    dropped = [
        IndexedFile(sop, path or "")
        for sop, path in scratch.execute(
            "SELECT sop_instance_uid, file_path FROM old_rows o WHERE NOT EXISTS "
            "(SELECT 1 FROM instances i WHERE i.sop_instance_uid = o.sop_instance_uid) "
            "ORDER BY file_path"
        )
    ]
    changed: list[ValueChange] = []
    width = len(_OLD_COLUMNS)
    for row in scratch.execute(_BOTH_ROWS):
        new, old = row[:width], row[width:]
        for position, column in enumerate(_OLD_COLUMNS):
            if column not in _COMPARED or old[position] is None:
                continue
            if str(old[position]) != str(new[position]):
                changed.append(ValueChange(new[0], column, str(old[position]), str(new[position])))
    return added, dropped, changed


# -- putting the new index in place -------------------------------------------------


def _aside_name(original: Path, label: str) -> Path:
    """``archive.db.previous-20240101T120000``: a new name beside ``original``."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    candidate = original.with_name(f"{original.name}.{label}-{stamp}")
    counter = 1
    while candidate.exists():
        candidate = original.with_name(f"{original.name}.{label}-{stamp}-{counter}")
        counter += 1
    return candidate


def _release_healthy_index(path: Path) -> sqlite3.Connection:
    """Fold the WAL into the index and hold it, so it is one file no one else writes.

    Leaving WAL mode needs every other connection closed: if the daemon or an
    import has the index open, this fails and nothing is touched.
    """
    connection = sqlite3.connect(path, timeout=_SWAP_TIMEOUT_S, isolation_level=None)
    try:
        mode = connection.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
        if str(mode).lower() != "delete":
            raise sqlite3.OperationalError("database is locked")
        connection.execute("BEGIN EXCLUSIVE")
    except sqlite3.OperationalError as exc:
        connection.close()
        raise IndexBusy(
            f"{path}: the index is in use by another process (stop the daemon and any "
            "import, then run rebuild again)"
        ) from exc
    return connection


def _move_aside(paths: ArchivePaths, label: str) -> list[str]:
    target = _aside_name(paths.index, label)
    moved = []
    for suffix in ("", "-wal", "-shm", "-journal"):
        source = paths.root / (paths.index.name + suffix)
        if source.exists():
            destination = target.with_name(target.name + suffix)
            if not link_no_replace(source, destination):
                raise UsageError(f"{destination} already exists")
            os.unlink(source)
            moved.append(destination.name)
    return moved


def rebuild_index(root: Path | str, *, dry_run: bool = False) -> RebuildReport:
    """Rebuild ``root``'s index from its files; with ``dry_run`` change nothing.

    Adopts a folder that has ``data/`` but no index (the original tool's archive),
    and an index SQLite cannot open or whose integrity check fails.
    """
    started = time.perf_counter()
    paths = ArchivePaths(Path(root))
    if not paths.data.is_dir():
        raise NotAnArchive(paths.root)
    paths.tmp.mkdir(exist_ok=True)
    scratch_path = paths.tmp / f"{os.getpid()}-rebuild.part"
    if scratch_path.exists():
        scratch_path.unlink()
    scratch = sqlite3.connect(scratch_path, isolation_level=None)
    installed = False
    try:
        # A scratch file: durability comes from one fsync before it is installed.
        scratch.execute("PRAGMA journal_mode = OFF")
        scratch.execute("PRAGMA synchronous = OFF")
        index = Index(scratch, scratch_path)
        index.migrate()
        scratch.execute(_OLD_ROWS)
        previous = _load_previous(paths, scratch)
        with index.write() as connection:
            scan = _index_files(paths, index, connection)
            # issue 11: the trash (from its manifests) and protections survive a rebuild.
            from dicom_archive.archive import trash

            trash.adopt_manifests(paths.root, connection)
            if previous.kind == "index":
                trash.carry_protected(paths.index, connection)
            now = now_iso()
            connection.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('created_at', ?)",
                (previous.created_at or now,),
            )
            touch_modified(connection)
            connection.execute(
                "UPDATE instances SET imported_at = (SELECT o.imported_at FROM old_rows o "
                "WHERE o.sop_instance_uid = instances.sop_instance_uid) WHERE EXISTS "
                "(SELECT 1 FROM old_rows o WHERE o.sop_instance_uid = instances.sop_instance_uid "
                "AND COALESCE(o.imported_at, '') != '')"
            )
        added, dropped, changed = _compare(scratch)
        kept: list[str] = []
        if not dry_run:
            scratch.execute("DROP TABLE old_rows")
            scratch.execute("PRAGMA journal_mode = DELETE")
            scratch.close()
            fsync_path(scratch_path)
            kept = _install(paths, scratch_path, previous)
            installed = True
            from dicom_archive.archive.audit import REBUILD, append_audit

            append_audit(
                paths.root,
                REBUILD,
                selection="rebuild",
                count=scan.instances,
                details={
                    "added": len(added),
                    "dropped": len(dropped),
                    "changed": len(changed),
                    "keptAside": kept,
                },
            )
        return RebuildReport(
            dry_run=dry_run,
            previous=previous.kind,
            previous_detail=previous.detail,
            files_seen=scan.files_seen,
            instances=scan.instances,
            added=tuple(added),
            dropped=tuple(dropped),
            changed=tuple(changed),
            skipped=tuple(scan.skipped),
            misplaced=tuple(scan.misplaced),
            kept_aside=tuple(kept),
            seconds=time.perf_counter() - started,
        )
    finally:
        scratch.close()
        if not installed:
            scratch_path.unlink(missing_ok=True)


def _install(paths: ArchivePaths, scratch_path: Path, previous: _Previous) -> list[str]:
    held: sqlite3.Connection | None = None
    kept: list[str] = []
    try:
        if previous.kind == "index":
            held = _release_healthy_index(paths.index)
            kept = _move_aside(paths, "previous")
        elif paths.index.exists():
            kept = _move_aside(paths, "damaged")
        if paths.snapshot.is_file() and previous.kind in ("snapshot", "damaged index"):
            # The original tool's document: kept as it was, a fresh one is written below.
            aside = _aside_name(paths.snapshot, "original")
            if link_no_replace(paths.snapshot, aside):
                kept.append(aside.name)
        if not link_no_replace(scratch_path, paths.index):
            raise IndexBusy(f"{paths.index}: another process created an index meanwhile")
        scratch_path.unlink()
        fsync_path(paths.root)
    finally:
        if held is not None:
            held.close()
    with Index.open(paths.index) as index:
        snapshot.write_snapshot(paths, index)
    return kept
