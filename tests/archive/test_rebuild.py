"""rebuild: the index from the files, never touching a data file, keeping the old
index aside."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.integrity import check_archive
from dicom_archive.archive.rebuild import rebuild_index
from dicom_archive.archive.snapshot import write_snapshot
from dicom_archive.archive.store import init_archive, open_archive
from dicom_archive.cli import main
from dicom_archive.errors import IndexBusy, NotAnArchive
from tests.factory import StudySpec, write_instance, write_studies
from tests.reliability.helpers import index_rows, tree_hashes, tree_listing


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    sources = write_studies(tmp_path / "in", StudySpec(patients=2, instances_per_series=4))
    with init_archive(tmp_path / "archive") as archive:
        list(import_paths(archive, sources))
        write_snapshot(archive.paths, archive.index)
    return tmp_path / "archive"


def _data(archive: Path) -> dict[str, str]:
    return tree_hashes(archive / "data")


def test_rebuild_of_a_healthy_archive_changes_no_row_and_no_file(filled: Path) -> None:
    rows, files = index_rows(filled), _data(filled)
    report = rebuild_index(filled)
    assert not report.changes and report.skipped == () and report.previous == "index"
    assert index_rows(filled) == rows and _data(filled) == files
    assert [n.startswith("archive.db.previous-") for n in report.kept_aside] == [True]
    with open_archive(filled) as archive:
        assert check_archive(archive, verify_files=True).clean


def test_import_dates_survive_a_rebuild(filled: Path) -> None:
    connection = sqlite3.connect(filled / "archive.db")
    connection.execute("UPDATE instances SET imported_at = '2001-02-03T04:05:06Z'")
    connection.commit()
    connection.close()
    rebuild_index(filled)
    connection = sqlite3.connect(filled / "archive.db")
    dates = {r[0] for r in connection.execute("SELECT imported_at FROM instances")}
    connection.close()
    assert dates == {"2001-02-03T04:05:06Z"}


def test_dry_run_reports_every_difference_and_changes_nothing(filled: Path) -> None:
    victim = sorted((filled / "data").rglob("*.dcm"))[0]
    victim.unlink()
    extra = write_instance(filled / "data" / "P" / "ST" / "SE" / "extra.dcm")
    connection = sqlite3.connect(filled / "archive.db")
    connection.execute("UPDATE patients SET patient_name = 'WRONG' WHERE patient_id = 'PAT00001'")
    connection.commit()
    connection.close()
    # Only tmp/ may change: the scratch index lives there during the run.
    before = {k: v for k, v in tree_listing(filled).items() if k != "tmp"}
    before_hashes = tree_hashes(filled)
    report = rebuild_index(filled, dry_run=True)
    assert [a.path for a in report.added] == [str(extra.relative_to(filled))]
    assert [d.path for d in report.dropped] == [str(victim.relative_to(filled))]
    assert {(c.column, c.old, c.new) for c in report.changed} == {
        ("patient_name", "WRONG", "DOE^PATIENT1")
    }
    after = {k: v for k, v in tree_listing(filled).items() if k != "tmp"}
    assert after == before and tree_hashes(filled) == before_hashes


def test_adopts_an_archive_of_the_original_tool(filled: Path) -> None:
    """archive_index.json and data/, no archive.db: indexed, with the JSON's import
    dates, the original document kept."""
    rows = index_rows(filled)
    document = json.loads((filled / "archive_index.json").read_text())
    for suffix in ("", "-wal", "-shm"):
        (filled / f"archive.db{suffix}").unlink(missing_ok=True)
    files = _data(filled)
    report = rebuild_index(filled)
    assert report.previous == "snapshot" and not report.changes
    assert index_rows(filled) == rows and _data(filled) == files
    kept = [n for n in report.kept_aside if n.startswith("archive_index.json.original-")]
    assert json.loads((filled / kept[0]).read_text()) == document
    with open_archive(filled) as archive:
        assert check_archive(archive, verify_files=True).clean


@pytest.mark.parametrize("damage", ["garbage", "integrity"])
def test_a_damaged_index_is_kept_aside_and_replaced(filled: Path, damage: str) -> None:
    rows = index_rows(filled)
    if damage == "garbage":
        (filled / "archive.db").write_bytes(b"this is not SQLite" * 100)
    else:
        # Swap two indexes' root pages: SQLite opens it, integrity_check fails.
        connection = sqlite3.connect(filled / "archive.db")
        pages = dict(connection.execute("SELECT name, rootpage FROM sqlite_master"))
        connection.execute("PRAGMA writable_schema = ON")
        for name, other in (("instances_series", "instances_imported_at"),) * 1:
            connection.execute(
                "UPDATE sqlite_master SET rootpage = ? WHERE name = ?", (pages[other], name)
            )
            connection.execute(
                "UPDATE sqlite_master SET rootpage = ? WHERE name = ?", (pages[name], other)
            )
        connection.commit()
        connection.close()
    damaged = (filled / "archive.db").read_bytes()
    report = rebuild_index(filled)
    assert report.previous == "damaged index", report.previous_detail
    aside = [n for n in report.kept_aside if n.startswith("archive.db.damaged-")]
    assert (filled / aside[0]).read_bytes() == damaged
    assert index_rows(filled) == rows


def test_rebuild_refuses_an_index_in_use_and_touches_nothing(filled: Path) -> None:
    other = sqlite3.connect(filled / "archive.db")
    other.execute("SELECT count(*) FROM instances").fetchone()
    before = tree_listing(filled)
    try:
        with pytest.raises(IndexBusy, match="in use"):
            rebuild_index(filled)
        after = tree_listing(filled)
    finally:
        other.close()
    assert {k: v for k, v in after.items() if k != "tmp"} == {
        k: v for k, v in before.items() if k != "tmp"
    }


def test_files_that_cannot_be_indexed_are_reported_and_left_in_place(filled: Path) -> None:
    series = next((filled / "data").rglob("*.dcm")).parent
    (series / "notes.txt").write_text("not dicom")
    copy = series / "copy.dcm"
    copy.write_bytes(next(series.glob("*.dcm")).read_bytes())
    loose = write_instance(filled / "data" / "loose.dcm")
    files = _data(filled)
    report = rebuild_index(filled)
    assert {s.path.rsplit("/", 1)[-1] for s in report.skipped} == {
        "notes.txt",
        "copy.dcm",
        "loose.dcm",
    }
    assert _data(filled) == files and loose.exists()


def test_a_folder_without_data_is_not_adopted(tmp_path: Path) -> None:
    with pytest.raises(NotAnArchive):
        rebuild_index(tmp_path)


def test_cli_rebuild_dry_run_and_exit_codes(
    filled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (filled / "archive.db").unlink()
    assert main(["rebuild", "-a", str(filled), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing changed" in out and not (filled / "archive.db").exists()
    assert main(["rebuild", "-a", str(filled)]) == 0
    assert main(["check", "-a", str(filled), "--verify-files"]) == 0
    (filled / "data" / "junk").write_text("x")
    assert main(["rebuild", "-a", str(filled)]) == 1
    assert "Files not indexed (left in place) (1)" in capsys.readouterr().out
