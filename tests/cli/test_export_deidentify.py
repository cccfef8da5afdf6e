"""``dicom-archive export --deidentify`` as a user runs it: real processes, real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from dicom_archive.archive.audit import read_audit
from tests.archive.deid_helpers import outputs, read
from tests.factory import StudySpec, write_studies
from tests.reliability.helpers import cli

REPO = Path(__file__).resolve().parents[2]


def _archive_with(tmp_path: Path, *files: Path) -> Path:
    archive = tmp_path / "archive"
    assert cli("init", "-p", archive).returncode == 0
    run = cli("import", *files, "-a", archive, "--recursive")
    assert run.returncode in (0, 1), run.stderr
    return archive


def test_export_deidentify_end_to_end(tmp_path: Path) -> None:
    """The README's commands: a de-identified study, a warning naming the ultrasound
    series, the same pseudonym on a second export (which skips identical files), an
    audit line per export, and the options refused without --deidentify."""
    us = Path(get_testdata_file("examples_palette.dcm"))
    patient_id = str(pydicom.dcmread(us, stop_before_pixels=True).PatientID)
    archive = _archive_with(tmp_path, us, *write_studies(tmp_path / "in", StudySpec()))
    out = tmp_path / "out"
    run = cli("export", "-a", archive, "--patient-id", patient_id, "-o", out, "--deidentify",
              "--shift-dates", "--project", "trial-A", "--reason", "IRB 2024-17")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "1 files de-identified" in run.stdout and "project 'trial-A'" in run.stdout
    assert "Burned In Annotation is absent" in run.stderr and "(US, 1 instance)" in run.stderr
    assert "pixels are NOT cleaned" in run.stderr
    assert patient_id not in run.stderr + run.stdout
    (written,) = outputs(out)
    ds = read(written)
    assert ds.PatientID.startswith("ANON-") and ds.PatientIdentityRemoved == "YES"
    assert written.relative_to(out).parts[0] == ds.PatientID  # no original ID in the path
    again = cli("export", "-a", archive, "--patient-id", patient_id, "-o", out, "--deidentify",
                "--shift-dates", "--project", "trial-A")  # fmt: skip
    assert again.returncode == 0 and "0 files de-identified" in again.stdout
    assert "1 already there" in again.stdout
    entries = [e for e in read_audit(archive) if e.action == "deidentified-export"]
    assert [e.count for e in entries] == [1, 1]
    assert entries[0].reason == "IRB 2024-17" and entries[0].details["project"] == "trial-A"
    assert entries[0].selection == f"patient {patient_id}"
    refused = cli("export", "-a", archive, "--patient-id", patient_id, "-o", out, "--shift-dates")
    assert refused.returncode == 2 and "need --deidentify" in refused.stderr
    nothing = cli("export", "-a", archive, "--patient-id", "nobody", "-o", out, "--deidentify")
    assert nothing.returncode == 1 and "Traceback" not in nothing.stderr
    inside = cli("export", "-a", archive, "--patient-id", patient_id, "-o", archive / "x",
                 "--deidentify")  # fmt: skip
    assert inside.returncode == 1 and "outside the archive" in inside.stderr


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def test_a_killed_export_leaves_no_complete_looking_partial_file(tmp_path: Path) -> None:
    """SIGKILL in the middle of a de-identified export: every visible file is whole
    (it parses to its end and its pixel data has its full length); the rest are hidden
    temporaries; a second run completes the set."""
    spec = StudySpec(patients=1, series_per_study=4, instances_per_series=100, rows=128,
                     columns=128)  # fmt: skip
    archive = _archive_with(tmp_path, *write_studies(tmp_path / "in", spec))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dicom_archive", "export", "-a", str(archive),
               "--patient-id", "PAT00000", "-o", str(out), "--deidentify"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(outputs(out) if out.exists() else []) < 40:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    # Its pool workers die with it (PR_SET_PDEATHSIG); wait until they have.
    workers = {int(p.name[:-4].rsplit(".", 1)[-1]) for p in out.rglob(".*.tmp")}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_running(pid) for pid in workers):
        time.sleep(0.05)
    visible = outputs(out)
    assert 0 < len(visible) < 400, "the kill did not land mid-export"
    for path in visible:
        ds = read(path)
        assert len(ds.PixelData) == 128 * 128 * 2, path
    finished = cli("export", "-a", archive, "--patient-id", "PAT00000", "-o", out, "--deidentify")
    assert finished.returncode == 0, finished.stderr
    assert len(outputs(out)) == 400
    assert f"{len(visible)} already there" in finished.stdout
    # The killed run's hidden temporaries are gone too: nobody else would remove them.
    assert [p.name for p in out.rglob(".*")] == []


def test_two_exports_at_once_agree(tmp_path: Path) -> None:
    """Two processes de-identifying the same study at the same time (the first use of
    the archive's secret included) write the same files and one consistent map."""
    files = write_studies(tmp_path / "in", StudySpec(instances_per_series=30))
    archive = _archive_with(tmp_path, *files)
    command = [sys.executable, "-m", "dicom_archive", "export", "-a", str(archive),
               "--patient-id", "PAT00000", "--deidentify", "-o"]  # fmt: skip
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    runs = [
        subprocess.Popen([*command, str(tmp_path / name)], cwd=REPO, **pipes) for name in ("a", "b")
    ]
    for run in runs:
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr
    a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in outputs(tmp_path / "a")}
    b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in outputs(tmp_path / "b")}
    assert len(a) == 60 and a == b
    import sqlite3

    with sqlite3.connect(archive / "deid" / "pseudonyms.db") as db:
        kinds = dict(db.execute("SELECT kind, COUNT(*) FROM pseudonyms GROUP BY kind").fetchall())
    # 60 SOP + 2 series + 1 study + 1 frame of reference... UIDs; one patient.
    assert kinds["patient"] == 1 and kinds["uid"] >= 63
