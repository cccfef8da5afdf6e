"""From UIDs in a URL to archived files, through the index only.

A UID from a URL is checked against the PS3.5 9.1 form before any query, and a file
is only ever the index's ``file_path`` under the archive root: a URL names no path.
An instance must belong to the study and series the URL states (a viewer that asks
for another study's instance gets 404, not the file).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from dicom_archive.archive.index import Index
from dicom_archive.archive.store import open_archive
from dicom_archive.errors import UsageError

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_local = threading.local()


class BadUID(UsageError):
    """A URL segment that is no UID (letters, slashes, dots in a row, too long)."""


def check_uid(value: str, what: str) -> str:
    if len(value) > 64 or not _UID.match(value):
        shown = value if len(value) <= 70 and value.isprintable() else repr(value[:70])
        raise BadUID(f"{what} {shown!s} is not a UID (digits and dots, at most 64 characters)")
    return value


def thread_index(root: Path) -> Index:
    """This thread's open index of the archive at ``root`` (an Index is per thread).

    Web requests run on a thread pool: each worker thread keeps its connection.
    """
    opened: dict[Path, Index] | None = getattr(_local, "indexes", None)
    if opened is None:
        opened = _local.indexes = {}
    index = opened.get(root)
    if index is None:
        archive = open_archive(root)
        index = opened[root] = archive.index
    return index


@dataclass(frozen=True, slots=True)
class InstanceFile:
    sop_instance_uid: str
    path: Path


def instance_file(root: Path, study: str, series: str, instance: str) -> InstanceFile | None:
    check_uid(study, "study")
    check_uid(series, "series")
    check_uid(instance, "instance")
    row = (
        thread_index(root)
        .connection.execute(
            "SELECT i.file_path FROM instances i JOIN series se ON se.id = i.series_pk "
            "JOIN studies st ON st.id = se.study_pk WHERE i.sop_instance_uid = ? "
            "AND se.series_instance_uid = ? AND st.study_instance_uid = ?",
            (instance, series, study),
        )
        .fetchone()
    )
    return InstanceFile(instance, root / row[0]) if row else None


def series_files(root: Path, study: str, series: str | None = None) -> list[list[InstanceFile]]:
    """The files of a study (or of one of its series), series by series in the study's
    order (series number, then arrival), each in instance-number order."""
    check_uid(study, "study")
    where, params = "st.study_instance_uid = ?", [study]
    if series is not None:
        check_uid(series, "series")
        where += " AND se.series_instance_uid = ?"
        params.append(series)
    rows = (
        thread_index(root)
        .connection.execute(
            "SELECT se.id, i.sop_instance_uid, i.file_path FROM instances i "
            "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk "
            f"WHERE {where} ORDER BY se.series_number IS NULL, se.series_number, se.id, "
            "i.instance_number IS NULL, i.instance_number, i.id",
            params,
        )
        .fetchall()
    )
    grouped: dict[int, list[InstanceFile]] = {}
    for series_pk, sop, file_path in rows:
        grouped.setdefault(series_pk, []).append(InstanceFile(sop, root / file_path))
    return list(grouped.values())
