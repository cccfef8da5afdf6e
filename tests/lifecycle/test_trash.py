"""delete / trash list / restore / empty: only the selection moves, nothing is copied,
everything comes back byte for byte, and index, snapshot and stats stay right."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dicom_archive.archive import trash
from dicom_archive.archive.audit import read_audit
from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.integrity import check_archive
from dicom_archive.archive.stats import archive_stats
from dicom_archive.archive.store import Archive, open_archive
from dicom_archive.cli import main
from tests.factory import StudySpec, write_studies
from tests.reliability.helpers import index_rows, tree_hashes


@pytest.fixture
def filled(archive: Archive, tmp_path: Path) -> Archive:
    sources = write_studies(tmp_path / "in", StudySpec(patients=2, studies_per_patient=2))
    assert all(o.outcome == "imported" for o in import_paths(archive, sources))
    return archive


def _studies(archive: Archive) -> list[str]:
    return [
        r[0]
        for r in archive.index.connection.execute(
            "SELECT study_instance_uid FROM studies ORDER BY id"
        )
    ]


def _inodes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in root.rglob("*.dcm")}


def test_delete_moves_only_the_selection_by_rename(filled: Archive) -> None:
    """The study's files go to trash/ with their inodes (no copy); every other row and
    file is untouched; check stays clean; stats and the snapshot drop the study."""
    study = _studies(filled)[1]
    rows_before = index_rows(filled.root)
    inodes = _inodes(filled.paths.data)
    made = trash.delete(filled, trash.Selection(study_uid=study), reason="wrong patient")
    assert made.instances == 6 and made.state == trash.TRASHED
    moved = set(_inodes(filled.root / "trash"))
    assert len(moved) == 6
    assert all(_inodes(filled.root / "trash")[n] == inodes[n] for n in moved)
    rows_after = index_rows(filled.root)
    assert set(rows_before) - set(rows_after) == {
        sop for sop, (path, _, _) in rows_before.items() if study in path
    }
    assert all(rows_after[sop] == rows_before[sop] for sop in rows_after)
    assert check_archive(filled, verify_files=True).clean
    stats = archive_stats(filled.index)
    assert (stats.studies, stats.instances) == (3, 18)
    snapshot = json.loads(filled.paths.snapshot.read_text())
    assert snapshot["fileCount"] == 18 and study not in filled.paths.snapshot.read_text()
    manifest = json.loads((filled.root / "trash" / made.folder / "manifest.json").read_text())
    assert len(manifest["items"]) == 6 and manifest["reason"] == "wrong patient"


def test_restore_brings_back_rows_files_and_import_dates(filled: Archive) -> None:
    rows_before = index_rows(filled.root)
    dates = dict(filled.index.connection.execute("SELECT file_path, imported_at FROM instances"))
    hashes = tree_hashes(filled.paths.data)
    made = trash.delete(filled, trash.Selection(patient_id="PAT00001"))
    assert made.instances == 12 and len(made.studies) == 2
    result = trash.restore(filled, made.id)
    assert result.restored == 12 and result.left_in_trash == ()
    assert index_rows(filled.root) == rows_before
    assert tree_hashes(filled.paths.data) == hashes
    assert dates == dict(
        filled.index.connection.execute("SELECT file_path, imported_at FROM instances")
    )
    assert trash.entries(filled) == [] and not list((filled.root / "trash").iterdir())
    assert check_archive(filled, verify_files=True).clean
    assert archive_stats(filled.index).instances == 24


def test_series_delete_keeps_the_rest_of_the_study(filled: Archive) -> None:
    (series,) = filled.index.connection.execute(
        "SELECT series_instance_uid FROM series ORDER BY id LIMIT 1"
    ).fetchone()
    trash.delete(filled, trash.Selection(series_uid=series))
    assert len(_studies(filled)) == 4
    assert archive_stats(filled.index).series == 7


def test_an_instance_archived_again_is_left_in_the_trash_on_restore(
    filled: Archive, tmp_path: Path
) -> None:
    """A SOP imported again after its delete is never replaced by the trashed copy."""
    study = _studies(filled)[0]
    made = trash.delete(filled, trash.Selection(study_uid=study))
    one = next(iter((filled.root / "trash").rglob("*.dcm")))
    again = tmp_path / "again.dcm"
    again.write_bytes(one.read_bytes())
    assert next(import_paths(filled, [again])).outcome == "imported"
    result = trash.restore(filled, made.id)
    assert result.restored == 5 and len(result.left_in_trash) == 1
    (left,) = trash.entries(filled)
    assert left.instances == 1 and left.state == trash.TRASHED
    assert check_archive(filled, verify_files=True).clean


def test_empty_removes_only_journaled_files(filled: Archive) -> None:
    """A file someone put in an entry's folder is left there and reported."""
    made = trash.delete(filled, trash.Selection(study_uid=_studies(filled)[0]))
    folder = filled.root / "trash" / made.folder
    stranger = folder / "data" / "notes.txt"
    stranger.write_text("mine")
    result = trash.empty(filled)
    assert result.instances == 6 and result.entries == (made.id,)
    assert result.strangers == (str(stranger),) and stranger.read_text() == "mine"
    assert not list(folder.rglob("*.dcm"))
    assert trash.entries(filled) == []


def test_empty_older_than_keeps_recent_entries(filled: Archive) -> None:
    old = trash.delete(filled, trash.Selection(study_uid=_studies(filled)[0]))
    filled.index.connection.execute(
        "UPDATE trash_entries SET created_at = '2020-01-01T00:00:00Z' WHERE id = ?", (old.id,)
    )
    new = trash.delete(filled, trash.Selection(study_uid=_studies(filled)[0]))
    result = trash.empty(filled, older_than_days=30)
    assert result.entries == (old.id,)
    assert [e.id for e in trash.entries(filled)] == [new.id]


def test_protected_study_and_patient_are_refused(filled: Archive) -> None:
    from dicom_archive.archive.retention import protect, unprotect

    study = _studies(filled)[0]
    protect(filled, "study", study, reason="legal hold")
    with pytest.raises(trash.Protected, match="legal hold"):
        trash.delete(filled, trash.Selection(patient_id="PAT00000"))
    unprotect(filled, "study", study)
    protect(filled, "patient", "PAT00000")
    with pytest.raises(trash.Protected, match="patient PAT00000"):
        trash.delete(filled, trash.Selection(study_uid=study))
    assert archive_stats(filled.index).instances == 24


def test_every_step_is_audited(filled: Archive) -> None:
    made = trash.delete(filled, trash.Selection(study_uid=_studies(filled)[0]), reason="dup")
    trash.restore(filled, made.id)
    made = trash.delete(filled, trash.Selection(study_uid=_studies(filled)[0]))
    trash.empty(filled, entry_ids=[made.id])
    log = [(e.action, e.count, e.reason) for e in read_audit(filled.root)]
    assert log == [
        ("delete", 6, "dup"),
        ("restore", 6, None),
        ("delete", 6, None),
        ("trash-empty", 6, None),
    ]


def test_recovery_rolls_an_interrupted_delete_forward(filled: Archive) -> None:
    """Rows journaled and dropped, files not yet moved, owner gone: the next open
    finishes the move, and check is clean."""
    study = _studies(filled)[0]
    connection = filled.index.connection
    made = trash.delete(filled, trash.Selection(study_uid=study))
    trash.restore(filled, made.id)
    # Replay step 1 only, by hand, as a process with a pid that no longer exists.
    with filled.index.write() as c:
        c.execute(
            "INSERT INTO trash_entries(folder, state, created_at, origin, selection, owner_pid, "
            "owner_host) VALUES ('000099-x', 'moving', '2026-01-01T00:00:00Z', 'delete', 's', "
            "2147483646, ?)",
            (__import__("socket").gethostname(),),
        )
    (pk,) = connection.execute("SELECT max(id) FROM trash_entries").fetchone()
    rows = connection.execute(
        trash._ROW_SQL.format(where="st.study_instance_uid = ?"), (study,)
    ).fetchall()
    with filled.index.write() as c:
        c.executemany(
            "INSERT INTO trash_items(entry_pk, sop_instance_uid, file_path, file_size, sha256, "
            "imported_at, header) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    pk,
                    r[0],
                    r[20],
                    r[21],
                    r[22],
                    r[23],
                    json.dumps(dict(zip(trash._HEADER_FIELDS, r[:20], strict=True))),
                )
                for r in rows
            ],
        )
        filled.index.remove_instances(c, [r[20] for r in rows])
    # The files still lie in data/ without rows: journaled, so check calls them in flight.
    assert all((filled.root / r[20]).is_file() for r in rows)
    assert check_archive(filled).clean
    with open_archive(filled.root) as reopened:
        (entry,) = trash.entries(reopened)
        assert entry.state == trash.TRASHED and entry.instances == 6
        assert check_archive(reopened, verify_files=True).clean


def test_cli_delete_nothing_matches_and_confirmation(
    filled: Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(filled.root)
    assert main(["delete", "-a", root, "--study-uid", "1.2.3.4.5", "--yes"]) == 1
    assert capsys.readouterr().err.strip() == (
        "dicom-archive: nothing in the archive matches study 1.2.3.4.5"
    )
    assert main(["delete", "-a", root, "--patient-id", "PAT00000"]) == 1  # no tty, no --yes
    assert "Not deleting" in capsys.readouterr().out
    assert archive_stats(filled.index).instances == 24
    assert main(["delete", "-a", root, "--patient-id", "PAT00000", "--yes"]) == 0
    assert "trash restore 1" in capsys.readouterr().out
    assert main(["trash", "list", "-a", root, "-f", "json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["instances"] == 12 and listed["selection"] == "patient PAT00000"
    assert main(["trash", "restore", "-a", root, "7"]) == 1
    assert "no trash entry 7" in capsys.readouterr().err
    assert main(["trash", "empty", "-a", root]) == 1  # no tty, no --yes
    assert main(["trash", "empty", "-a", root, "--yes"]) == 0
    assert "Removed 1 trash entries, 12 instances" in capsys.readouterr().out


def test_a_rebuilt_index_keeps_the_trash_and_protections(filled: Archive) -> None:
    """rebuild makes a new index from data/: the trash is adopted again from its
    manifests (a restorable entry, not stray files) and protections carry over."""
    from dicom_archive.archive.rebuild import rebuild_index
    from dicom_archive.archive.retention import protect, protected_items

    rows_before = index_rows(filled.root)
    made = trash.delete(filled, trash.Selection(patient_id="PAT00001"))
    protect(filled, "patient", "PAT00000", reason="hold")
    filled.close()
    rebuild_index(filled.root)
    with open_archive(filled.root) as rebuilt:
        (entry,) = trash.entries(rebuilt)
        assert (entry.instances, entry.selection, entry.folder) == (12, made.selection, made.folder)
        assert [(p.kind, p.value) for p in protected_items(rebuilt)] == [("patient", "PAT00000")]
        assert trash.restore(rebuilt, entry.id).restored == 12
        assert check_archive(rebuilt, verify_files=True).clean
    assert set(index_rows(filled.root)) == set(rows_before)


def test_an_importer_adopting_a_file_mid_delete_keeps_it(
    filled: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the journal (rows dropped) and the moves, an import of identical bytes
    adopts the file still at its path: it stays archived and leaves the journal, so no
    row ever names a file that went to the trash."""
    study = _studies(filled)[0]
    victim = next(
        path
        for (path,) in filled.index.connection.execute(
            "SELECT i.file_path FROM instances i JOIN series se ON se.id = i.series_pk "
            "JOIN studies st ON st.id = se.study_pk WHERE st.study_instance_uid = ?",
            (study,),
        )
    )
    again = tmp_path / "again.dcm"
    again.write_bytes((filled.root / victim).read_bytes())
    real = trash._write_manifest

    def import_in_between(archive: Archive, entry_pk: int) -> None:
        real(archive, entry_pk)
        (outcome,) = list(import_paths(archive, [again]))
        assert outcome.outcome == "imported" and outcome.archived_path == victim

    monkeypatch.setattr(trash, "_write_manifest", import_in_between)
    made = trash.delete(filled, trash.Selection(study_uid=study))
    assert made.instances == 5
    assert (filled.root / victim).is_file()
    assert victim in {path for path, _, _ in index_rows(filled.root).values()}
    assert check_archive(filled, verify_files=True).clean


def test_cli_refuses_a_protected_selection_before_asking(
    filled: Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(filled.root)
    assert main(["protect", "-a", root, "--patient-id", "PAT00000", "--reason", "trial"]) == 0
    assert main(["delete", "-a", root, "--patient-id", "PAT00000", "--yes"]) == 1
    err = capsys.readouterr().err
    assert "includes protected patient PAT00000 (trial)" in err and err.count("\n") == 1
    assert archive_stats(filled.index).instances == 24
    assert main(["unprotect", "-a", root, "--patient-id", "PAT00000"]) == 0
    assert main(["delete", "-a", root, "--patient-id", "PAT00000", "--yes"]) == 0
    actions = [e.action for e in read_audit(filled.root)]
    assert actions == ["protect", "unprotect", "delete"]


def test_a_full_filesystem_mid_delete_is_finished_later(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The archive on a real tmpfs with no inode left: the trash folder cannot be made,
    the delete says so in one line, nothing is lost or inconsistent (check is clean),
    every command still works, and once there is room the next one finishes the move."""
    import subprocess

    from dicom_archive.archive.store import init_archive

    mount = tmp_path / "fs"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip()}")
    try:
        root = mount / "archive"
        with init_archive(root) as made:
            list(import_paths(made, write_studies(tmp_path / "in", StudySpec(patients=2))))
        rows_before = index_rows(root)
        # An open reader keeps the index's -wal and -shm files, which SQLite needs.
        holder = open_archive(root)
        stats = os.statvfs(mount)
        used = stats.f_files - stats.f_ffree
        subprocess.run(["mount", "-o", f"remount,nr_inodes={used}", str(mount)], check=True)
        assert main(["delete", "-a", str(root), "--patient-id", "PAT00001", "--yes"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "stopped part-way (No space left on device)" in err
        assert all((root / p).is_file() for p, _, _ in index_rows(root).values())
        assert main(["check", "-a", str(root), "--verify-files"]) == 0
        capsys.readouterr()
        subprocess.run(["mount", "-o", "remount,nr_inodes=10000", str(mount)], check=True)
        holder.close()
        with open_archive(root) as reopened:
            (entry,) = trash.entries(reopened)
            assert entry.state == trash.TRASHED and entry.instances == 6
            assert check_archive(reopened, verify_files=True).clean
            trash.restore(reopened, entry.id)
        assert index_rows(root) == rows_before
    finally:
        subprocess.run(["umount", str(mount)], check=False)
