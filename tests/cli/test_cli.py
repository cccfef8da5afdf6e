"""The CLI as a user runs it: commands, formats, exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_archive.cli import main
from tests.factory import StudySpec, make_instance, write_dataset, write_instance, write_studies


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def archive_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "archive"
    code, out, _ = run(capsys, "init", "--path", str(path))
    assert code == 0 and "Created an empty archive" in out
    return path


@pytest.fixture
def filled(archive_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    write_studies(tmp_path / "in", StudySpec(patients=3, studies_per_patient=1))
    code, out, _ = run(
        capsys, "import", str(tmp_path / "in"), "-a", str(archive_path), "--recursive"
    )
    assert code == 0, out
    return archive_path


def test_init_refuses_an_existing_archive_unless_forced(
    archive_path: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "init", "-p", str(archive_path))
    assert code == 1 and "already an archive" in err
    write_instance(tmp_path / "x.dcm")
    run(capsys, "import", str(tmp_path / "x.dcm"), "-a", str(archive_path))
    code, _, _ = run(capsys, "init", "-p", str(archive_path), "--force")
    assert code == 0
    assert not list((archive_path / "data").iterdir())


def test_init_force_never_deletes_foreign_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    code, _, err = run(capsys, "init", "-p", str(home), "--force")
    assert code == 1 and "not an archive" in err
    assert (home / "thesis.tex").read_text() == "years of work"


def test_missing_archive_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "stats", "-a", str(tmp_path / "nope"))
    assert code == 1
    assert err.strip() == (
        f"dicom-archive: {tmp_path / 'nope'} is not an archive "
        f"(create one with: dicom-archive init --path {tmp_path / 'nope'})"
    )


def test_import_summary_and_outcomes(
    archive_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_instance(tmp_path / "good.dcm")
    junk = tmp_path / "junk.txt"
    junk.write_text("hello")
    code, out, err = run(capsys, "import", str(good), str(junk), "-a", str(archive_path))
    assert code == 1
    assert "rejected   " in err and "junk.txt: not a DICOM file" in err
    assert out.strip().startswith("1 imported, 0 duplicates, 0 conflicts, 1 rejected, ")
    code, out, err = run(capsys, "import", str(good), "-a", str(archive_path))
    assert code == 1 and "duplicate" in err and "1 duplicates" in out
    code, out, err = run(capsys, "import", str(good), "-a", str(archive_path), "--skip-duplicates")
    assert code == 0 and err == ""


def test_import_verbose_and_conflict(
    archive_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = make_instance()
    first = write_dataset(ds, tmp_path / "a.dcm")
    ds.PatientName = "Changed"
    second = write_dataset(ds, tmp_path / "b.dcm")
    code, out, _ = run(capsys, "import", str(first), "-a", str(archive_path), "--verbose")
    assert code == 0 and out.startswith("imported   ")
    code, out, err = run(capsys, "import", str(second), "-a", str(archive_path))
    assert code == 1 and "conflict" in err and "data/" in err and "b.dcm" in err


def conflicting_pair(tmp_path: Path, **changes: object) -> tuple[Path, Path]:
    """Two files of one instance that differ by ``changes``."""
    ds = make_instance()
    first = write_dataset(ds, tmp_path / "a.dcm")
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return first, write_dataset(ds, tmp_path / "b.dcm")


def test_conflict_line_says_what_differs(
    archive_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = conflicting_pair(
        tmp_path,
        PatientName="Changed",
        StudyDate="20240116",
        StudyTime="000000",
        AccessionNumber="ACC999",
        StudyDescription="CT CHEST",
    )
    run(capsys, "import", str(first), "-a", str(archive_path))
    code, _, err = run(capsys, "import", str(second), "-a", str(archive_path))
    assert code == 1
    [line] = err.splitlines()
    assert line.startswith("conflict   ") and "b.dcm: SOP Instance UID " in line
    assert line.endswith(
        "with different bytes at data/PAT-001/"
        + line.split("data/PAT-001/")[1].split(";")[0]
        + "; differs: StudyDate ('20240115' vs '20240116'), StudyTime ('101500' vs '000000'), "
        "AccessionNumber ('ACC001' vs 'ACC999'), +2 more"
    )
    code, _, err = run(capsys, "import", str(second), "-a", str(archive_path), "--verbose")
    lines = err.splitlines()
    assert lines[0].startswith("conflict   ")
    assert lines[1:] == [
        "    StudyDate (0008,0020): '20240115' vs '20240116'",
        "    StudyTime (0008,0030): '101500' vs '000000'",
        "    AccessionNumber (0008,0050): 'ACC001' vs 'ACC999'",
        "    StudyDescription (0008,1030): 'CT HEAD' vs 'CT CHEST'",
        "    PatientName (0010,0010): 'Müller^Jörg' vs 'Changed'",
    ]


def test_hostile_values_in_a_conflict_cannot_drive_the_terminal(
    archive_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = conflicting_pair(tmp_path, PatientName="\x1b[2J\x1b]0;owned\x07EVIL")
    run(capsys, "import", str(first), "-a", str(archive_path))
    code, _, err = run(capsys, "import", str(second), "-a", str(archive_path), "--verbose")
    assert code == 1 and "\x1b" not in err and "\x07" not in err
    assert "'Müller^Jörg' vs '\\x1b[2J\\x1b]0;owned\\x07EVIL'" in err


def test_import_json_gives_one_object_per_outcome_with_the_diff(
    archive_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = conflicting_pair(tmp_path, PatientName="Changed\x1b[31m")
    code, out, err = run(capsys, "import", str(first), "-a", str(archive_path), "-f", "json")
    assert code == 0 and err == ""
    imported, summary = (json.loads(line) for line in out.splitlines())
    assert imported["outcome"] == "imported" and imported["archivedPath"].startswith("data/")
    assert "conflict" not in imported
    assert summary["summary"]["imported"] == 1 and summary["summary"]["interrupted"] is False
    missing = tmp_path / "missing.dcm"
    code, out, err = run(
        capsys, "import", str(second), str(missing), "-a", str(archive_path), "--format", "json"
    )
    assert code == 1 and err == ""
    gone, conflict, summary = (json.loads(line) for line in out.splitlines())
    assert gone == {
        "outcome": "rejected",
        "source": str(missing),
        "sopInstanceUID": None,
        "archivedPath": None,
        "size": 0,
        "reason": "no such file or folder",
    }
    assert conflict["outcome"] == "conflict" and conflict["source"] == str(second)
    assert conflict["archivedPath"] == imported["archivedPath"]
    assert conflict["conflict"]["differences"] == [
        {
            "keyword": "PatientName",
            "tag": "(0010,0010)",
            "vr": "PN",
            "archived": "Müller^Jörg",
            "incoming": "Changed\\x1b[31m",
        }
    ]
    assert conflict["conflict"]["total"] == 1
    assert conflict["conflict"]["pixelDataDiffers"] is False
    assert conflict["conflict"]["transferSyntaxDiffers"] is False
    assert conflict["conflict"]["unavailable"] is None
    assert summary["summary"]["conflicts"] == 1 and summary["summary"]["rejected"] == 1


def test_import_json_escapes_what_a_terminal_would_act_on() -> None:
    from dicom_archive.cli.import_cmd import json_line

    text = json_line({"source": "in/\x9b31m\u202ex.dcm\n"})
    assert not any(ch in text for ch in "\x9b\u202e\n")
    assert json.loads(text) == {"source": "in/\x9b31m\u202ex.dcm\n"}


def test_import_of_a_folder_is_not_recursive_by_default(
    archive_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_instance(tmp_path / "in" / "top.dcm")
    write_instance(tmp_path / "in" / "sub" / "deep.dcm")
    _, out, _ = run(capsys, "import", str(tmp_path / "in"), "-a", str(archive_path))
    assert out.startswith("1 imported")
    _, out, _ = run(
        capsys, "import", str(tmp_path / "in"), "-a", str(archive_path), "--recursive",
        "--skip-duplicates",
    )  # fmt: skip
    assert out.startswith("1 imported, 1 duplicates")


def test_query_formats(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "query", "-a", str(filled), "--patient-name", "doe^patient1")
    assert code == 0 and "DOE^PATIENT1" in out and "1 studies" in out
    assert out.splitlines()[0].split()[:2] == ["Patient", "Name"]
    code, out, _ = run(capsys, "query", "-a", str(filled), "--patient-id", "PAT*", "-f", "json")
    studies = json.loads(out)
    assert len(studies) == 3 and studies[0]["seriesCount"] == 2 and studies[0]["series"]
    code, out, _ = run(capsys, "query", "-a", str(filled), "--modality", "ct", "-f", "text")
    assert len(out.strip().splitlines()) == 3


def test_query_no_match(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "query", "-a", str(filled), "--patient-name", "NOBODY")
    assert code == 0 and "No studies match." in out
    code, out, _ = run(capsys, "query", "-a", str(filled), "--patient-name", "NOBODY", "-f", "json")
    assert code == 0 and json.loads(out) == []


def test_query_bad_date_is_a_usage_error(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "query", "-a", str(filled), "--study-date", "2024-13-01")
    assert code == 2 and "invalid study date" in err and "Traceback" not in err


def test_list_formats(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "-a", str(filled))
    assert code == 0 and out.count("Study ") == 3 and out.count("Series ") == 6
    _, out, _ = run(capsys, "list", "-a", str(filled), "--show-instances")
    assert out.count("data/") == 18
    _, out, _ = run(capsys, "list", "-a", str(filled), "-f", "table")
    assert "6 series" in out
    _, out, _ = run(capsys, "list", "-a", str(filled), "-f", "json")
    document = json.loads(out)
    assert document["fileCount"] == 18 and len(document["patients"]) == 3
    assert json.loads((filled / "archive_index.json").read_text())["fileCount"] == 18


def test_export_command(filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "export", "-a", str(filled), "-o", str(tmp_path / "o"), "--patient-id", "PAT00001"
    )
    assert code == 0 and out.startswith("6 files exported")
    code, _, err = run(
        capsys, "export", "-a", str(filled), "-o", str(tmp_path / "o"), "--study-uid", "1.2.3"
    )
    assert code == 1 and "nothing in the archive matches study 1.2.3" in err
    with pytest.raises(SystemExit) as exited:
        main(["export", "-a", str(filled), "-o", str(tmp_path / "o")])
    assert exited.value.code == 2


def test_check_and_stats_commands(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", "-a", str(filled), "--verify-files")
    assert code == 0 and "The archive is clean." in out
    next((filled / "data").rglob("*.dcm")).unlink()
    code, out, _ = run(capsys, "check", "-a", str(filled), "--verbose")
    assert code == 1 and "missing" in out and "1 missing files" in out
    code, out, _ = run(capsys, "check", "-a", str(filled), "-f", "json")
    assert code == 1 and json.loads(out)["counts"]["missing"] == 1
    code, out, _ = run(capsys, "stats", "-a", str(filled))
    assert code == 0 and "Instances:   18" in out and "CT" in out
    code, out, _ = run(capsys, "stats", "-a", str(filled), "-f", "json")
    assert json.loads(out)["patients"] == 3


def test_usage_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicom_archive", "query"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--archive" in result.stderr
    version = subprocess.run(
        [sys.executable, "-m", "dicom_archive", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("dicom-archive ")


def test_hostile_patient_id_stays_inside_the_archive(
    archive_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = write_instance(
        tmp_path / "h.dcm", PatientID="../../etc", SOPInstanceUID="1.2.3/../../x"
    )
    code, out, _ = run(capsys, "import", str(hostile), "-a", str(archive_path), "--verbose")
    assert code == 0
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p == hostile or p.is_relative_to(archive_path) for p in files)
    _, out, _ = run(
        capsys, "query", "-a", str(archive_path), "--patient-id", "../../etc", "-f", "json"
    )
    assert json.loads(out)[0]["patientID"] == "../../etc"


def test_ctrl_c_keeps_what_was_committed_and_says_so(tmp_path: Path) -> None:
    """An interrupted import exits 130, reports what it archived, leaves a clean archive
    and a snapshot in step with the index; running it again finishes the job."""
    import signal
    import time

    write_studies(
        tmp_path / "in", StudySpec(patients=40, series_per_study=5, instances_per_series=20)
    )
    archive = tmp_path / "archive"
    command = [sys.executable, "-m", "dicom_archive"]
    subprocess.run([*command, "init", "-p", str(archive)], check=True, capture_output=True)
    importing = subprocess.Popen(
        [*command, "import", str(tmp_path / "in"), "-a", str(archive), "--recursive"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list((archive / "data").glob("*")):
        time.sleep(0.05)
    importing.send_signal(signal.SIGINT)
    out, err = importing.communicate(timeout=60)
    if importing.returncode == 0:
        pytest.skip("the import finished before the interrupt arrived")
    assert importing.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in out + err
    check = subprocess.run([*command, "check", "-a", str(archive)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    indexed = json.loads((archive / "archive_index.json").read_text())["fileCount"]
    assert indexed == len(list((archive / "data").rglob("*.dcm")))
    again = subprocess.run(
        [*command, "import", str(tmp_path / "in"), "-a", str(archive), "--recursive",
         "--skip-duplicates"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert len(list((archive / "data").rglob("*.dcm"))) == 4000


def test_check_loads_neither_pydicom_nor_structlog(filled: Path) -> None:
    """`check` imports only its own command: start-up is most of its time."""
    code = (
        "import sys; from dicom_archive.cli import main; rc = main(sys.argv[1:]); "
        "heavy = sorted(m for m in ('pydicom', 'structlog', 'dicom_archive.cli.import_cmd') "
        "if m in sys.modules); print(heavy); sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "check", "-a", str(filled)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("[]"), result.stdout


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    from dicom_archive.cli import COMMANDS

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    with pytest.raises(SystemExit):
        main(["--debug", "export", "--help"])
    assert "--study-uid" in capsys.readouterr().out


def test_every_repair_action_has_a_verb() -> None:
    from dicom_archive.archive.repair import Action
    from dicom_archive.cli.check_cmd import _VERBS

    assert set(_VERBS) == {action.value for action in Action}


def test_an_archive_named_relative_to_the_working_folder_means_the_same_archive(
    filled: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `check -a .` once reported every file orphaned and no instance checked: the walk
    # cut "data/..." paths by the length of ".".
    monkeypatch.chdir(filled)
    code, out, _ = run(capsys, "check", "-a", ".")
    assert code == 0 and "The archive is clean" in out
    assert " 0 orphaned files" in out and not out.startswith("0 instances")
    write_instance(tmp_path / "late.dcm")
    code, out, _ = run(capsys, "import", str(tmp_path / "late.dcm"), "-a", ".")
    assert code == 0 and "1 imported" in out
    monkeypatch.chdir(filled.parent)
    code, out, _ = run(capsys, "check", "-a", filled.name, "--verify-files")
    assert code == 0 and "The archive is clean" in out
