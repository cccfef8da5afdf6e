"""Comparing the index with the disk, folder by folder, in flat memory.

Each folder under ``data/`` is listed once and compared with the index rows under
that folder (a range on the indexed ``file_path``); rows whose folder was never
seen are found by one streaming pass at the end. With ``verify_files`` each file
is also read once: hashed against its stored SHA-256 and its header re-parsed to
confirm its UIDs.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

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
#: Without --verify-files only sizes are compared, first as one string per folder built
#: inside SQLite ("name/size/name/size..." in name order; no Python object per row)...
_LISTING_OF_FOLDER = """
SELECT count(*), coalesce(group_concat(name || '/' || file_size, '/'), '') FROM (
    SELECT substr(file_path, ?) AS name, file_size FROM instances
    WHERE file_path > ? AND file_path < ? ORDER BY file_path
)
"""
#: ...and only when that differs from the disk, row by row (the name within the folder).
_SIZES_IN_FOLDER = """
SELECT substr(file_path, ?), file_size FROM instances WHERE file_path > ? AND file_path < ?
"""

_SERIES_DEPTH = 3
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _walk(top: Path) -> Iterator[tuple[str, list[os.DirEntry[str]]]]:
    """(folder relative to the archive root, its non-folder entries), no symlink following.

    Listing by descriptor makes each ``DirEntry.stat`` an ``fstatat`` of one name,
    not a lookup of the whole path; the folder stays open until the caller asks for
    the next one. A folder removed meanwhile is skipped: its rows are then
    reported missing, and re-checked.
    """
    root_len = len(str(top.parent)) + 1
    # data/ itself may be a link (to a larger disk), as before; nothing under it is followed.
    stack = [(str(top)[root_len:], os.open(top, _OPEN_DIR & ~os.O_NOFOLLOW))]
    try:
        while stack:
            folder, fd = stack.pop()
            try:
                files: list[os.DirEntry[str]] = []
                with os.scandir(fd) as entries:
                    for entry in entries:
                        if not entry.is_dir(follow_symlinks=False):
                            files.append(entry)
                            continue
                        try:
                            child = os.open(entry.name, _OPEN_DIR, dir_fd=fd)
                        except (FileNotFoundError, NotADirectoryError):
                            continue
                        stack.append((f"{folder}/{entry.name}", child))
                yield folder, files
            finally:
                os.close(fd)
    finally:
        for _folder, fd in stack:  # the walk stopped early
            os.close(fd)


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
    seen_folders: set[str] = set()
    rows_seen = 0
    # No read transaction spans the walk: on a large archive it would pin the WAL for
    # minutes while the daemon imports. Races with a running import are settled by
    # _drop_races at the end (a file is always linked before its row commits).
    if archive.paths.data.is_dir():
        compare = _compare_hashed if verify_files else _compare_sizes
        for folder, entries in _walk(archive.paths.data):
            seen_folders.add(folder)
            report.files_seen += len(entries)
            if folder.count("/") == _SERIES_DEPTH:
                rows_seen += compare(archive, folder, entries, report)
            else:
                # Instances live only in series folders (data/PATIENT/STUDY/SERIES);
                # a file anywhere else is an orphan without asking the index.
                for entry in entries:
                    report.findings.append(
                        Finding(FindingKind.ORPHANED, f"{folder}/{entry.name}", "not indexed")
                    )
            if on_progress is not None:
                on_progress(report.instances_checked)
    # Rows in folders the walk never saw: only worth a pass over every row when the
    # folders held fewer rows than the index does.
    if rows_seen < archive.index.instance_count():
        for (relative,) in archive.index.connection.execute("SELECT file_path FROM instances"):
            if relative.rsplit("/", 1)[0] not in seen_folders:
                report.instances_checked += 1
                report.findings.append(Finding(FindingKind.MISSING, relative, "folder is gone"))
    _drop_races(archive, report)
    _drop_trash_in_flight(archive, report)
    for path in stale_temporaries(archive):
        report.findings.append(
            Finding(
                FindingKind.TEMPORARY,
                str(path.relative_to(archive.root)),
                "left by a stopped import",
            )
        )
    report.seconds = time.perf_counter() - started
    return report


def _compare_sizes(
    archive: Archive, folder: str, entries: list[os.DirEntry[str]], report: CheckReport
) -> int:
    """Sizes on disk against the index for one series folder; the rows it held.

    The common case, every file present with its indexed size and nothing else there,
    costs one ``fstatat`` per file and one string comparison. The listing cannot match
    by accident: names on disk hold no "/", so equal strings with equal counts mean
    no indexed name holds one either, and the pairs are the same. (Should SQLite ever
    concatenate out of order, the strings differ and the row-by-row path decides.)
    """
    prefix = folder + "/"
    db = archive.index.connection
    bounds = (len(prefix) + 1, prefix, folder + "0")
    count, listing = db.execute(_LISTING_OF_FOLDER, bounds).fetchone()
    on_disk: dict[str, int] = {}
    irregular: list[str] = []
    for entry in entries:
        if entry.is_file(follow_symlinks=False):
            try:
                on_disk[entry.name] = entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue  # gone since the listing: missing if indexed, and re-checked
        else:
            irregular.append(entry.name)
    if (
        not irregular
        and count == len(on_disk)
        and listing == "/".join([f"{name}/{size}" for name, size in sorted(on_disk.items())])
    ):
        report.instances_checked += count
        return int(count)
    indexed: dict[str, int] = dict(db.execute(_SIZES_IN_FOLDER, bounds))
    rows = len(indexed)
    report.instances_checked += rows
    for name, actual_size in on_disk.items():
        size = indexed.pop(name, None)
        if size is None:
            report.findings.append(Finding(FindingKind.ORPHANED, prefix + name, "not indexed"))
        elif actual_size != size:
            detail = f"{actual_size} bytes, index says {size}"
            report.findings.append(Finding(FindingKind.SIZE_MISMATCH, prefix + name, detail))
    for name in irregular:
        if indexed.pop(name, None) is None:
            report.findings.append(Finding(FindingKind.ORPHANED, prefix + name, "not indexed"))
        else:  # indexed, but a link or a device: not an instance that was checked
            report.instances_checked -= 1
            detail = "not a regular file"
            report.findings.append(Finding(FindingKind.ORPHANED, prefix + name, detail))
    for name in indexed:
        report.findings.append(Finding(FindingKind.MISSING, prefix + name, "file is gone"))
    return rows


def _compare_hashed(
    archive: Archive, folder: str, entries: list[os.DirEntry[str]], report: CheckReport
) -> int:
    """Size, SHA-256 and header UIDs of every file in one series folder; the rows it held."""
    prefix = folder + "/"
    db = archive.index.connection
    indexed = {row[0]: row for row in db.execute(_ROWS_IN_FOLDER, (prefix, folder + "0"))}
    rows = len(indexed)
    for entry in entries:
        relative = prefix + entry.name
        row = indexed.pop(relative, None)
        if row is None or not entry.is_file(follow_symlinks=False):
            what = "not indexed" if row is None else "not a regular file"
            report.findings.append(Finding(FindingKind.ORPHANED, relative, what))
            continue
        report.instances_checked += 1
        _check_one(archive.root, entry, row, True, report)
    for relative in indexed:
        report.instances_checked += 1
        report.findings.append(Finding(FindingKind.MISSING, relative, "file is gone"))
    return rows


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


def _drop_trash_in_flight(archive: Archive, report: CheckReport) -> None:
    """Files a running delete or restore is moving are journaled, not orphaned."""
    if not any(f.kind is FindingKind.ORPHANED for f in report.findings):
        return
    from dicom_archive.archive.trash import in_flight_paths

    moving = in_flight_paths(archive.index)
    if moving:
        report.findings[:] = [
            f for f in report.findings if not (f.kind is FindingKind.ORPHANED and f.path in moving)
        ]


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
    # Here, not at the top: a check without --verify-files neither hashes nor parses.
    import hashlib

    from dicom_archive.archive.dicomfile import read_header

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
