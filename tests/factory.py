"""Synthetic DICOM files and studies for tests and benchmarks.

Defaults are awkward on purpose (a UTF-8 name with umlauts), so every test
exercises character sets without asking for it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_ROOT = "1.2.826.0.1.3680043.10.1071"
_counter = itertools.count(1)


def new_uid() -> str:
    """A unique, valid UID (digits and dots, under 64 characters)."""
    return f"{_ROOT}.{next(_counter)}.{id(_counter) % 100000}"


def make_instance(rows: int = 8, columns: int = 8, **overrides: Any) -> Dataset:
    """A valid CT instance with native 16-bit pixel data; keywords override attributes."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = new_uid()
    ds.StudyInstanceUID = new_uid()
    ds.SeriesInstanceUID = new_uid()
    ds.PatientName = "Müller^Jörg"
    ds.PatientID = "PAT-001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyDate = "20240115"
    ds.StudyTime = "101500"
    ds.StudyDescription = "CT HEAD"
    ds.AccessionNumber = "ACC001"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.Modality = "CT"
    ds.SeriesDescription = "AXIAL 5mm"
    ds.SeriesNumber = 1
    ds.BodyPartExamined = "HEAD"
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    for keyword, value in overrides.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if "PixelData" not in overrides:
        seed = sum(str(ds.SOPInstanceUID).encode()) % 251
        ds.PixelData = bytes((seed + i) % 251 for i in range(rows * columns * 2))
    return ds


def write_dataset(ds: Dataset, path: Path) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", new_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_instance(path: Path, **overrides: Any) -> Path:
    """Write one valid instance to ``path``."""
    return write_dataset(make_instance(**overrides), path)


@dataclass(frozen=True)
class StudySpec:
    patients: int = 1
    studies_per_patient: int = 1
    series_per_study: int = 2
    instances_per_series: int = 3
    rows: int = 8
    columns: int = 8


def write_studies(folder: Path, spec: StudySpec = StudySpec()) -> list[Path]:
    """A tree of synthetic studies under ``folder``; returns the files in order."""
    paths: list[Path] = []
    for patient in range(spec.patients):
        patient_id = f"PAT{patient:05d}"
        name = f"DOE^PATIENT{patient}"
        for study in range(spec.studies_per_patient):
            study_uid = new_uid()
            for series in range(spec.series_per_study):
                series_uid = new_uid()
                modality = ("CT", "MR", "US")[series % 3]
                for instance in range(spec.instances_per_series):
                    path = folder / patient_id / f"st{study}" / f"se{series}" / f"{instance}.dcm"
                    write_instance(
                        path,
                        rows=spec.rows,
                        columns=spec.columns,
                        PatientID=patient_id,
                        PatientName=name,
                        StudyInstanceUID=study_uid,
                        SeriesInstanceUID=series_uid,
                        Modality=modality,
                        SeriesNumber=series + 1,
                        InstanceNumber=instance + 1,
                        StudyDate=f"2024{1 + study % 12:02d}{1 + patient % 28:02d}",
                    )
                    paths.append(path)
    return paths


def iter_pydicom_files() -> Iterator[Path]:
    """Every file in pydicom's bundled ``test_files`` and ``charset_files`` folders."""
    import pydicom.data

    base = Path(pydicom.data.__file__).parent
    for folder in ("test_files", "charset_files"):
        yield from sorted(p for p in (base / folder).rglob("*") if p.is_file())


def charset_file(name: str) -> Path:
    """One of pydicom's character-set test files, by name (e.g. 'chrH31.dcm')."""
    from pydicom.data import get_charset_files

    matches = [Path(p) for p in get_charset_files(name)]
    if not matches:
        raise FileNotFoundError(name)
    return matches[0]


def dataset_bytes(path: Path) -> bytes:
    """A Part 10 file's data set after its File Meta Information: what travels on the
    network (the meta is written anew by every receiver)."""
    import pydicom.filereader

    with open(path, "rb") as handle:
        pydicom.filereader.read_preamble(handle, False)
        pydicom.filereader._read_file_meta_info(handle)
        return handle.read()
