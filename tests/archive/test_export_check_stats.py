from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dicom_archive.archive.export import Selector, export_instances
from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.integrity import check_archive
from dicom_archive.archive.records import FindingKind
from dicom_archive.archive.snapshot import write_snapshot
from dicom_archive.archive.stats import archive_stats
from dicom_archive.archive.store import Archive
from dicom_archive.errors import ExportError, UsageError
from tests.factory import StudySpec, write_studies


@pytest.fixture
def filled(archive: Archive, tmp_path: Path) -> Archive:
    files = write_studies(tmp_path / "in", StudySpec(patients=2, series_per_study=2))
    assert all(o.outcome.value == "imported" for o in import_paths(archive, files))
    return archive


def first_study(archive: Archive) -> str:
    return str(
        archive.index.connection.execute(
            "SELECT study_instance_uid FROM studies ORDER BY id"
        ).fetchone()[0]
    )


def kinds(archive: Archive, verify: bool = False) -> list[FindingKind]:
    return sorted(f.kind for f in check_archive(archive, verify_files=verify).findings)


def test_export_is_byte_identical_in_the_archive_layout(filled: Archive, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = export_instances(filled, Selector(study_uid=first_study(filled)), out)
    assert report.copied == 6 and not report.errors
    exported = sorted(p for p in out.rglob("*.dcm"))
    assert len(exported) == 6
    for path in exported:
        relative = path.relative_to(out)
        assert len(relative.parts) == 4
        assert path.read_bytes() == (filled.paths.data / relative).read_bytes()


def test_export_again_skips_identical_and_refuses_to_overwrite(
    filled: Archive, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    selector = Selector(patient_id="PAT00000")
    export_instances(filled, selector, out, flatten=True)
    victim = sorted(out.iterdir())[0]
    victim.write_bytes(b"someone else's file")
    report = export_instances(filled, selector, out, flatten=True)
    assert report.skipped_identical == 5 and report.copied == 0
    assert len(report.errors) == 1 and "not overwritten" in report.errors[0]
    assert victim.read_bytes() == b"someone else's file"


def test_export_selectors(filled: Archive, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="nothing in the archive matches"):
        export_instances(filled, Selector(series_uid="9.9.9"), tmp_path / "none")
    with pytest.raises(UsageError):
        Selector(study_uid="1", patient_id="2")


def test_clean_archive_checks_clean(filled: Archive) -> None:
    report = check_archive(filled, verify_files=True)
    assert report.clean and report.instances_checked == 12 and report.files_seen == 12


def test_check_finds_each_kind_of_damage(filled: Archive) -> None:
    files = sorted(filled.paths.data.rglob("*.dcm"))
    files[0].unlink()  # missing
    with open(files[1], "r+b") as handle:  # truncated
        handle.truncate(100)
    (files[2].parent / "stray.dcm").write_bytes(b"stray")  # orphaned
    (filled.paths.tmp / "999999999-1.part").write_bytes(b"half")  # temporary, dead writer
    assert kinds(filled) == sorted(
        [
            FindingKind.MISSING,
            FindingKind.SIZE_MISMATCH,
            FindingKind.ORPHANED,
            FindingKind.TEMPORARY,
        ]
    )


def test_verify_files_finds_one_flipped_byte(filled: Archive) -> None:
    target = sorted(filled.paths.data.rglob("*.dcm"))[3]
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    assert kinds(filled) == []  # same size: only a re-hash can tell
    assert kinds(filled, verify=True) == [FindingKind.CONTENT_CHANGED]


def test_missing_folder_is_found(filled: Archive) -> None:
    import shutil

    patient = sorted(filled.paths.data.iterdir())[0]
    shutil.rmtree(patient)
    assert kinds(filled) == [FindingKind.MISSING] * 6


def test_live_writers_temporaries_are_not_findings(filled: Archive) -> None:
    (filled.paths.tmp / f"{os.getpid()}-77.part").write_bytes(b"in progress")
    assert kinds(filled) == []


def test_stats(filled: Archive) -> None:
    stats = archive_stats(filled.index)
    assert (stats.patients, stats.studies, stats.series, stats.instances) == (2, 2, 4, 12)
    assert stats.total_bytes == sum(p.stat().st_size for p in filled.paths.data.rglob("*.dcm"))
    assert {m.modality: (m.instances, m.series, m.studies) for m in stats.modalities} == {
        "CT": (6, 2, 2),
        "MR": (6, 2, 2),
    }
    assert stats.first_study_date == "20240101" and stats.last_study_date == "20240102"
    assert stats.first_import and stats.last_import


def test_snapshot_has_the_documented_shape(filled: Archive) -> None:
    write_snapshot(filled.paths, filled.index)
    document = json.loads(filled.paths.snapshot.read_text(encoding="utf-8"))
    assert set(document) == {
        "version",
        "creationDate",
        "lastModified",
        "fileCount",
        "patients",
    }
    assert document["fileCount"] == 12
    patient = document["patients"][0]
    assert set(patient) == {"patientName", "patientID", "studies"}
    study = patient["studies"][0]
    assert set(study) == {
        "studyInstanceUID",
        "studyDate",
        "studyDescription",
        "modality",
        "series",
    }
    series = study["series"][0]
    assert set(series) == {"seriesInstanceUID", "modality", "seriesDescription", "instances"}
    instance = series["instances"][0]
    assert set(instance) == {"sopInstanceUID", "sopClassUID", "filePath", "fileSize", "importDate"}
    assert (filled.root / instance["filePath"]).stat().st_size == instance["fileSize"]
    assert (
        sum(
            len(se["instances"])
            for p in document["patients"]
            for st in p["studies"]
            for se in st["series"]
        )
        == 12
    )


def test_check_during_an_import_reports_no_false_findings(archive: Archive, tmp_path: Path) -> None:
    """check is safe while imports run: files and rows appearing mid-walk are not damage."""
    import threading

    from dicom_archive.archive.importer import Importer
    from dicom_archive.archive.store import open_archive

    files = write_studies(
        tmp_path / "in", StudySpec(patients=6, series_per_study=5, instances_per_series=10)
    )
    done = threading.Event()

    def importer() -> None:
        with open_archive(archive.root) as own:
            list(Importer(own, batch_size=7).import_files(files))
        done.set()

    thread = threading.Thread(target=importer)
    thread.start()
    runs = 0
    while not done.is_set() or runs == 0:
        report = check_archive(archive)
        assert report.findings == [], report.findings[:3]
        runs += 1
    thread.join()
    assert check_archive(archive).instances_checked == len(files)


def test_snapshot_streams_every_level_and_parses(archive: Archive, tmp_path: Path) -> None:
    """Several patients, studies and series: the streamed document is valid JSON that
    holds every instance once, and each study's modality is its primary one."""
    files = write_studies(
        tmp_path / "many",
        StudySpec(patients=3, studies_per_patient=2, series_per_study=3, instances_per_series=2),
    )
    list(import_paths(archive, files))
    write_snapshot(archive.paths, archive.index)
    document = json.loads(archive.paths.snapshot.read_text(encoding="utf-8"))
    assert len(document["patients"]) == 3
    assert all(len(p["studies"]) == 2 for p in document["patients"])
    studies = [st for p in document["patients"] for st in p["studies"]]
    assert all(len(st["series"]) == 3 for st in studies)
    paths = [i["filePath"] for st in studies for se in st["series"] for i in se["instances"]]
    assert len(paths) == len(set(paths)) == len(files) == document["fileCount"]
    # series CT, MR, US with 2 instances each: the first seen wins the tie
    assert {st["modality"] for st in studies} == {"CT"}


def test_empty_archive_snapshot(archive: Archive) -> None:
    write_snapshot(archive.paths, archive.index)
    document = json.loads(archive.paths.snapshot.read_text(encoding="utf-8"))
    assert document["patients"] == [] and document["fileCount"] == 0
