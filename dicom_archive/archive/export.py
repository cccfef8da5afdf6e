"""Copying a selection of the archive out, byte for byte.

Every file is hashed on its way out and compared with the index: a file damaged
in the archive is reported, not handed on. An existing identical file at the
destination is skipped; a different one is never overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dicom_archive.archive.fsutil import link_no_replace, syncfs
from dicom_archive.archive.layout import DATA_DIR
from dicom_archive.archive.store import Archive
from dicom_archive.errors import ExportError, UsageError

_CHUNK = 4 * 1024 * 1024


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
    on_selected: Callable[[int], None] | None = None,
    on_file: Callable[[ExportItem, str], None] | None = None,
) -> ExportReport:
    """Copy the selected instances into ``output``; raises when nothing matches.

    ``on_selected`` hears how many instances were selected before the first copy.
    """
    items = select_instances(archive, selector)
    if not items:
        raise ExportError(f"nothing in the archive matches {selector.describe()}")
    if output.exists() and not output.is_dir():
        raise ExportError(f"{output} exists and is not a folder")
    output.mkdir(parents=True, exist_ok=True)
    if on_selected is not None:
        on_selected(len(items))
    report = ExportReport(selected=len(items))
    exporter = _Exporter(str(archive.root), report)
    for item in items:
        status = exporter.export(item, str(destination_for(item, output, flatten)))
        if on_file is not None:
            on_file(item, status)
    syncfs(output)
    return report


class _Exporter:
    """One export run: string paths and a cache of folders made (no pathlib or mkdir
    per file), each file read once, hashed and written under a temporary name, then
    linked to its name only if that name is free."""

    def __init__(self, root: str, report: ExportReport) -> None:
        self.root = root
        self.report = report
        self.folders: set[str] = set()
        self.pid = os.getpid()

    def export(self, item: ExportItem, target: str) -> str:
        report = self.report
        try:
            if os.path.lexists(target):
                if _sha256_of(target) == item.sha256:
                    report.skipped_identical += 1
                    return "skipped"
                report.errors.append(
                    f"{target}: a different file is already there (not overwritten)"
                )
                return "error"
            folder, name = os.path.split(target)
            if folder not in self.folders:
                os.makedirs(folder, exist_ok=True)
                self.folders.add(folder)
            temporary = os.path.join(folder, f".{name}.{self.pid}.tmp")
            try:
                sha256 = _copy_hashing(os.path.join(self.root, item.file_path), temporary)
                if sha256 != item.sha256:
                    report.errors.append(
                        f"{item.file_path}: archived file differs from its index entry "
                        "(run: dicom-archive check --verify-files); not exported"
                    )
                    return "error"
                if not link_no_replace(Path(temporary), Path(target)):
                    report.errors.append(f"{target}: a file appeared there during export")
                    return "error"
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
        except OSError as exc:
            report.errors.append(f"{item.file_path}: {exc.strerror or exc}")
            return "error"
        report.copied += 1
        report.bytes_copied += item.file_size
        return "copied"


def _copy_hashing(source: str, target: str) -> str:
    digest = hashlib.sha256()
    with open(source, "rb") as src:
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
        finally:
            os.close(out)
    return digest.hexdigest()


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
