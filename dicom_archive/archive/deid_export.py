"""Exporting a selection de-identified: read, apply the profile, write durably.

Each archived file is read whole, checked against its SHA-256 in the index (a damaged
file is reported, never handed on de-identified), de-identified by ``Deidentifier``
and written under a temporary name in the output. A batch of files then becomes
durable in a fixed order: the pseudonym map records every value handed out, one
``syncfs`` makes the temporary files' contents durable, each is linked to its final
name (never replacing a file), and a last ``syncfs`` makes the names durable before
the export reports done. A crash at any instant leaves at most hidden ``.*.tmp``
files, never a complete-looking file with missing contents.

Output names are made from the *new* values (pseudonym, new UIDs): the archive's own
paths carry the Patient ID.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import os
import struct
import threading
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicom_archive.archive.audit import DEIDENTIFIED_EXPORT, append_audit
from dicom_archive.archive.deidentify import Deidentifier, DeidOptions, InstanceResult
from dicom_archive.archive.export import ExportItem, Selector, select_instances
from dicom_archive.archive.fsutil import link_no_replace, syncfs
from dicom_archive.archive.layout import ArchivePaths, safe_component
from dicom_archive.archive.pseudonyms import Keyer, PseudonymMap, load_or_create_secret
from dicom_archive.archive.store import Archive
from dicom_archive.errors import ExportError

_BATCH = 32

#: Modalities whose images often carry text burned into the pixels (ultrasound
#: measurements, screenshots, scanned documents, endoscopy and angiography overlays).
BURN_IN_MODALITIES = frozenset({"US", "IVUS", "SC", "OT", "XC", "ES", "GM", "SM", "DOC", "XA"})
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its multi-frame .1 to .4


@dataclass(frozen=True, slots=True)
class PixelWarning:
    """A series whose pixels may show what the header no longer does."""

    series_instance_uid: str  # the de-identified one: safe to print and share
    modality: str
    reason: str
    instances: int


@dataclass(slots=True)
class DeidExportReport:
    selected: int = 0
    written: int = 0
    skipped_identical: int = 0
    bytes_written: int = 0
    errors: list[str] = field(default_factory=list)
    pixel_warnings: list[PixelWarning] = field(default_factory=list)
    project: str = ""
    patients: int = 0


def export_deidentified(
    archive: Archive,
    selector: Selector,
    output: Path,
    options: DeidOptions,
    *,
    flatten: bool = False,
    reason: str | None = None,
    on_selected: Callable[[int], None] | None = None,
    on_file: Callable[[ExportItem, str], None] | None = None,
) -> DeidExportReport:
    """De-identify the selected instances into ``output``; raises when nothing matches.

    ``on_file`` hears each file's status: written, skipped (an identical file is
    there: the output is deterministic, so a re-export skips) or error. Once the
    files are durable the export is recorded in the audit log (with ``reason``).
    """
    items = select_instances(archive, selector)
    if not items:
        raise ExportError(f"nothing in the archive matches {selector.describe()}")
    if output.exists() and not output.is_dir():
        raise ExportError(f"{output} exists and is not a folder")
    if output.resolve().is_relative_to(archive.root.resolve()):
        raise ExportError(f"{output}: a de-identified export must go outside the archive")
    output.mkdir(parents=True, exist_ok=True)
    if on_selected is not None:
        on_selected(len(items))
    secret = load_or_create_secret(archive.root)
    deidentifier = Deidentifier(options, Keyer(secret, options.project))
    stager = _Stager(archive.root, output, flatten, deidentifier)
    report = DeidExportReport(selected=len(items), project=options.project)
    warnings: dict[tuple[str, str, str], int] = {}
    patients: set[str] = set()
    results = _StagedResults(items, stager, options, secret)
    with PseudonymMap(archive.root) as pseudonym_map, results:
        for start in range(0, len(items), _BATCH):
            batch = items[start : start + _BATCH]
            staged: list[tuple[ExportItem, str, str]] = []  # item, temporary, target
            mappings: set[tuple[str, str, str]] = set()
            try:
                for item in batch:
                    status, detail = results.next()
                    if isinstance(detail, _Staged):
                        staged.append((item, detail.temporary, detail.target))
                        mappings |= detail.result.mappings
                        report.bytes_written += detail.size
                        _note_pixels(detail, warnings)
                        patients.add(detail.patient)
                        continue
                    if status == "skipped":
                        report.skipped_identical += 1
                        patients.add(detail)
                    else:
                        report.errors.append(detail)
                    if on_file is not None:
                        on_file(item, status)
                if staged:
                    pseudonym_map.record(options.project, sorted(mappings))
                    syncfs(output)
                for item, temporary, target in staged:
                    if link_no_replace(temporary, target):
                        report.written += 1
                        status = "written"
                    else:
                        report.errors.append(f"{target}: a file appeared there during export")
                        status = "error"
                    if on_file is not None:
                        on_file(item, status)
            finally:
                for _, temporary, _ in staged:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(temporary)
    syncfs(output)
    report.patients = len(patients)
    report.pixel_warnings = [
        PixelWarning(series, modality, why, count)
        for (series, modality, why), count in sorted(warnings.items())
    ]
    append_audit(
        archive.root,
        DEIDENTIFIED_EXPORT,
        selection=selector.describe(),
        count=report.written + report.skipped_identical,
        reason=reason,
        details={
            "output": str(output.resolve()),
            "project": options.project,
            "profile": "basic",
            "options": [meaning for _, meaning in options.method_codes()[1:]],
            "written": report.written,
            "alreadyThere": report.skipped_identical,
            "errors": len(report.errors),
            "patients": report.patients,
            "pixelWarnings": sum(w.instances for w in report.pixel_warnings),
        },
    )
    return report


@dataclass(frozen=True, slots=True)
class _Staged:
    temporary: str
    target: str
    size: int
    result: InstanceResult
    series_instance_uid: str
    patient: str


#: Worker processes for a large export: pydicom's parse and write hold the GIL.
_WORKERS = min(os.cpu_count() or 1, 4)
_POOL_MIN_ITEMS = 16


class _StagedResults:
    """The staged outcome of each item, in order: made here, or by a pool of worker
    processes that run ahead of the batch being committed (bounded, so a huge export
    holds a few batches' results, never all)."""

    def __init__(
        self, items: list[ExportItem], stager: _Stager, options: DeidOptions, secret: bytes
    ) -> None:
        self.items = iter(items)
        self.stager = stager
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.pending: deque[concurrent.futures.Future[tuple[str, _Staged | str]]] = deque()
        if _WORKERS >= 2 and len(items) >= _POOL_MIN_ITEMS:
            import multiprocessing

            # fork is cheap but unsafe once other threads hold locks; forkserver
            # children start from a clean process.
            method = "fork" if threading.active_count() == 1 else "forkserver"
            self.pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=_WORKERS,
                mp_context=multiprocessing.get_context(method),
                initializer=_init_worker,
                initargs=(os.getpid() if method == "fork" else 0, stager, options, secret),
            )
            for _ in range(2 * _BATCH):
                self._submit()

    def _submit(self) -> None:
        assert self.pool is not None
        item = next(self.items, None)
        if item is not None:
            self.pending.append(self.pool.submit(_stage_in_worker, item))

    def next(self) -> tuple[str, _Staged | str]:
        if self.pool is None:
            return self.stager.stage(next(self.items))
        result = self.pending.popleft().result()
        self._submit()
        return result

    def __enter__(self) -> _StagedResults:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is None:
            return
        # On an error or Ctrl-C: what has not started never starts; what finished
        # but was never consumed leaves a temporary file to remove.
        self.pool.shutdown(wait=True, cancel_futures=True)
        for future in self.pending:
            if future.done() and not future.cancelled() and future.exception() is None:
                _, detail = future.result()
                if isinstance(detail, _Staged):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(detail.temporary)


_worker_stager: _Stager | None = None  # in a pool worker: set once by _init_worker


def _init_worker(parent_pid: int, stager: _Stager, options: DeidOptions, secret: bytes) -> None:
    from dicom_archive.archive.importer import _pool_worker_init

    _pool_worker_init(parent_pid)  # dies with the export, leaves Ctrl-C to it
    global _worker_stager
    _worker_stager = stager


def _stage_in_worker(item: ExportItem) -> tuple[str, _Staged | str]:
    assert _worker_stager is not None
    return _worker_stager.stage(item)


@dataclass(slots=True)
class _Stager:
    """Reads, de-identifies and writes one item under a temporary name (picklable:
    each worker process gets its own copy, with its own cache of folders)."""

    root: Path
    output: Path
    flatten: bool
    deidentifier: Deidentifier
    folders: set[str] = field(default_factory=set)  # made, and cleared of stale files

    def stage(self, item: ExportItem) -> tuple[str, _Staged | str]:
        return _stage(self.root, item, self.output, self.flatten, self.deidentifier, self.folders)


def _stage(
    root: Path,
    item: ExportItem,
    output: Path,
    flatten: bool,
    deidentifier: Deidentifier,
    folders: set[str],
) -> tuple[str, _Staged | str]:
    """("staged", _Staged) | ("skipped", pseudonym) | ("error", message)."""
    source = ArchivePaths(root).absolute(item.file_path)
    try:
        raw = source.read_bytes()
    except OSError as exc:
        return "error", f"{item.file_path}: {exc.strerror or exc}"
    if hashlib.sha256(raw).hexdigest() != item.sha256:
        return "error", (
            f"{item.file_path}: archived file differs from its index entry "
            "(run: dicom-archive check --verify-files); not exported"
        )
    try:
        data, result, ds = _deidentified(raw, deidentifier)
        sop, study = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
        series = str(ds.get("SeriesInstanceUID", ""))
        patient = str(ds.PatientID)
    except Exception as exc:  # pydicom raises many kinds on odd files: one line each
        reason = (str(exc).splitlines() or [""])[0]  # pydicom appends tracebacks to some
        return "error", f"{item.file_path}: cannot de-identify: {type(exc).__name__}: {reason}"
    name = safe_component(sop) + ".dcm"
    if flatten:
        folder = str(output)
    else:
        folder = os.path.join(
            str(output), safe_component(patient), safe_component(study), safe_component(series)
        )
    target = os.path.join(folder, name)
    try:
        if os.path.lexists(target):
            existing = Path(target).read_bytes()
            if existing == data:
                return "skipped", patient
            return "error", f"{target}: a different file is already there (not overwritten)"
        if folder not in folders:
            os.makedirs(folder, exist_ok=True)
            _remove_stale_temporaries(folder)
            folders.add(folder)
        temporary = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            os.unlink(temporary)
            raise
        os.close(fd)
    except OSError as exc:
        return "error", f"{target}: {exc.strerror or exc}"
    return "staged", _Staged(temporary, target, len(data), result, series, patient)


def _remove_stale_temporaries(folder: str) -> None:
    """Remove ``.NAME.PID.tmp`` files of exports that were killed (their PID is gone):
    never a complete file, and nobody else will."""
    for name in os.listdir(folder):
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        pid_text = name[:-4].rsplit(".", 1)[-1]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _alive(int(pid_text)):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    # A killed worker whose parent died too may stay a zombie where nobody reaps
    # orphans (a container's first process): it answers kill(0) but writes nothing.
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def _deidentified(
    raw: bytes, deidentifier: Deidentifier
) -> tuple[bytes, InstanceResult, pydicom.Dataset]:
    """The de-identified file's bytes, what de-identifying found, the data set."""
    with warnings.catch_warnings():
        # pydicom warns about every odd value it meets; the archive accepted these
        # files and each one's outcome is reported, so its warnings are noise here.
        warnings.simplefilter("ignore")
        source = io.BytesIO(raw)
        ds = pydicom.dcmread(source, force=True, stop_before_pixels=True)
        pixels = source.tell()  # where Pixel Data's tag starts, if the file has one
        if not _only_pixel_data_from(raw, pixels, ds):
            # Something after Pixel Data, or an encoding walked here only by pydicom:
            # the whole data set goes through the profile and pydicom's writer.
            ds = pydicom.dcmread(io.BytesIO(raw), force=True)
            pixels = len(raw)
        if not ds.file_meta.get("TransferSyntaxUID"):  # a file without File Meta
            ds.file_meta.TransferSyntaxUID = _encoding_of(ds)
        result = deidentifier.apply(ds)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    # Pixel Data, last in the data set, is copied as it lies in the archived file:
    # the same bytes, without pydicom reading and re-writing half a megabyte a file.
    return buffer.getvalue() + raw[pixels:], result, ds


_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
_ITEM = (0xFFFE, 0xE000)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}


def _only_pixel_data_from(raw: bytes, start: int, ds: pydicom.Dataset) -> bool:
    """Whether ``raw[start:]`` is exactly one Pixel Data element (native, or
    encapsulated fragments up to their delimiter) in the data set's own encoding,
    with nothing after it; also True when the file ends at ``start``."""
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if syntax in ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"):
        return False  # deflated: offsets into the file are not offsets into the data set
    if start == len(raw):
        return True
    implicit, little = ds.original_encoding
    order = "<" if little else ">"
    try:
        group, element = struct.unpack_from(order + "HH", raw, start)
        if (group, element) not in _PIXEL_TAGS:
            return False
        if implicit:
            (length,) = struct.unpack_from(order + "I", raw, start + 4)
            position = start + 8
        else:
            vr = raw[start + 4 : start + 6]
            if vr not in _LONG_VRS:
                return False
            (length,) = struct.unpack_from(order + "I", raw, start + 8)
            position = start + 12
        if length != 0xFFFFFFFF:
            return bool(position + length == len(raw))
        while True:  # encapsulated: items, then the sequence delimiter
            group, element, length = struct.unpack_from(order + "HHI", raw, position)
            position += 8
            if (group, element) == _SEQUENCE_DELIMITER:
                return position == len(raw)
            if (group, element) != _ITEM or length == 0xFFFFFFFF:
                return False
            position += length
    except struct.error:  # cut short: let pydicom decide what it is
        return False


def _encoding_of(ds: pydicom.Dataset) -> UID:
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _note_pixels(staged: _Staged, warnings: dict[tuple[str, str, str], int]) -> None:
    result = staged.result
    reason = ""
    if result.burned_in == "YES":
        reason = "Burned In Annotation is YES: text in the pixels is not removed"
    elif not result.burned_in and (
        result.modality in BURN_IN_MODALITIES
        or result.sop_class == _SECONDARY_CAPTURE
        or result.sop_class.startswith(_SECONDARY_CAPTURE + ".")
    ):
        reason = "Burned In Annotation is absent; images of this kind often have text in the pixels"
    if reason:
        key = (staged.series_instance_uid, result.modality, reason)
        warnings[key] = warnings.get(key, 0) + 1
    if result.recognizable_features == "YES":
        key = (
            staged.series_instance_uid,
            result.modality,
            "Recognizable Visual Features is YES: a face may be reconstructed from the pixels",
        )
        warnings[key] = warnings.get(key, 0) + 1
