from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

from dicom_archive.archive.importer import Importer, import_paths
from dicom_archive.archive.records import Outcome
from dicom_archive.archive.store import Archive
from tests.factory import make_instance, write_dataset, write_instance, write_studies


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outcomes(archive: Archive, paths: list[Path]) -> list[Outcome]:
    return [o.outcome for o in import_paths(archive, paths)]


def test_imported_file_is_byte_identical_and_indexed(archive: Archive, tmp_path: Path) -> None:
    source = write_instance(tmp_path / "in" / "a.dcm")
    before = source.read_bytes()
    [outcome] = import_paths(archive, [source])
    assert outcome.outcome is Outcome.IMPORTED
    archived = archive.root / outcome.archived_path
    assert archived.read_bytes() == before
    assert source.read_bytes() == before, "sources are never modified"
    row = archive.index.find_instance(outcome.sop_instance_uid)
    assert row is not None
    assert row.sha256 == sha(source) and row.file_size == len(before)
    assert outcome.archived_path.startswith("data/PAT-001/")


def test_identical_reimport_is_a_duplicate_and_changes_nothing(
    archive: Archive, tmp_path: Path
) -> None:
    """Re-importing identical bytes leaves one row."""
    source = write_instance(tmp_path / "a.dcm")
    copy = tmp_path / "copy.dcm"
    copy.write_bytes(source.read_bytes())
    assert outcomes(archive, [source]) == [Outcome.IMPORTED]
    assert outcomes(archive, [copy, source]) == [Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert archive.index.instance_count() == 1


def test_same_uid_different_bytes_is_a_conflict_never_overwritten(
    archive: Archive, tmp_path: Path
) -> None:
    ds = make_instance()
    first = write_dataset(ds, tmp_path / "first.dcm")
    ds.PatientName = "Other^Name"
    second = write_dataset(ds, tmp_path / "second.dcm")
    [imported] = import_paths(archive, [first])
    [conflict] = import_paths(archive, [second])
    assert conflict.outcome is Outcome.CONFLICT
    assert imported.archived_path in conflict.reason
    assert (archive.root / imported.archived_path).read_bytes() == first.read_bytes()


def test_conflict_within_one_batch(archive: Archive, tmp_path: Path) -> None:
    ds = make_instance()
    first = write_dataset(ds, tmp_path / "first.dcm")
    ds.PatientName = "Other^Name"
    second = write_dataset(ds, tmp_path / "second.dcm")
    assert outcomes(archive, [first, second]) == [Outcome.IMPORTED, Outcome.CONFLICT]
    assert archive.index.instance_count() == 1


def test_every_input_gets_exactly_one_outcome(archive: Archive, tmp_path: Path) -> None:
    good = write_studies(tmp_path / "in")
    junk = tmp_path / "junk.txt"
    junk.write_text("not dicom")
    results = list(Importer(archive, batch_size=4).import_files([*good, junk, good[0]]))
    assert [r.source for r in results] == [*good, junk, good[0]]
    assert [r.outcome for r in results] == [Outcome.IMPORTED] * len(good) + [
        Outcome.REJECTED,
        Outcome.DUPLICATE,
    ]


def test_leftover_archived_file_from_a_crash_is_adopted(archive: Archive, tmp_path: Path) -> None:
    """A crash between link and commit leaves a file with no row; the retry indexes it."""
    source = write_instance(tmp_path / "a.dcm")
    [first] = import_paths(archive, [source])
    with archive.index.write() as db:
        db.execute("DELETE FROM instances")
    [again] = import_paths(archive, [source])
    assert again.outcome is Outcome.IMPORTED
    assert again.archived_path == first.archived_path
    assert archive.index.find_instance(again.sop_instance_uid) is not None


def test_no_temporary_files_are_left(archive: Archive, tmp_path: Path) -> None:
    import_paths_list = write_studies(tmp_path / "in")
    list(import_paths(archive, import_paths_list))
    assert list(archive.paths.tmp.iterdir()) == []


def test_directories_and_missing_files_fail_cleanly(archive: Archive, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    results = list(import_paths(archive, [folder, tmp_path / "nope.dcm"]))
    assert results[0].outcome is Outcome.REJECTED and results[0].reason == "not a regular file"
    assert results[1].outcome is Outcome.FAILED


def test_full_disk_keeps_the_source_and_reports_it(
    archive: Archive, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    source = write_instance(tmp_path / "a.dcm")
    real_open = os.open

    def no_space(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if flags & os.O_EXCL:  # creating the temporary copy
            raise OSError(28, "No space left on device")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr("os.open", no_space)
    [outcome] = import_paths(archive, [source])
    monkeypatch.undo()
    assert outcome.outcome is Outcome.FAILED and outcome.reason == "disk full"
    assert source.exists()
    assert archive.index.instance_count() == 0
    assert outcomes(archive, [source]) == [Outcome.IMPORTED]


def test_busy_index_fails_the_batch_without_leaving_files(
    archive: Archive, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("dicom_archive.archive.index.BUSY_TIMEOUT_MS", 100)
    blocker = sqlite3.connect(archive.paths.index, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    archive.index.connection.execute("PRAGMA busy_timeout = 100")
    try:
        source = write_instance(tmp_path / "a.dcm")
        [outcome] = import_paths(archive, [source])
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert outcome.outcome is Outcome.FAILED
    assert "locked" in outcome.reason
    assert not any(p.is_file() for p in archive.paths.data.rglob("*")), "no unindexed file left"
    assert outcomes(archive, [source]) == [Outcome.IMPORTED]


def test_temp_names_carry_the_pid(archive: Archive, tmp_path: Path) -> None:
    """Stale temporaries are told from live ones by the pid in their name."""
    importer = Importer(archive)
    temporary = importer._new_temporary()
    assert temporary.name.startswith(f"{os.getpid()}-")
