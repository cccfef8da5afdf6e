"""Comparing the index with the disk, folder by folder, in flat memory.

Each folder under ``data/`` is listed once and compared with the index rows under
that folder (a range on the indexed ``file_path``); rows whose folder was never
seen are found by one streaming pass at the end. With ``verify_files`` each file
is also read once: hashed against its stored SHA-256 and its header re-parsed to
confirm its UIDs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from dicom_archive.archive.dicomfile import read_header
from dicom_archive.archive.index import Index, now_iso
from dicom_archive.archive.layout import TMP_SUFFIX
from dicom_archive.archive.records import CheckReport, Finding, FindingKind, InstanceHeader
from dicom_archive.archive.store import Archive
from dicom_archive.errors import IndexError_, RejectedFile

_ROWS_IN_FOLDER = """
SELECT i.file_path, i.file_size, i.sha256, i.sop_instance_uid,
       se.series_instance_uid, st.study_instance_uid
FROM instances i
JOIN series se ON se.id = i.series_pk
JOIN studies st ON st.id = se.study_pk
WHERE i.file_path > ? AND i.file_path < ?
"""
#: Without --verify-files only the size is compared: no joins.
_SIZES_IN_FOLDER = """
SELECT file_path, file_size, '', '', '', '' FROM instances
WHERE file_path > ? AND file_path < ?
"""


_SERIES_DEPTH = 3


def _walk(top: Path) -> Iterator[tuple[str, list[os.DirEntry[str]]]]:
    """(folder relative to the archive root, its non-folder entries), no symlink following."""
    stack = [str(top)]
    root_len = len(str(top.parent)) + 1
    while stack:
        folder = stack.pop()
        files: list[os.DirEntry[str]] = []
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    files.append(entry)
        yield folder[root_len:], files


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temporaries(archive: Archive) -> list[Path]:
    """Temporary copies left by writers that no longer run."""
    if not archive.paths.tmp.is_dir():
        return []
    stale = []
    for entry in archive.paths.tmp.iterdir():
        pid_text = entry.name.split("-", 1)[0]
        if entry.name.endswith(TMP_SUFFIX) and pid_text.isdigit() and _pid_alive(int(pid_text)):
            continue
        stale.append(entry)
    return sorted(stale)


def check_archive(
    archive: Archive,
    *,
    verify_files: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> CheckReport:
    started = time.perf_counter()
    report = CheckReport(verified=verify_files)
    db = archive.index.connection
    root = archive.root
    seen_folders: set[str] = set()
    rows_seen = 0
    rows_query = _ROWS_IN_FOLDER if verify_files else _SIZES_IN_FOLDER
    # No read transaction spans the walk: on a large archive it would pin the WAL for
    # minutes while the daemon imports. Races with a running import are settled by
    # _drop_races at the end (a file is always linked before its row commits).
    if archive.paths.data.is_dir():
        for folder, entries in _walk(archive.paths.data):
            seen_folders.add(folder)
            prefix = folder + "/"
            # Instances live only in series folders (data/PATIENT/STUDY/SERIES);
            # a file anywhere else is an orphan without asking the index.
            indexed = (
                {row[0]: row for row in db.execute(rows_query, (prefix, folder + "0"))}
                if folder.count("/") == _SERIES_DEPTH
                else {}
            )
            rows_seen += len(indexed)
            for entry in entries:
                relative = prefix + entry.name
                report.files_seen += 1
                row = indexed.pop(relative, None)
                if row is None or not entry.is_file(follow_symlinks=False):
                    what = "not indexed" if row is None else "not a regular file"
                    report.findings.append(Finding(FindingKind.ORPHANED, relative, what))
                    continue
                report.instances_checked += 1
                _check_one(root, entry, row, verify_files, report)
            if on_progress is not None:
                on_progress(report.instances_checked)
            for relative in indexed:
                report.instances_checked += 1
                report.findings.append(Finding(FindingKind.MISSING, relative, "file is gone"))
    # Rows in folders the walk never saw: only worth a pass over every row when the
    # folders held fewer rows than the index does.
    if rows_seen < archive.index.instance_count():
        for (relative,) in db.execute("SELECT file_path FROM instances"):
            if relative.rsplit("/", 1)[0] not in seen_folders:
                report.instances_checked += 1
                report.findings.append(Finding(FindingKind.MISSING, relative, "folder is gone"))
    _drop_races(archive, report)
    for path in stale_temporaries(archive):
        report.findings.append(
            Finding(FindingKind.TEMPORARY, str(path.relative_to(root)), "left by a stopped import")
        )
    report.seconds = time.perf_counter() - started
    return report


def _drop_races(archive: Archive, report: CheckReport) -> None:
    """Forget findings that an import running during the walk explains.

    Importers link files and commit their rows under the index write lock, so
    re-checking under that lock sees every in-flight batch either whole or not at all.
    """
    if not any(f.kind in (FindingKind.MISSING, FindingKind.ORPHANED) for f in report.findings):
        return
    try:
        with archive.index.write():
            _recheck(archive, report)
    except (IndexError_, sqlite3.OperationalError):
        _recheck(archive, report)  # a read-only archive: no importer can be running


def _recheck(archive: Archive, report: CheckReport) -> None:
    db = archive.index.connection
    kept: list[Finding] = []
    for finding in report.findings:
        if finding.kind is FindingKind.MISSING and (archive.root / finding.path).is_file():
            report.instances_checked -= 1
            continue
        if finding.kind is FindingKind.ORPHANED and finding.detail == "not indexed":
            row = db.execute(
                "SELECT 1 FROM instances WHERE file_path = ?", (finding.path,)
            ).fetchone()
            if row is not None:
                report.instances_checked += 1
                continue
        kept.append(finding)
    report.findings = kept


def _check_one(
    root: Path,
    entry: os.DirEntry[str],
    row: tuple[str, int, str, str, str, str],
    verify_files: bool,
    report: CheckReport,
) -> None:
    relative, size, sha256, sop, series_uid, study_uid = row
    actual_size = entry.stat(follow_symlinks=False).st_size
    if actual_size != size:
        report.findings.append(
            Finding(FindingKind.SIZE_MISMATCH, relative, f"{actual_size} bytes, index says {size}")
        )
        return
    if not verify_files:
        return
    try:
        actual_sha, header = _hash_and_read_header(root / relative, size, relative)
    except OSError as exc:
        report.findings.append(Finding(FindingKind.UNREADABLE, relative, exc.strerror or ""))
        return
    if actual_sha != sha256:
        report.findings.append(
            Finding(FindingKind.CONTENT_CHANGED, relative, "SHA-256 differs from import")
        )
        return
    if isinstance(header, RejectedFile):
        report.findings.append(Finding(FindingKind.UNREADABLE, relative, header.reason))
        return
    found = (header.sop_instance_uid, header.series_instance_uid, header.study_instance_uid)
    if found != (sop, series_uid, study_uid):
        report.findings.append(
            Finding(FindingKind.WRONG_IDENTITY, relative, "header UIDs differ from the index")
        )


_WHOLE_READ_LIMIT = 64 * 1024 * 1024
_CHUNK = 1024 * 1024


def _hash_and_read_header(
    path: Path, size: int, name: str
) -> tuple[str, InstanceHeader | RejectedFile]:
    """SHA-256 and parsed header from one read of a small file; large files are
    hashed in chunks and their header parsed from the open file, in flat memory."""
    with open(path, "rb") as handle:
        if size <= _WHOLE_READ_LIMIT:
            data = handle.read()
            digest = hashlib.sha256(data).hexdigest()
            source: IO[bytes] = io.BytesIO(data)
        else:
            hasher = hashlib.sha256()
            while chunk := handle.read(_CHUNK):
                hasher.update(chunk)
            digest = hasher.hexdigest()
            handle.seek(0)
            source = handle
        try:
            return digest, read_header(source, size, name)
        except RejectedFile as exc:
            return digest, exc


def record_check(index: Index, report: CheckReport, started_at: str) -> None:
    """Keep the result in the index, for ``status`` and for the record."""
    with index.write() as db:
        db.execute(
            "INSERT INTO checks(started_at, finished_at, verified, instances, findings, summary) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                started_at,
                now_iso(),
                int(report.verified),
                report.instances_checked,
                len(report.findings),
                json.dumps(report.counts()),
            ),
        )
