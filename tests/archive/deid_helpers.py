"""What the de-identification tests share: walking every element, and reading outputs."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_archive.archive.pseudonyms import Keyer, load_or_create_secret
from dicom_archive.archive.store import Archive


def walk(ds: Dataset, path: str = "") -> Iterator[tuple[str, int, DataElement]]:
    """Every element of ``ds`` at every depth: (path, depth, element)."""
    depth = path.count("[")
    for elem in ds:
        here = f"{path}{elem.tag}"
        yield here, depth, elem
        if elem.VR == "SQ" and elem.value is not None:
            for number, item in enumerate(elem.value):
                yield from walk(item, f"{here}[{number}].")


def read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def outputs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm") if not p.name.startswith("."))


def keyer_of(archive: Archive, project: str = "default") -> Keyer:
    return Keyer(load_or_create_secret(archive.root), project)


def uid_values(ds: Dataset) -> set[str]:
    """Every UI value at every depth."""
    found: set[str] = set()
    for _, _, elem in walk(ds):
        if elem.VR == "UI" and elem.value:
            values = (
                elem.value if isinstance(elem.value, MultiValue | list | tuple) else [elem.value]
            )
            found.update(str(v) for v in values if str(v))
    return found
