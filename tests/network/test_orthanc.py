"""Orthanc, a peer nobody here wrote, stores into us, queries us and receives our C-MOVE."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.network.test_dicom_server import _can_unshare

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="apt-get install orthanc")
@pytest.mark.skipif(not _can_unshare(), reason="Orthanc has no bind option: needs unshare -n")
def test_orthanc_stores_into_us_finds_us_and_receives_our_move(tmp_path: Path) -> None:
    script = f"ip link set lo up && exec {sys.executable} -m tests.network.orthanc_peer {tmp_path}"
    run = subprocess.run(["unshare", "-n", "bash", "-c", script], cwd=REPO,
                         capture_output=True, text=True, timeout=240)  # fmt: skip
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["orthanc_store"]["FailedInstancesCount"] == 0
    assert result["archived"] == 4
    assert "CompressedSamples^CT1" in result["found"] and len(result["found"]) == 4
    assert result["move_statuses"][-1] == 0x0000
    assert result["orthanc_has"] == 1


@pytest.mark.skipif(shutil.which("movescu") is None, reason="apt-get install dcmtk")
@pytest.mark.skipif(not _can_unshare(), reason="storescp has no bind option: needs unshare -n")
def test_dcmtk_movescu_moves_a_study_from_us_to_dcmtk_storescp(tmp_path: Path) -> None:
    script = (
        f"ip link set lo up && exec {sys.executable} -m tests.network.dcmtk_move_peer {tmp_path}"
    )
    run = subprocess.run(["unshare", "-n", "bash", "-c", script], cwd=REPO,
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    result = json.loads(lines[-1])
    assert set(result["outcomes"]) == {"imported"}
    assert result["movescu_exit"] == 0, result["movescu_output"]
    # storescp received every instance of the study, and only those, each data set
    # exactly as archived (RLE and JPEG 2000 included: nothing was transcoded).
    assert len(result["expected"]) >= 3
    assert result["received"] == result["expected"]
