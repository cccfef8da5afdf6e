"""check --repair: orphans indexed or quarantined, rows of lost files dropped with a
log, temporaries cleared; never a data file deleted; asks before acting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.integrity import check_archive
from dicom_archive.archive.repair import Action, apply_repair, plan_repair
from dicom_archive.archive.store import Archive
from dicom_archive.cli import main
from tests.factory import StudySpec, write_instance, write_studies
from tests.reliability.helpers import sha256_of, tree_hashes


@pytest.fixture
def damaged(archive: Archive, tmp_path: Path) -> dict[str, Path]:
    """An archive with one of each finding repair acts on."""
    sources = write_studies(tmp_path / "in", StudySpec(patients=2, instances_per_series=3))
    list(import_paths(archive, sources))
    data = archive.paths.data
    files = sorted(data.rglob("*.dcm"))
    series = files[0].parent
    gone = files[1]
    gone.unlink()
    made = {
        "gone": gone,
        "valid_orphan": write_instance(series / "orphan.dcm"),
        "loose_orphan": write_instance(data / "loose.dcm", PatientID="LOOSE"),
        "junk": series / "junk.bin",
        "identical_copy": series / "copy.dcm",
        "conflict": series / "conflict.dcm",
        "temporary": archive.paths.tmp / "999999999-1.part",
    }
    made["junk"].write_bytes(b"\0" * 300)
    made["identical_copy"].write_bytes(files[2].read_bytes())
    sop = next(import_paths(archive, [files[2]])).sop_instance_uid
    write_instance(made["conflict"], SOPInstanceUID=sop, PatientName="Other^Bytes")
    made["temporary"].write_bytes(b"partial")
    return made


def test_repair_plan_names_the_right_action_for_each_finding(
    archive: Archive, damaged: dict[str, Path]
) -> None:
    plan = plan_repair(archive, check_archive(archive))
    actions = {archive.root / s.path: s.action for s in plan.steps}
    assert actions == {
        damaged["gone"]: Action.DROP_ROW,
        damaged["valid_orphan"]: Action.INDEX,
        damaged["loose_orphan"]: Action.MOVE_AND_INDEX,
        damaged["junk"]: Action.QUARANTINE,
        damaged["identical_copy"]: Action.QUARANTINE,
        damaged["conflict"]: Action.QUARANTINE,
        damaged["temporary"]: Action.REMOVE_TEMPORARY,
    }


def test_repair_leaves_a_clean_archive_and_deletes_no_data_file(
    archive: Archive, damaged: dict[str, Path]
) -> None:
    everything = {sha for sha in tree_hashes(archive.root / "data").values()}
    plan = plan_repair(archive, check_archive(archive))
    result = apply_repair(archive, plan)
    assert result.failed == ()
    assert check_archive(archive, verify_files=True).clean
    # Every data file's bytes are still in the archive: in data/ or in quarantine/.
    kept = set(tree_hashes(archive.root / "data").values()) | set(
        tree_hashes(archive.root / "quarantine").values()
    )
    assert everything <= kept
    quarantined = {p.name for p in (archive.root / "quarantine").rglob("*") if p.is_file()}
    assert {"junk.bin", "copy.dcm", "conflict.dcm"} <= quarantined
    assert not damaged["temporary"].exists()
    log = [json.loads(line) for line in Path(result.log_path).read_text().splitlines()]
    dropped = [e["row"] for e in log if e["action"] == "drop-row"]
    assert [r["filePath"] for r in dropped] == [str(damaged["gone"].relative_to(archive.root))]
    assert dropped[0]["sha256"] and dropped[0]["sopInstanceUID"]


def test_a_step_whose_premise_changed_is_not_forced(
    archive: Archive, damaged: dict[str, Path]
) -> None:
    plan = plan_repair(archive, check_archive(archive))
    content = damaged["junk"].read_bytes()
    damaged["junk"].unlink()
    damaged["gone"].parent.mkdir(parents=True, exist_ok=True)
    damaged["gone"].write_bytes(b"back")
    result = apply_repair(archive, plan)
    reasons = {Path(s.path).name: why for s, why in result.failed}
    assert reasons == {
        "junk.bin": "the file is no longer there",
        damaged["gone"].name: "the file is back",
    }
    assert content


def test_cli_repair_only_reports_when_not_interactive_without_yes(
    archive: Archive, damaged: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    def files() -> dict[str, str]:
        # The index changes anyway: check records each run in it.
        return {k: v for k, v in tree_hashes(archive.root).items() if "archive.db" not in k}

    before = files()
    assert main(["check", "-a", str(archive.root), "--repair"]) == 1
    out = capsys.readouterr().out
    assert "Not repairing" in out and "quarantine" in out and "drop row" in out
    assert files() == before
    assert main(["check", "-a", str(archive.root), "--repair", "--yes"]) == 0
    assert "The archive is clean." in capsys.readouterr().out
    assert main(["check", "-a", str(archive.root), "--verify-files"]) == 0


def test_cli_repair_asks_on_a_terminal(
    archive: Archive,
    damaged: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    before = sha256_of(damaged["junk"])
    assert main(["check", "-a", str(archive.root), "--repair"]) == 1
    assert sha256_of(damaged["junk"]) == before
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert main(["check", "-a", str(archive.root), "--repair"]) == 0
