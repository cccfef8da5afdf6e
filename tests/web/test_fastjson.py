"""The fast DICOM JSON reader says exactly what pydicom's conversion says."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from dicom_archive.web.fastjson import fast_instance_json
from dicom_archive.web.metadata import BULK_THRESHOLD, pydicom_instance_json
from tests.factory import charset_file, iter_pydicom_files, write_instance


def _bulk(tag: int, vr: str) -> dict[str, Any]:
    return {"vr": vr, "BulkDataURI": f"P/bulkdata/{tag:08X}"}


def _both(path: Path) -> tuple[Any, Any] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            slow = json.loads(pydicom_instance_json(path, "P"))
        except Exception:
            return None  # not a file pydicom reads (README, truncated, DICOMDIR parts)
        with open(path, "rb") as handle:
            fast = fast_instance_json(handle, _bulk, BULK_THRESHOLD, {0xFFFCFFFC})
    return (None if fast is None else json.loads(json.dumps(fast))), slow


def test_every_pydicom_file_reads_the_same() -> None:
    compared = declined = 0
    for path in iter_pydicom_files():
        pair = _both(path)
        if pair is None:
            continue
        fast, slow = pair
        if fast is None:
            declined += 1
            continue
        assert fast == slow, path.name
        compared += 1
    assert compared >= 150 and declined <= 15, (compared, declined)


def test_awkward_values(tmp_path: Path) -> None:
    """Multi-valued numbers, empty and padding-only values, an ideographic name with
    an empty trailing group, and UTF-8 text."""
    path = write_instance(
        tmp_path / "a.dcm",
        PatientName="Müller^Jörg=ミュラー^ヨルク=",
        ImagePositionPatient=[-125.0, "0.5", 3],
        WindowCenter=["40", "400"],
        AccessionNumber="  ",
        StudyDescription="",
        ImageType=["ORIGINAL ", "PRIMARY", ""],
    )
    fast, slow = _both(path)  # type: ignore[misc]
    assert fast == slow
    assert fast["00100010"]["Value"] == [
        {"Alphabetic": "Müller^Jörg", "Ideographic": "ミュラー^ヨルク"}
    ]
    assert "Value" not in fast["00080050"]
    assert fast["00200032"]["Value"] == [-125.0, 0.5, 3.0]


def test_code_extensions_and_odd_files(tmp_path: Path) -> None:
    """Text in a character set with code extensions is decoded by pydicom, element by
    element; a file without its preamble is left to pydicom whole."""
    fast, slow = _both(charset_file("chrH31.dcm"))  # type: ignore[misc]
    assert fast == slow and fast["00100010"]["Value"][0]["Ideographic"] == "山田^太郎"
    path = write_instance(tmp_path / "b.dcm")
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(path.read_bytes()[132:])
    with open(bare, "rb") as handle:
        assert fast_instance_json(handle, _bulk, BULK_THRESHOLD, set()) is None
