"""Copying a selection of the archive out, byte for byte.

Every file is hashed on its way out and compared with the index: a file damaged
in the archive is reported, not handed on. An existing identical file at the
destination is skipped; a different one is never overwritten.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dicom_archive.archive.fsutil import link_no_replace, syncfs
from dicom_archive.archive.layout import DATA_DIR
from dicom_archive.archive.store import Archive
from dicom_archive.errors import ExportError, UsageError

_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Selector:
    """Exactly one of study, series or patient."""

    study_uid: str | None = None
    series_uid: str | None = None
    patient_id: str | None = None

    def __post_init__(self) -> None:
        chosen = [v for v in (self.study_uid, self.series_uid, self.patient_id) if v is not None]
        if len(chosen) != 1:
            raise UsageError("choose exactly one of --study-uid, --series-uid, --patient-id")

    def describe(self) -> str:
        if self.study_uid is not None:
            return f"study {self.study_uid}"
        if self.series_uid is not None:
            return f"series {self.series_uid}"
        return f"patient {self.patient_id}"


@dataclass(frozen=True, slots=True)
class ExportItem:
    sop_instance_uid: str
    file_path: str
    file_size: int
    sha256: str


@dataclass(slots=True)
class ExportReport:
    selected: int = 0
    copied: int = 0
    skipped_identical: int = 0
    bytes_copied: int = 0
    errors: list[str] = field(default_factory=list)


def select_instances(archive: Archive, selector: Selector) -> list[ExportItem]:
    base = (
        "SELECT i.sop_instance_uid, i.file_path, i.file_size, i.sha256 FROM instances i "
        "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk "
        "JOIN patients p ON p.id = st.patient_pk WHERE "
    )
    if selector.study_uid is not None:
        where, value = "st.study_instance_uid = ?", selector.study_uid
    elif selector.series_uid is not None:
        where, value = "se.series_instance_uid = ?", selector.series_uid
    else:
        where, value = "p.patient_id = ?", selector.patient_id or ""
    rows = archive.index.connection.execute(
        base + where + " ORDER BY st.id, se.id, i.instance_number, i.id", (value,)
    ).fetchall()
    return [ExportItem(*row) for row in rows]


def destination_for(item: ExportItem, output: Path, flatten: bool) -> Path:
    relative = Path(item.file_path)
    if flatten:
        return output / relative.name
    inside_data = relative.relative_to(DATA_DIR) if relative.parts[0] == DATA_DIR else relative
    return output / inside_data


def export_instances(
    archive: Archive,
    selector: Selector,
    output: Path,
    *,
    flatten: bool = False,
    on_file: Callable[[ExportItem, str], None] | None = None,
) -> ExportReport:
    """Copy the selected instances into ``output``; raises when nothing matches."""
    items = select_instances(archive, selector)
    if not items:
        raise ExportError(f"nothing in the archive matches {selector.describe()}")
    if output.exists() and not output.is_dir():
        raise ExportError(f"{output} exists and is not a folder")
    output.mkdir(parents=True, exist_ok=True)
    report = ExportReport(selected=len(items))
    for item in items:
        status = _export_one(archive, item, destination_for(item, output, flatten), report)
        if on_file is not None:
            on_file(item, status)
    syncfs(output)
    return report


def _export_one(archive: Archive, item: ExportItem, target: Path, report: ExportReport) -> str:
    source = archive.root / item.file_path
    try:
        if target.exists():
            if _sha256_of(target) == item.sha256:
                report.skipped_identical += 1
                return "skipped"
            report.errors.append(f"{target}: a different file is already there (not overwritten)")
            return "error"
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            sha256 = _copy_hashing(source, temporary)
            if sha256 != item.sha256:
                report.errors.append(
                    f"{item.file_path}: archived file differs from its index entry "
                    "(run: dicom-archive check --verify-files); not exported"
                )
                return "error"
            if not link_no_replace(temporary, target):
                report.errors.append(f"{target}: a file appeared there during export")
                return "error"
        finally:
            if temporary.exists():
                temporary.unlink()
    except OSError as exc:
        report.errors.append(f"{item.file_path}: {exc.strerror or exc}")
        return "error"
    report.copied += 1
    report.bytes_copied += item.file_size
    return "copied"


def _copy_hashing(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(target, "xb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
