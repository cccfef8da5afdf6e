"""export --dicomdir: a PS3.10 file-set that DCMTK, dicom3tools and pydicom accept,
with the archived bytes, 8-character File IDs and the media profile stated."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.fileset import FileSet

from dicom_archive.archive.dicomdir import export_dicomdir, media_profile
from dicom_archive.archive.export import Selector
from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.store import Archive
from dicom_archive.cli import main
from dicom_archive.errors import ExportError
from tests.factory import StudySpec, charset_file, write_instance, write_studies
from tests.reliability.helpers import sha256_of

_FILE_ID = re.compile(r"^[A-Z0-9_]{1,8}$")


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


def _validate(fileset: Path, archive: Archive, expected: int) -> FileSet:
    """dcmdump, dciodvfy and pydicom read the DICOMDIR; every File ID is ISO 9660
    level 1; every referenced file holds an archived file's bytes."""
    dicomdir = fileset / "DICOMDIR"
    dumped = subprocess.run(
        ["dcmdump", "+M", str(dicomdir)], capture_output=True, text=True, errors="replace"
    )
    assert dumped.returncode == 0, dumped.stderr
    assert "=MediaStorageDirectoryStorage" in dumped.stdout  # 1.2.840.10008.1.3.10
    if shutil.which("dciodvfy"):
        checked = subprocess.run(
            ["dciodvfy", str(dicomdir)], capture_output=True, text=True, errors="replace"
        )
        errors = [line for line in checked.stderr.splitlines() if line.startswith("Error")]
        assert errors == [], checked.stderr
        assert "BasicDirectory" in checked.stderr
    read = FileSet(dicomdir)
    assert len(read) == expected
    archived = {
        sha: path
        for path, sha in archive.index.connection.execute("SELECT file_path, sha256 FROM instances")
    }
    for instance in read:
        parts = (
            instance.FileID.split("/") if "/" in instance.FileID else instance.FileID.split("\\")
        )
        assert len(parts) <= 8 and all(_FILE_ID.match(p) for p in parts), instance.FileID
        assert sha256_of(Path(instance.path)) in archived
    return read


@pytest.fixture
def factory_archive(archive: Archive, tmp_path: Path) -> Archive:
    list(import_paths(archive, write_studies(tmp_path / "in", StudySpec(studies_per_patient=2))))
    return archive


def test_factory_study_is_a_valid_general_purpose_cd(
    factory_archive: Archive, tmp_path: Path
) -> None:
    _need("dcmdump")
    target = tmp_path / "media"
    report = export_dicomdir(factory_archive, Selector(patient_id="PAT00000"), target)
    assert report.written == 12 and report.errors == [] and report.warnings == []
    assert report.profile.startswith("STD-GEN-CD")
    read = _validate(target, factory_archive, 12)
    assert {str(i.PatientName) for i in read} == {"DOE^PATIENT0"}
    # DCMTK's own builder accepts the files for STD-GEN-CD and can update our DICOMDIR.
    _need("dcmmkdir")
    top = next(p.name for p in target.iterdir() if p.is_dir())
    updated = subprocess.run(
        ["dcmmkdir", "-Pgp", "+U", "+D", "DICOMDIR", "+r", top],
        cwd=target,
        capture_output=True,
        text=True,
    )
    assert updated.returncode == 0 and "E:" not in updated.stderr, updated.stderr


def test_pydicom_real_files_keep_their_bytes_and_charsets(archive: Archive, tmp_path: Path) -> None:
    """Real vendor files (Latin-1, Japanese, compressed): identical bytes on the media,
    names readable back through each record's Specific Character Set."""
    _need("dcmdump")
    names = ["CT_small.dcm", "MR_small.dcm", "JPEG-lossy.dcm", "SC_rgb_rle.dcm"]
    files = [Path(get_testdata_file(n)) for n in names]  # type: ignore[arg-type]
    files += [charset_file("chrH31.dcm"), charset_file("chrFren.dcm")]
    outcomes = list(import_paths(archive, files))
    assert all(o.outcome == "imported" for o in outcomes), outcomes
    total = 0
    names: set[str] = set()
    for (patient_id,) in archive.index.connection.execute(
        "SELECT DISTINCT patient_id FROM patients"
    ).fetchall():
        target = tmp_path / f"media-{total}"
        report = export_dicomdir(archive, Selector(patient_id=patient_id), target)
        names |= {str(i.PatientName) for i in _validate(target, archive, report.written)}
        total += report.written
    assert total == len(files)
    assert {"Buc^Jérôme", "Yamada^Tarou=山田^太郎=やまだ^たろう"} <= names
    profile, notes = media_profile({"1.2.840.10008.1.2.5": 1, "1.2.840.10008.1.2.4.50": 1})
    assert "STD-GEN-DVD-JPEG" in profile and "RLE Lossless" in notes[0]


def test_jpeg_files_need_the_dvd_profile(archive: Archive, tmp_path: Path) -> None:
    list(import_paths(archive, [Path(get_testdata_file("JPEG-lossy.dcm"))]))  # type: ignore[arg-type]
    (patient_id,) = archive.index.connection.execute("SELECT patient_id FROM patients").fetchone()
    report = export_dicomdir(archive, Selector(patient_id=patient_id), tmp_path / "m")
    assert report.profile.startswith("STD-GEN-DVD-JPEG") and "not STD-GEN-CD" in report.profile


def test_missing_type1_keys_are_invented_in_the_dicomdir_only(
    archive: Archive, tmp_path: Path
) -> None:
    _need("dcmdump")
    source = write_instance(
        tmp_path / "bare.dcm",
        PatientID="BARE",
        StudyDate=None,
        StudyTime=None,
        StudyID=None,
        SeriesNumber=None,
        InstanceNumber=None,
    )
    list(import_paths(archive, [source]))
    report = export_dicomdir(archive, Selector(patient_id="BARE"), tmp_path / "m")
    assert "StudyDate (1)" in report.warnings[-1] and "InstanceNumber (1)" in report.warnings[-1]
    read = _validate(tmp_path / "m", archive, 1)
    assert sha256_of(Path(next(iter(read)).path)) == sha256_of(source)


def test_target_must_be_new_or_empty_and_selection_must_match(
    factory_archive: Archive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("mine")
    with pytest.raises(ExportError, match="not an empty folder"):
        export_dicomdir(factory_archive, Selector(patient_id="PAT00000"), busy)
    assert (busy / "x").read_text() == "mine"
    root = str(factory_archive.root)
    code = main(["export", "-a", root, "--study-uid", "9.9", "--dicomdir", str(tmp_path / "m")])
    assert code == 1 and "nothing in the archive matches study 9.9" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "-a", root, "--patient-id", "PAT00000", "--dicomdir", str(empty)]) == 0
    out = capsys.readouterr().out
    assert "12 files" in out and "media profile: STD-GEN-CD" in out
    assert (empty / "DICOMDIR").is_file()
    assert not list(tmp_path.glob(".*.part"))


def test_a_full_disk_leaves_no_file_set(archive: Archive, tmp_path: Path) -> None:
    """A real 1 MB tmpfs: ENOSPC part-way leaves nothing under the target or beside it."""
    sources = write_studies(
        tmp_path / "in", StudySpec(instances_per_series=20, rows=128, columns=128)
    )
    list(import_paths(archive, sources))
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip()}")
    try:
        with pytest.raises(ExportError, match="No space left on device"):
            export_dicomdir(archive, Selector(patient_id="PAT00000"), full / "media")
        assert list(full.iterdir()) == []
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_capacity_note_names_the_media_that_fit() -> None:
    from dicom_archive.archive.dicomdir import _capacity_note

    assert _capacity_note(600 * 1024**2) == ""
    assert "too big for a CD-R; it fits a DVD" in _capacity_note(2_000_000_000)
    assert "too big for a CD-R or a DVD; it fits a BD" in _capacity_note(10_000_000_000)
