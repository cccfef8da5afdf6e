"""The fast header path agrees with the pydicom path, or steps aside.

``read_header`` walks plain files itself and hands anything unusual to pydicom;
these tests guard that the walk never accepts what the pydicom path would reject
and never reads a value differently.
"""

from __future__ import annotations

import random
from pathlib import Path

import pydicom.data
import pytest

from dicom_archive.archive import dicomfile
from dicom_archive.archive.records import InstanceHeader
from dicom_archive.errors import RejectedFile
from tests.factory import write_instance

_DATA = Path(pydicom.data.__file__).parent


def _pydicom_path(path: Path, data: bytes) -> InstanceHeader | RejectedFile:
    """The reference answer: a real file handle never takes the fast path."""
    path.write_bytes(data)
    try:
        with open(path, "rb") as handle:
            return dicomfile.read_header(handle, len(data), str(path))
    except RejectedFile as exc:
        return exc


def _agree(scratch: Path, data: bytes) -> bool:
    fast = dicomfile._fast_header(data, len(data))
    return fast is None or fast == _pydicom_path(scratch, data)


@pytest.mark.filterwarnings("ignore")
def test_fast_path_matches_pydicom_on_its_own_test_files(tmp_path: Path) -> None:
    """Every pydicom test file: the fast header equals the pydicom one, or is None."""
    files = sorted(p for p in _DATA.rglob("*") if p.is_file())
    taken = 0
    for path in files:
        data = path.read_bytes()
        if data and dicomfile._fast_header(data, len(data)) is not None:
            taken += 1
        assert _agree(tmp_path / "x.dcm", data), path
    assert taken > 50  # the fast path is actually used on plain files


def test_fast_path_reads_awkward_text_like_pydicom(tmp_path: Path) -> None:
    """Umlauts in UTF-8, empty values and a missing Series Number read alike."""
    path = write_instance(
        tmp_path / "a.dcm", PatientName="Müller^Jörg", StudyDescription="", SeriesNumber=None
    )
    data = path.read_bytes()
    fast = dicomfile._fast_header(data, len(data))
    assert fast is not None
    assert fast == _pydicom_path(tmp_path / "ref.dcm", data)
    assert fast.patient_name == "Müller^Jörg"


@pytest.mark.filterwarnings("ignore")
def test_fast_path_never_accepts_a_damaged_file_pydicom_rejects(tmp_path: Path) -> None:
    """Truncations and flipped bytes: the fast path agrees or defers."""
    rng = random.Random(7)
    sources = [write_instance(tmp_path / f"s{i}.dcm") for i in range(3)]
    sources += sorted(_DATA.rglob("CT_small.dcm")) + sorted(_DATA.rglob("MR_small.dcm"))
    for source in sources:
        base = source.read_bytes()
        for _ in range(40):
            if rng.random() < 0.5:
                data = base[: rng.randrange(1, len(base))]
            else:
                damaged = bytearray(base)
                damaged[rng.randrange(128, min(len(base), 1500))] = rng.randrange(256)
                data = bytes(damaged)
            assert _agree(tmp_path / "x.dcm", data), source
