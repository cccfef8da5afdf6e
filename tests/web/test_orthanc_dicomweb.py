"""Orthanc's DICOMweb plugin, a client nobody here wrote, stores into us, searches us,
retrieves from us and reads our metadata."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.network.test_dicom_server import _can_unshare
from tests.web.orthanc_dicomweb_peer import PLUGIN

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="apt-get install orthanc")
@pytest.mark.skipif(not Path(PLUGIN).exists(), reason="apt-get install orthanc-dicomweb")
@pytest.mark.skipif(not _can_unshare(), reason="Orthanc has no bind option: needs unshare -n")
def test_orthanc_dicomweb_plugin_against_us(tmp_path: Path) -> None:
    script = (
        f"ip link set lo up && exec {sys.executable} -m tests.web.orthanc_dicomweb_peer {tmp_path}"
    )
    run = subprocess.run(["unshare", "-n", "bash", "-c", script], cwd=REPO,
                         capture_output=True, text=True, timeout=240)  # fmt: skip
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    log = (
        (tmp_path / "orthanc.log").read_text(errors="replace")[-3000:]
        if (tmp_path / "orthanc.log").exists()
        else ""
    )
    assert run.returncode == 0 and lines, run.stderr[-3000:] + log
    result = json.loads(lines[-1])
    assert result["archived"] == 4 and result["archived_as_sent"], result
    assert "CompressedSamples^CT1" in result["found"] and len(result["found"]) == 4
    assert result["orthanc_has"] == 1 and result["retrieved_identical"]
    assert result["metadata_instances"] == 1
    assert "/bulkdata/7FE00010" in result["metadata_pixels"]
