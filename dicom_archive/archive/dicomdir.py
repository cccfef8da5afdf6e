"""A study, series or patient as a PS3.10 file-set: a DICOMDIR and the instances
under 8-character File IDs, ready to burn to a CD or DVD or copy to a USB stick.

pydicom's ``FileSet`` builds the directory records (PATIENT, STUDY, SERIES and the
leaf type each SOP Class needs) and computes the DICOMDIR's offsets; it names the
files ``PT000000/ST000000/SE000000/IM000000`` (upper case, digits, at most eight
characters: ISO 9660 level 1). It re-encodes whatever it is given, so it is given
only each file's header, and every file it wrote is then replaced by the archived
bytes, copied and hashed (SHA-256 against the index) on the way, so the instances on
the media are byte-identical to the archive.

Type 1 record keys a file lacks (PS3.3 F.5: Patient ID, Study Date and Time, Study
ID, Modality, Series Number, Instance Number) are invented as ``dcmmkdir +I`` does,
in the DICOMDIR only, and reported. The media profile that fits is stated:
STD-GEN-CD (and -DVD-RAM, -USB) when every file is Explicit VR Little Endian, the
DVD/BD/USB JPEG or JPEG 2000 profiles when compressed files need them, and a
warning naming the files that fit no general-purpose profile (the bytes are never
converted).

Everything is written into a hidden folder beside the target, made durable with
one ``syncfs``, and renamed to the target only when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_archive.archive.export import ExportItem, Selector, _Exporter, select_instances
from dicom_archive.archive.fsutil import syncfs
from dicom_archive.archive.store import Archive
from dicom_archive.errors import ExportError

EXPLICIT_LE = "1.2.840.10008.1.2.1"
_JPEG = {
    "1.2.840.10008.1.2.4.50",  # baseline
    "1.2.840.10008.1.2.4.51",  # extended
    "1.2.840.10008.1.2.4.57",  # lossless, process 14
    "1.2.840.10008.1.2.4.70",  # lossless, process 14 SV1
}
_J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
_NAMES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.5": "RLE Lossless",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
}


@dataclass(slots=True)
class DicomdirReport:
    target: str
    selected: int = 0
    written: int = 0
    bytes_written: int = 0
    profile: str = ""
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Archive path -> File ID (with / separators) on the media.
    file_ids: dict[str, str] = field(default_factory=dict)


def media_profile(transfer_syntaxes: dict[str, int]) -> tuple[str, list[str]]:
    """The general-purpose media profile that fits files of these transfer syntaxes
    (UID -> count), and warnings for those that fit none."""
    syntaxes = set(transfer_syntaxes)
    unfit = sorted(syntaxes - {EXPLICIT_LE} - _JPEG - _J2K)
    notes = [
        f"{transfer_syntaxes[uid]} files in {_NAMES.get(uid, uid)} fit no general-purpose "
        "media profile (PS3.11 wants Explicit VR Little Endian or JPEG / JPEG 2000); most "
        "viewers read them anyway, and they are kept byte-identical, not converted"
        for uid in unfit
    ]
    if syntaxes <= {EXPLICIT_LE}:
        return "STD-GEN-CD (also STD-GEN-DVD-RAM, STD-GEN-USB)", notes
    if not syntaxes & _J2K:
        profile = "STD-GEN-DVD-JPEG / STD-GEN-USB-JPEG (compressed files: not STD-GEN-CD)"
    else:
        profile = "STD-GEN-DVD-J2K / STD-GEN-USB-J2K (JPEG 2000 files: not STD-GEN-CD)"
    if unfit:
        profile += "; some files fit none"
    return profile, notes


#: Type 1 keys of the standard records (PS3.3 F.5) and what is invented without them.
_INVENT = {
    "PatientID": "UNKNOWN",
    "StudyDate": "19000101",
    "StudyTime": "000000",
    "StudyID": "1",
    "Modality": "OT",
    "SeriesNumber": "1",
}


def export_dicomdir(archive: Archive, selector: Selector, target: Path) -> DicomdirReport:
    """Write the selection as a new file-set in ``target`` (absent or an empty folder)."""
    items = select_instances(archive, selector)
    if not items:
        raise ExportError(f"nothing in the archive matches {selector.describe()}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(
            f"{target} exists and is not an empty folder; a file-set needs a new or empty one"
        )
    parent = target.absolute().parent
    if not parent.is_dir():
        raise ExportError(f"{parent} is not a folder (create it first)")
    report = DicomdirReport(str(target), selected=len(items))
    staging = parent / f".{target.name}.{os.getpid()}.part"
    try:
        staging.mkdir()
    except OSError as exc:
        raise ExportError(f"{target}: cannot create the file-set ({exc.strerror or exc})") from exc
    done = False
    try:
        _build(archive, items, staging, report)
        if not report.written:
            first = report.errors[0] if report.errors else "nothing selected"
            raise ExportError(f"{target}: no file could be exported ({first}); nothing written")
        syncfs(staging)
        if target.is_dir():
            target.rmdir()  # empty, checked above: the staged file-set takes its place
        os.rename(staging, target)
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        done = True
    except OSError as exc:
        raise ExportError(
            f"{target}: the file-set could not be written ({exc.strerror or exc}); "
            "nothing left under that name"
        ) from exc
    finally:
        if not done:
            shutil.rmtree(staging, ignore_errors=True)
    return report


def _build(
    archive: Archive, items: list[ExportItem], staging: Path, report: DicomdirReport
) -> None:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError
    from pydicom.fileset import FileSet

    fileset = FileSet()
    fileset.ID = "DICOM_ARCHIVE"
    by_sop: dict[str, ExportItem] = {}
    syntaxes: dict[str, int] = {}
    invented: dict[str, int] = {}
    numbers: dict[str, int] = {}
    for item in items:
        source = archive.root / item.file_path
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(source, stop_before_pixels=True)
        except InvalidDicomError:
            report.errors.append(
                f"{item.file_path}: not a Part 10 file (no File Meta Information), which a "
                "file-set cannot hold; not exported (use --zip or --output)"
            )
            continue
        except Exception as exc:  # pydicom raises many kinds on a damaged file
            report.errors.append(f"{item.file_path}: unreadable ({exc}); not exported")
            continue
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        syntaxes[syntax] = syntaxes.get(syntax, 0) + 1
        for keyword, value in _INVENT.items():
            if not str(ds.get(keyword, "") or "").strip():
                setattr(ds, keyword, value)
                invented[keyword] = invented.get(keyword, 0) + 1
        if ds.get("InstanceNumber") in (None, ""):
            series = str(ds.SeriesInstanceUID)
            numbers[series] = numbers.get(series, 0) + 1
            ds.InstanceNumber = numbers[series]
            invented["InstanceNumber"] = invented.get("InstanceNumber", 0) + 1
        try:
            instance = _add(fileset, ds)
        except Exception as exc:  # pydicom's record makers and writer raise many kinds
            report.errors.append(f"{item.file_path}: no directory record ({exc}); not exported")
            continue
        charset = ds.get("SpecificCharacterSet")
        if charset:
            node = instance.node
            while node is not None and not node.is_root:
                node._record.SpecificCharacterSet = charset
                node = node.parent
        by_sop[str(ds.SOPInstanceUID)] = item
    if not by_sop:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fileset.write(staging)
    copier = _Exporter(str(archive.root))
    copy_errors: list[str] = []
    for instance in fileset:
        item = by_sop[str(instance.SOPInstanceUID)]
        file_id = "/".join(instance.FileID.split(os.sep))
        destination = staging / file_id
        replacement = destination.with_name(destination.name + ".CPY")
        try:
            sha256 = copier._copy(str(archive.root / item.file_path), str(replacement))
            if sha256 != item.sha256:
                copy_errors.append(
                    f"{item.file_path}: archived file differs from its index entry "
                    "(run: dicom-archive check --verify-files); not exported"
                )
                os.unlink(replacement)
                continue
            os.replace(replacement, destination)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(replacement)
            raise
        report.written += 1
        report.bytes_written += item.file_size
        report.file_ids[item.file_path] = file_id
    if copy_errors:
        # A record whose file holds other bytes than the archive's would make the
        # file-set lie: leave the whole export undone.
        raise ExportError(
            f"{len(copy_errors)} files could not be exported "
            f"(first: {copy_errors[0]}); no file-set written"
        )
    report.profile, notes = media_profile(syntaxes)
    report.warnings.extend(notes)
    capacity = _capacity_note(report.bytes_written)
    if capacity:
        report.warnings.append(capacity)
    if invented:
        listed = ", ".join(f"{k} ({n})" for k, n in sorted(invented.items()))
        report.warnings.append(
            f"invented type 1 directory record values the files lack (as dcmmkdir +I): "
            f"{listed}; the files themselves are unchanged"
        )


#: What the standard records (PS3.3 F.5) draw on, for a file whose full header
#: pydicom cannot write back (a value that does not fit its VR, say).
_RECORD_KEYS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "PatientID",
    "PatientName",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "StudyInstanceUID",
    "StudyID",
    "AccessionNumber",
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "ContentDate",
    "ContentTime",
    "CompletionFlag",
    "VerificationFlag",
    "ConceptNameCodeSequence",
    "DoseSummationType",
    "PresentationCreationDate",
    "PresentationCreationTime",
    "ContentLabel",
    "ContentDescription",
    "ContentCreatorName",
    "DocumentTitle",
    "MIMETypeOfEncapsulatedDocument",
    "InstanceCreationDate",
    "RTPlanDate",
    "RTPlanTime",
    "RTPlanLabel",
    "StructureSetLabel",
    "StructureSetDate",
    "StructureSetTime",
    "HangingProtocolName",
    "HangingProtocolDescription",
    "HangingProtocolLevel",
    "HangingProtocolCreator",
    "HangingProtocolCreationDateTime",
    "NumberOfPriorsReferenced",
    "ReferencedSeriesSequence",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "ImageType",
    "FrameOfReferenceUID",
    "EncapsulatedDocument",
)


def _add(fileset: Any, ds: Any) -> Any:
    """``fileset.add`` with the header; with only the record keys when pydicom cannot
    save the header as it stands (the saved copy is replaced by the archived bytes)."""
    from pydicom.dataset import Dataset

    try:
        return fileset.add(ds)
    except (TypeError, ValueError, OverflowError, LookupError):
        reduced = Dataset()
        reduced.file_meta = ds.file_meta
        for keyword in _RECORD_KEYS:
            if keyword in ds and keyword != "EncapsulatedDocument":
                with contextlib.suppress(Exception):
                    setattr(reduced, keyword, ds[keyword].value)
        return fileset.add(reduced)


#: Usable bytes of the media the general-purpose profiles name (a 700 MB CD-R, a
#: single-layer DVD, a single-layer BD).
_MEDIA = (("a CD-R", 700 * 1024**2), ("a DVD", 4_700_000_000), ("a BD", 25_000_000_000))


def _capacity_note(size: int) -> str:
    """What the file-set is too big for, when it is too big for a CD-R."""
    too_small = [name for name, capacity in _MEDIA if size > capacity]
    if not too_small:
        return ""
    fits = next((name for name, capacity in _MEDIA if size <= capacity), "")
    where = f"it fits {fits} or a USB stick" if fits else "use a USB stick or a disk"
    return f"the file-set holds {size / 1e9:.1f} GB: too big for {' or '.join(too_small)}; {where}"
