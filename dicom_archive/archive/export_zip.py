"""A study, series or patient as one ZIP file that opens anywhere.

Members are the archived bytes, stored (no compression: DICOM pixel data is mostly
incompressible or already compressed, and a viewer reads a stored member in place),
under readable folders::

    DOE^JOHN (12345)/20240101 CT Chest (1.2.3)/2 CT Axial 5mm/CT000001.dcm

The ZIP is streamed: each file goes through one buffer, hashed (SHA-256, compared
with the index) and CRC'd on its way in, so memory stays flat whatever the study's
size; ZIP64 records appear as soon as a member or the whole file needs them. A
member whose bytes differ from the index is cut out again (the file is truncated
back to where it began) and reported, never handed on.

The ZIP is written to a hidden temporary name beside the target
(``.NAME.PID.part``), fsynced, and only then given its name, never replacing an
existing file; a full disk or a kill leaves at most that hidden ``.part``, nothing
that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dicom_archive.archive.export import Selector
from dicom_archive.archive.fsutil import link_no_replace
from dicom_archive.archive.store import Archive
from dicom_archive.errors import ExportError

_CHUNK = 1024 * 1024

#: Characters no Windows, macOS or Linux file name may hold, and controls.
_FORBIDDEN = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f-\x9f]')
_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$", re.IGNORECASE)
_SPACES = re.compile(r"\s+")

PATIENT_CHARS = 64
STUDY_CHARS = 100
SERIES_CHARS = 64


def readable_component(text: str, limit: int, fallback: str = "_") -> str:
    """A folder name from values in a file: no character any common filesystem
    refuses, no reserved Windows name, no leading dot or trailing dot or space, NFC,
    at most ``limit`` characters."""
    cleaned = unicodedata.normalize("NFC", text)
    cleaned = _FORBIDDEN.sub("_", cleaned)
    cleaned = _SPACES.sub(" ", cleaned).strip()
    cleaned = cleaned[:limit].rstrip(". ")
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    if not cleaned:
        cleaned = fallback
    if _RESERVED.match(cleaned):
        cleaned = "_" + cleaned
    return cleaned[:limit]


def _with_suffix(readable: str, suffix: str, limit: int) -> str:
    """``readable`` cut so that `` (suffix)`` fits in ``limit``; the suffix is what
    keeps the name unique, so it is never cut unless it alone is too long."""
    tail = f" ({suffix})" if suffix else ""
    if len(tail) > limit // 2:
        tail = f" ({suffix[: limit // 2 - 4]}~)"
    head = readable_component(readable, limit - len(tail), fallback="") if readable else ""
    return readable_component((head + tail).strip(), limit)


@dataclass(frozen=True, slots=True)
class ZipMember:
    sop_instance_uid: str
    file_path: str
    file_size: int
    sha256: str
    name: str


@dataclass(slots=True)
class ZipReport:
    target: str
    selected: int = 0
    written: int = 0
    bytes_written: int = 0
    zip_bytes: int = 0
    errors: list[str] = field(default_factory=list)


_SELECT = """
SELECT p.patient_id, p.patient_name, st.id, st.study_instance_uid, {date}, st.description,
       se.id, se.series_number, se.modality, se.description, se.series_instance_uid,
       i.sop_instance_uid, i.file_path, i.file_size, i.sha256
FROM instances i
JOIN series se ON se.id = i.series_pk
JOIN studies st ON st.id = se.study_pk
JOIN patients p ON p.id = st.patient_pk
WHERE {where}
ORDER BY p.patient_id, p.patient_name, st.study_date, st.id, se.series_number, se.id,
         i.instance_number, i.id
"""


def plan_members(archive: Archive, selector: Selector) -> list[ZipMember]:
    """The members and their names, in the order they are written."""
    from dicom_archive.archive.index import SHOWN_STUDY_DATE

    if selector.study_uid is not None:
        where, value = "st.study_instance_uid = ?", selector.study_uid
    elif selector.series_uid is not None:
        where, value = "se.series_instance_uid = ?", selector.series_uid
    else:
        where, value = "p.patient_id = ?", selector.patient_id or ""
    rows = archive.index.connection.execute(
        _SELECT.format(date=SHOWN_STUDY_DATE, where=where), (value,)
    ).fetchall()
    names = _Names()
    members = []
    study_modalities: dict[int, str] = {}
    for row in archive.index.connection.execute(
        "SELECT study_pk, GROUP_CONCAT(DISTINCT modality) FROM series "
        "WHERE study_pk IN (SELECT DISTINCT se.study_pk FROM instances i "
        "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk "
        f"JOIN patients p ON p.id = st.patient_pk WHERE {where}) GROUP BY study_pk",
        (value,),
    ):
        study_modalities[row[0]] = "+".join(m for m in (row[1] or "").split(",") if m)
    for (
        patient_id,
        patient_name,
        study_pk,
        study_uid,
        study_date,
        study_description,
        series_pk,
        series_number,
        modality,
        series_description,
        series_uid,
        sop_uid,
        file_path,
        file_size,
        sha256,
    ) in rows:
        patient = names.child(
            "",
            ("patient", patient_id, patient_name),
            _with_suffix(patient_name or "(no name)", patient_id, PATIENT_CHARS)
            if patient_id
            else readable_component(patient_name or "UNKNOWN", PATIENT_CHARS),
        )
        study_label = " ".join(
            part
            for part in (study_date, study_modalities.get(study_pk, ""), study_description)
            if part
        )
        study = names.child(
            patient, ("study", study_pk), _with_suffix(study_label, study_uid, STUDY_CHARS)
        )
        series_label = " ".join(
            str(part)
            for part in (series_number, modality, series_description)
            if part not in (None, "")
        )
        series = names.child(
            study,
            ("series", series_pk),
            readable_component(series_label or series_uid, SERIES_CHARS),
        )
        number = names.next_number(series)
        prefix = readable_component(modality, 2, fallback="IM") if modality else "IM"
        members.append(
            ZipMember(sop_uid, file_path, file_size, sha256, f"{series}/{prefix}{number:06d}.dcm")
        )
    return members


class _Names:
    """Unique folder names per parent, compared case-insensitively (Windows and macOS
    extract ``a`` and ``A`` into one folder): a clash gets `` (2)``, `` (3)``..."""

    def __init__(self) -> None:
        self.assigned: dict[tuple[str, object], str] = {}
        self.taken: set[tuple[str, str]] = set()
        self.counters: dict[str, int] = {}

    def child(self, parent: str, key: object, wanted: str) -> str:
        found = self.assigned.get((parent, key))
        if found is not None:
            return found
        candidate, n = wanted, 1
        while (parent, candidate.casefold()) in self.taken:
            n += 1
            candidate = f"{wanted[: PATIENT_CHARS - 6]} ({n})"
        self.taken.add((parent, candidate.casefold()))
        path = f"{parent}/{candidate}" if parent else candidate
        self.assigned[(parent, key)] = path
        return path

    def next_number(self, folder: str) -> int:
        self.counters[folder] = self.counters.get(folder, 0) + 1
        return self.counters[folder]


def export_zip(
    archive: Archive,
    selector: Selector,
    target: Path,
    *,
    on_selected: Callable[[int], None] | None = None,
    on_member: Callable[[ZipMember, str], None] | None = None,
) -> ZipReport:
    """Write the selection as the new ZIP file ``target``; raises when nothing matches,
    when ``target`` exists, or when the ZIP cannot be completed (nothing is left
    under ``target`` then)."""
    members = plan_members(archive, selector)
    if not members:
        raise ExportError(f"nothing in the archive matches {selector.describe()}")
    if os.path.lexists(target):
        raise ExportError(f"{target} already exists (not overwritten); choose a new file name")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder (create it first)")
    if on_selected is not None:
        on_selected(len(members))
    report = ZipReport(str(target), selected=len(members))
    temporary = folder / f".{target.name}.{os.getpid()}.part"
    try:
        out = open(temporary, "xb")  # noqa: SIM115 (closed in the finally below)
    except OSError as exc:
        raise ExportError(f"{target}: cannot create the ZIP ({exc.strerror or exc})") from exc
    completed = False
    try:
        buffer = bytearray(_CHUNK)
        with zipfile.ZipFile(out, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for member in members:
                status = _add_member(archive, zf, member, buffer, report)
                if on_member is not None:
                    on_member(member, status)
        out.flush()
        os.fsync(out.fileno())
        report.zip_bytes = out.tell()
        out.close()
        if not report.written:
            raise ExportError(f"{target}: no file could be exported; no ZIP written")
        if not link_no_replace(temporary, target):
            raise ExportError(f"{target} appeared during the export (not overwritten)")
        _fsync_dir(folder)
        completed = True
    except OSError as exc:
        raise ExportError(
            f"{target}: the ZIP could not be written ({exc.strerror or exc}); nothing left "
            "under that name"
        ) from exc
    finally:
        with contextlib.suppress(OSError):  # a full disk fails the buffer's flush again
            out.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if not completed:
            with contextlib.suppress(OSError):
                _fsync_dir(folder)
    return report


def _add_member(
    archive: Archive,
    zf: zipfile.ZipFile,
    member: ZipMember,
    buffer: bytearray,
    report: ZipReport,
) -> str:
    """ "written" or "error"; an error's member is cut out of the ZIP again."""
    source = archive.root / member.file_path
    try:
        handle = open(source, "rb", buffering=0)  # noqa: SIM115 (closed below)
    except OSError as exc:
        report.errors.append(f"{member.file_path}: {exc.strerror or exc}; not exported")
        return "error"
    with handle:
        info = os.fstat(handle.fileno())
        zinfo = zipfile.ZipInfo(member.name, date_time=_dos_time(info.st_mtime))
        zinfo.compress_type = zipfile.ZIP_STORED
        zinfo.external_attr = 0o644 << 16
        zinfo.file_size = info.st_size  # ZIP64 headers when this needs them
        digest = hashlib.sha256()
        view = memoryview(buffer)
        with zf.open(zinfo, mode="w") as writer:
            while count := handle.readinto(buffer):
                chunk = view[:count]
                digest.update(chunk)
                writer.write(chunk)
    if digest.hexdigest() == member.sha256 and info.st_size == member.file_size:
        report.written += 1
        report.bytes_written += info.st_size
        return "written"
    _cut_last_member(zf, zinfo)
    report.errors.append(
        f"{member.file_path}: archived file differs from its index entry "
        "(run: dicom-archive check --verify-files); not exported"
    )
    return "error"


def _cut_last_member(zf: zipfile.ZipFile, zinfo: zipfile.ZipInfo) -> None:
    """Forget the member just written and truncate the file back to its start."""
    assert zf.fp is not None
    zf.filelist.remove(zinfo)
    del zf.NameToInfo[zinfo.filename]
    zf.fp.seek(zinfo.header_offset)
    zf.fp.truncate()
    zf.start_dir = zinfo.header_offset


def _dos_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    stamp = time.localtime(max(mtime, 315532800 + 86400))  # ZIP dates start in 1980
    return (stamp.tm_year, stamp.tm_mon, stamp.tm_mday, stamp.tm_hour, stamp.tm_min, stamp.tm_sec)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
