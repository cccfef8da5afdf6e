"""export --zip: byte-identical members under readable, safe folder names, checked on
the way out, ZIP64 when needed, and never a file that looks complete but is not."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from dicom_archive.archive.export import Selector
from dicom_archive.archive.export_zip import export_zip, readable_component
from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.store import Archive
from dicom_archive.cli import main
from dicom_archive.errors import ExportError
from tests.factory import StudySpec, new_uid, write_instance, write_studies
from tests.reliability.helpers import CLI, REPO, sha256_of

_WINDOWS_BAD = re.compile(r'[<>:"\\|?*\x00-\x1f]')


@pytest.fixture
def filled(archive: Archive, tmp_path: Path) -> Archive:
    sources = write_studies(tmp_path / "in", StudySpec(patients=2, studies_per_patient=2))
    list(import_paths(archive, sources))
    return archive


def _archived(archive: Archive, patient_id: str) -> dict[str, str]:
    """SHA-256 -> archive path of a patient's files."""
    rows = archive.index.connection.execute(
        "SELECT i.file_path, i.sha256 FROM instances i JOIN series se ON se.id = i.series_pk "
        "JOIN studies st ON st.id = se.study_pk JOIN patients p ON p.id = st.patient_pk "
        "WHERE p.patient_id = ?",
        (patient_id,),
    )
    return {sha: path for path, sha in rows}


def test_members_are_the_archived_bytes_in_readable_folders(
    filled: Archive, tmp_path: Path
) -> None:
    """unzip (a second reader) extracts every instance byte for byte, under
    PATIENT (ID)/DATE MODALITIES DESCRIPTION (UID)/NUMBER MODALITY DESCRIPTION/."""
    target = tmp_path / "out" / "patient.zip"
    target.parent.mkdir()
    report = export_zip(filled, Selector(patient_id="PAT00000"), target)
    assert report.written == 12 and report.errors == []
    assert subprocess.run(["unzip", "-tq", str(target)], capture_output=True).returncode == 0
    extracted = tmp_path / "x"
    subprocess.run(["unzip", "-q", str(target), "-d", str(extracted)], check=True)
    files = sorted(p for p in extracted.rglob("*") if p.is_file())
    assert {sha256_of(p) for p in files} == set(_archived(filled, "PAT00000"))
    names = [str(p.relative_to(extracted)) for p in files]
    assert names[0].startswith("DOE^PATIENT0 (PAT00000)/20240101 CT+MR CT HEAD (")
    assert names[0].endswith("/1 CT AXIAL 5mm/CT000001.dcm")
    assert not list(target.parent.glob(".*.part"))


def test_hostile_and_clashing_values_make_safe_unique_names(
    archive: Archive, tmp_path: Path
) -> None:
    """Path tricks, Windows-reserved names and characters, controls, very long text and
    names differing only in case never escape, collide or break an extraction."""
    hostile = [
        ("../../etc/passwd", "..\\..\\boot", "CON"),
        ('a:b*c?d|e<f>g"h', "NUL.txt", ".hidden"),
        ("X" * 300, "\x1b[2J\x07bell", "trailing. . ."),
        ("MÜLLER^JÖRG", "   ", ""),
        ("müller^jörg", "   ", ""),
    ]
    study = new_uid()
    paths = []
    for n, (name, description, series_description) in enumerate(hostile):
        paths.append(
            write_instance(
                tmp_path / "in" / f"{n}.dcm",
                PatientID="EVIL",
                PatientName=name,
                StudyInstanceUID=study if n < 3 else new_uid(),
                StudyDescription=description,
                SeriesDescription=series_description,
                SeriesInstanceUID=new_uid(),
            )
        )
    list(import_paths(archive, paths))
    target = tmp_path / "evil.zip"
    assert export_zip(archive, Selector(patient_id="EVIL"), target).written == 5
    with zipfile.ZipFile(target) as zf:
        names = zf.namelist()
    seen_folders: dict[str, set[str]] = {}
    for name in names:
        parts = name.split("/")
        assert len(parts) == 4
        for depth, part in enumerate(parts):
            assert part and part not in (".", "..") and not part.startswith(".")
            assert not _WINDOWS_BAD.search(part) and part == part.rstrip(". ")
            assert not re.match(r"(?i)^(con|prn|aux|nul|com\d|lpt\d)(\.|$)", part)
            assert len(part) <= 100
            parent = "/".join(parts[:depth])
            seen_folders.setdefault(parent, set()).add(part)
    for children in seen_folders.values():
        assert len({c.casefold() for c in children}) == len(children)
    extracted = tmp_path / "x"
    subprocess.run(["unzip", "-q", str(target), "-d", str(extracted)], check=True)
    assert all(p.resolve().is_relative_to(extracted.resolve()) for p in extracted.rglob("*"))
    assert len([p for p in extracted.rglob("*.dcm")]) == 5


def test_readable_component_rules() -> None:
    assert readable_component("CON", 64) == "_CON"
    assert readable_component("lpt1.dcm", 64) == "_lpt1.dcm"
    assert readable_component("..", 64) == "_"
    assert readable_component("a/b\\c", 64) == "a_b_c"
    assert readable_component("end. ", 64) == "end"
    assert len(readable_component("é" * 200, 64)) == 64


def test_an_existing_target_is_refused_and_untouched(
    filled: Archive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "there.zip"
    target.write_bytes(b"precious")
    code = main(["export", "-a", str(filled.root), "--patient-id", "PAT00000", "-o", str(target)])
    assert code == 1
    assert capsys.readouterr().err.strip() == (
        f"dicom-archive: {target} already exists (not overwritten); choose a new file name"
    )
    assert target.read_bytes() == b"precious"
    assert not list(tmp_path.glob(".*.part"))


def test_cli_forms_and_nothing_matches(
    filled: Archive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(filled.root)
    assert (
        main(["export", "-a", root, "--patient-id", "NOBODY", "--zip", str(tmp_path / "n.zip")])
        == 1
    )
    assert "nothing in the archive matches patient NOBODY" in capsys.readouterr().err
    assert not (tmp_path / "n.zip").exists()
    assert (
        main(["export", "-a", root, "--patient-id", "PAT00001", "-o", str(tmp_path / "a.ZIP")]) == 0
    )
    assert "12 files" in capsys.readouterr().out
    assert zipfile.ZipFile(tmp_path / "a.ZIP").testzip() is None
    assert main(["export", "-a", root, "--patient-id", "PAT00001"]) == 2
    code = main(
        [
            "export",
            "-a",
            root,
            "--patient-id",
            "PAT00001",
            "--zip",
            str(tmp_path / "b.zip"),
            "--dicomdir",
            str(tmp_path / "m"),
        ]
    )
    assert code == 2


def test_a_damaged_archived_file_is_cut_out_and_reported(filled: Archive, tmp_path: Path) -> None:
    victim = sorted(_archived(filled, "PAT00000").values())[3]
    path = filled.root / victim
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only the hash can tell
    path.write_bytes(bytes(data))
    target = tmp_path / "p.zip"
    report = export_zip(filled, Selector(patient_id="PAT00000"), target)
    assert report.written == 11 and len(report.errors) == 1 and victim in report.errors[0]
    with zipfile.ZipFile(target) as zf:
        assert zf.testzip() is None and len(zf.namelist()) == 11
        inside = {__import__("hashlib").sha256(zf.read(n)).hexdigest() for n in zf.namelist()}
    assert sha256_of(path) not in inside
    assert subprocess.run(["unzip", "-tq", str(target)], capture_output=True).returncode == 0


def test_zip64_records_where_sizes_need_them(
    filled: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With zipfile's ZIP64 limit lowered to a few hundred bytes every member and the
    central directory take the ZIP64 path a >4 GB study takes; unzip still reads it."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 400)
    target = tmp_path / "z64.zip"
    export_zip(filled, Selector(patient_id="PAT00000"), target)
    monkeypatch.undo()
    raw = target.read_bytes()
    assert b"PK\x06\x06" in raw  # the ZIP64 end of central directory record
    assert subprocess.run(["unzip", "-tq", str(target)], capture_output=True).returncode == 0
    with zipfile.ZipFile(target) as zf:
        assert zf.testzip() is None and len(zf.namelist()) == 12


def _mount_tmpfs(mount_point: Path, size: str) -> None:
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip()}")


def test_a_full_disk_leaves_nothing_that_looks_complete(
    archive: Archive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real 1 MB tmpfs as the target's filesystem: ENOSPC from the kernel part-way."""
    sources = write_studies(
        tmp_path / "in", StudySpec(instances_per_series=20, rows=128, columns=128)
    )
    list(import_paths(archive, sources))  # 40 x 32 KB = 1.3 MB
    full = tmp_path / "full"
    _mount_tmpfs(full, "1m")
    try:
        with pytest.raises(ExportError, match="No space left on device"):
            export_zip(archive, Selector(patient_id="PAT00000"), full / "study.zip")
        assert os.listdir(full) == []
        code = main(
            [
                "export",
                "-a",
                str(archive.root),
                "--patient-id",
                "PAT00000",
                "--zip",
                str(full / "study.zip"),
            ]
        )
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and "No space left on device" in err
        assert os.listdir(full) == []
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_a_kill_mid_export_leaves_no_target(archive: Archive, tmp_path: Path) -> None:
    """SIGKILL while the ZIP is being written: the target name never appears; only the
    hidden .part, which no one takes for a finished ZIP."""
    sources = write_studies(
        tmp_path / "in", StudySpec(instances_per_series=150, rows=256, columns=256)
    )
    list(import_paths(archive, sources))
    target = tmp_path / "out" / "study.zip"
    target.parent.mkdir()
    process = subprocess.Popen(
        [*CLI, "export", "-a", str(archive.root), "--patient-id", "PAT00000", "--zip", str(target)],
        cwd=REPO,
    )
    while not list(target.parent.glob(".*.part")) and process.poll() is None:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    if process.returncode != -signal.SIGKILL:
        pytest.skip("the export finished before the kill landed")
    assert not target.exists()
    assert [p.name[-5:] for p in target.parent.iterdir()] == [".part"]
