from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from dicom_archive.archive.dicomfile import read_header
from dicom_archive.errors import RejectedFile
from tests.factory import charset_file, write_instance


def read(path: Path):  # type: ignore[no-untyped-def]
    data = path.read_bytes()
    return read_header(io.BytesIO(data), len(data), str(path))


def reason(path: Path) -> str:
    with pytest.raises(RejectedFile) as caught:
        read(path)
    return caught.value.reason


def test_header_fields_are_decoded(tmp_path: Path) -> None:
    path = write_instance(tmp_path / "a.dcm", PatientName="Müller^Jörg", Modality="MR")
    header = read(path)
    assert header.patient_name == "Müller^Jörg"
    assert header.modality == "MR"
    assert header.instance_number == 1
    assert header.transfer_syntax_uid == "1.2.840.10008.1.2.1"


def test_japanese_name_is_decoded_with_its_character_set() -> None:
    header = read(charset_file("chrH31.dcm"))
    assert "山田" in header.patient_name


def test_truncated_pixel_data_is_rejected(tmp_path: Path) -> None:
    """A file cut short in its Pixel Data parses without pixels; it must not pass."""
    path = write_instance(tmp_path / "a.dcm", rows=64, columns=64)
    data = path.read_bytes()
    for keep in (0.5, 0.9, 0.999):
        cut = tmp_path / f"cut{keep}.dcm"
        cut.write_bytes(data[: int(len(data) * keep)])
        assert reason(cut).startswith("truncated")


def test_truncated_encapsulated_pixel_data_is_rejected(tmp_path: Path) -> None:
    data = Path(get_testdata_file("MR_small_RLE.dcm")).read_bytes()
    cut = tmp_path / "rle.dcm"
    cut.write_bytes(data[: len(data) - 100])
    assert "truncated" in reason(cut)


def test_truncated_header_is_rejected(tmp_path: Path) -> None:
    data = Path(get_testdata_file("rtplan.dcm")).read_bytes()
    cut = tmp_path / "rtplan.dcm"
    cut.write_bytes(data[: len(data) // 2])
    assert "truncated" in reason(cut)


def test_missing_uids_are_named(tmp_path: Path) -> None:
    path = write_instance(tmp_path / "a.dcm", StudyInstanceUID=None, SeriesInstanceUID=None)
    assert reason(path) == "missing Study Instance UID, Series Instance UID"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty file"),
        (b"hello, this is not an image\n" * 20, "not a DICOM file (no DICM prefix)"),
        # a DICM prefix and garbage: pydicom runs off the end looking for a delimiter
        (b"\x00" * 128 + b"DICM" + b"\xff" * 300, "truncated"),
    ],
)
def test_non_dicom_is_rejected_with_a_reason(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(content)
    assert expected in reason(path)


def test_dicomdir_is_not_an_instance() -> None:
    path = Path(get_testdata_file("DICOMDIR"))
    assert "DICOMDIR" in reason(path)
