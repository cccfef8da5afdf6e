"""DCMTK as a real peer: files it writes are archived, and it reads what we archive."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.query import StudyQuery, find_studies
from dicom_archive.archive.records import Outcome
from dicom_archive.archive.store import Archive
from tests.factory import write_instance

pytestmark = pytest.mark.skipif(
    shutil.which("dump2dcm") is None or shutil.which("dcmdump") is None,
    reason="DCMTK not installed (apt-get install dcmtk)",
)

DUMP = """\
(0008,0005) CS [ISO_IR 100]
(0008,0016) UI =BasicTextSRStorage
(0008,0018) UI [1.2.826.0.1.3680043.10.1071.99.1]
(0008,0060) CS [SR]
(0010,0010) PN [DCMTK^Made]
(0010,0020) LO [DCMTK01]
(0020,000d) UI [1.2.826.0.1.3680043.10.1071.99]
(0020,000e) UI [1.2.826.0.1.3680043.10.1071.99.2]
"""


def test_a_file_written_by_dcmtk_is_archived(archive: Archive, tmp_path: Path) -> None:
    dump = tmp_path / "made.dump"
    dump.write_text(DUMP)
    made = tmp_path / "made.dcm"
    subprocess.run(
        ["dump2dcm", "--write-file", str(dump), str(made)], check=True, capture_output=True
    )
    [outcome] = import_paths(archive, [made])
    assert outcome.outcome is Outcome.IMPORTED
    [study] = find_studies(archive.index, StudyQuery(patient_name="dcmtk*"))
    assert study.patient_id == "DCMTK01" and study.modalities == ("SR",)


def test_dcmtk_reads_the_archived_copy(archive: Archive, tmp_path: Path) -> None:
    [outcome] = import_paths(archive, [write_instance(tmp_path / "a.dcm", PatientID="P-42")])
    dumped = subprocess.run(
        ["dcmdump", "+P", "PatientID", str(archive.root / outcome.archived_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "[P-42]" in dumped.stdout


def test_dcmtk_truncated_file_is_rejected(archive: Archive, tmp_path: Path) -> None:
    source = write_instance(tmp_path / "a.dcm", rows=32, columns=32)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(source.read_bytes()[:-500])
    # DCMTK agrees the file is damaged...
    checked = subprocess.run(["dcmdump", str(cut)], capture_output=True, text=True)
    assert checked.returncode != 0 or "error" in (checked.stderr + checked.stdout).lower()
    # ...and the archive refuses it.
    [outcome] = import_paths(archive, [cut])
    assert outcome.outcome is Outcome.REJECTED and outcome.reason.startswith("truncated")
