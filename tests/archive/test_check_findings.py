"""check without --verify-files compares each series folder as one listing; these pin
down that every finding it reports, and every count, is the one a file-by-file
comparison (the --verify-files path) reports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_archive.archive import integrity
from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.integrity import check_archive
from dicom_archive.archive.records import CheckReport, FindingKind
from dicom_archive.archive.store import Archive
from tests.factory import StudySpec, write_studies


@pytest.fixture
def filled(archive: Archive, tmp_path: Path) -> Archive:
    files = write_studies(
        tmp_path / "in", StudySpec(patients=2, series_per_study=2, instances_per_series=4)
    )
    assert all(o.outcome.value == "imported" for o in import_paths(archive, files))
    return archive


def findings(report: CheckReport) -> list[tuple[str, str, str]]:
    return sorted((f.kind.value, f.path, f.detail) for f in report.findings)


def both(archive: Archive) -> CheckReport:
    """The size-only report, after asserting the verifying walk finds the same."""
    quick = check_archive(archive, processes=1)
    full = check_archive(archive, verify_files=True)
    split = check_archive(archive, processes=2)  # series folders shared with a forked helper
    assert findings(quick) == findings(full) == findings(split)
    counted = {(r.instances_checked, r.files_seen) for r in (quick, full, split)}
    assert len(counted) == 1, counted
    return quick


def series_files(archive: Archive) -> list[Path]:
    return sorted(archive.paths.data.rglob("*.dcm"))


def relative(archive: Archive, path: Path) -> str:
    return str(path.relative_to(archive.root))


def test_each_finding_names_its_file_and_reason(filled: Archive) -> None:
    """Missing, size mismatch and orphan in one series folder, each named exactly."""
    files = series_files(filled)
    gone, cut = files[0], files[1]
    size = cut.stat().st_size
    gone.unlink()
    os.truncate(cut, 100)
    stray = files[2].parent / "stray.dcm"
    stray.write_bytes(b"stray")
    report = both(filled)
    assert findings(report) == sorted(
        [
            ("missing", relative(filled, gone), "file is gone"),
            ("size_mismatch", relative(filled, cut), f"100 bytes, index says {size}"),
            ("orphaned", relative(filled, stray), "not indexed"),
        ]
    )
    assert report.instances_checked == 16 and report.files_seen == 16


def test_sizes_swapped_between_two_files_are_both_found(filled: Archive) -> None:
    """Same count and same total bytes in the folder, different sizes per file: not clean."""
    first, second = series_files(filled)[:2]
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(a + b"\0")
    second.write_bytes(b[:-1])
    assert sorted(f.kind for f in both(filled).findings) == [FindingKind.SIZE_MISMATCH] * 2


def test_a_renamed_file_is_an_orphan_and_a_missing_row(filled: Archive) -> None:
    """Same sizes, one name changed: the listing differs, the name is reported."""
    victim = series_files(filled)[0]
    renamed = victim.with_name("renamed.dcm")
    victim.rename(renamed)
    assert findings(both(filled)) == sorted(
        [
            ("missing", relative(filled, victim), "file is gone"),
            ("orphaned", relative(filled, renamed), "not indexed"),
        ]
    )


def test_a_link_in_place_of_an_instance_is_not_a_regular_file(filled: Archive) -> None:
    victim = series_files(filled)[0]
    target = victim.with_name("elsewhere")
    victim.rename(target)
    victim.symlink_to(target.name)
    report = both(filled)
    assert findings(report) == sorted(
        [
            ("orphaned", relative(filled, victim), "not a regular file"),
            ("orphaned", relative(filled, target), "not indexed"),
        ]
    )
    assert report.instances_checked == 15  # the linked row is not counted as checked


def test_files_outside_series_folders_are_orphans(filled: Archive) -> None:
    patient = sorted(p for p in filled.paths.data.iterdir())[0]
    (filled.paths.data / "top.dcm").write_bytes(b"x")
    (patient / "under-patient.dcm").write_bytes(b"x")
    deeper = series_files(filled)[0].parent / "deeper"
    deeper.mkdir()
    (deeper / "too-deep.dcm").write_bytes(b"x")
    assert findings(both(filled)) == sorted(
        [
            ("orphaned", "data/top.dcm", "not indexed"),
            ("orphaned", relative(filled, patient / "under-patient.dcm"), "not indexed"),
            ("orphaned", relative(filled, deeper / "too-deep.dcm"), "not indexed"),
        ]
    )


def test_an_emptied_series_folder_reports_each_row(filled: Archive) -> None:
    folder = series_files(filled)[0].parent
    names = sorted(p.name for p in folder.iterdir())
    for path in folder.iterdir():
        path.unlink()
    assert findings(both(filled)) == [
        ("missing", relative(filled, folder / name), "file is gone") for name in names
    ]


def test_clean_archive_counts_every_row_and_file(filled: Archive) -> None:
    report = both(filled)
    assert report.clean and report.instances_checked == 16 and report.files_seen == 16


def test_a_data_folder_that_is_a_link_is_followed(filled: Archive, tmp_path: Path) -> None:
    """data/ moved to another disk and linked back: checked as before, clean."""
    elsewhere = tmp_path / "bigger-disk"
    filled.paths.data.rename(elsewhere)
    filled.paths.data.symlink_to(elsewhere)
    report = both(filled)
    assert report.clean and report.instances_checked == 16


def test_a_failed_helper_process_leaves_its_share_to_the_parent(
    filled: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = series_files(filled)
    files[0].unlink()
    (files[-1].parent / "stray.dcm").write_bytes(b"stray")
    expected = findings(check_archive(filled, processes=1))
    parent = os.getpid()
    real_share = integrity._check_share

    def dying_in_the_helper(*args: object, **kwargs: object) -> object:
        if os.getpid() != parent:
            raise MemoryError("the helper ran out of memory")
        return real_share(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(integrity, "_check_share", dying_in_the_helper)
    report = check_archive(filled, processes=2)
    assert findings(report) == expected and len(expected) == 2
    assert report.instances_checked == check_archive(filled, processes=1).instances_checked
