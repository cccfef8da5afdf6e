"""The unit file passes systemd's own checks (skipped where systemd-analyze is absent)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[2] / "systemd" / "dicom-archive.service"
#: systemd-analyze security's 0-100 scale (exposure x 10): 2.0 is well inside "OK".
THRESHOLD = 20
NETWORK_DROP_IN = UNIT.parent / "dicom-archive.service.d" / "dicom-network.conf"
#: The DICOMweb face's drop-in ([web]): the same opening, checked the same way.
WEB_DROP_IN = UNIT.parent / "dicom-archive.service.d" / "dicom-web.conf"
#: With the network drop-in the service may use sockets, still behind IPAddressDeny,
#: and keeps the same bar (1.4 "OK" today, against 0.6 without it).
NETWORK_THRESHOLD = THRESHOLD

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (apt-get install systemd)",
)


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's binary, which verify requires."""
    binary = Path(sys.executable).parent / "dicom-archive"
    text = UNIT.read_text().replace("/opt/dicom-archive/bin/dicom-archive", str(binary))
    copy = tmp_path / "dicom-archive.service"
    copy.write_text(text)
    return copy


def test_unit_verifies(unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "dicom-archive.service" not in result.stderr, result.stderr


def test_unit_security_exposure_is_under_the_threshold(unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--threshold={THRESHOLD}", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


@pytest.fixture(params=[NETWORK_DROP_IN, WEB_DROP_IN], ids=["dicom", "web"])
def networked_unit(unit: Path, request: pytest.FixtureRequest) -> Path:
    """The unit as systemd sees it with a network drop-in: its [Service] lines appended."""
    drop_in = request.param.read_text().split("[Service]", 1)[1]
    text = unit.read_text().replace("[Install]", drop_in.strip() + "\n\n[Install]")
    unit.write_text(text)
    return unit


def test_the_network_drop_in_verifies_and_stays_hardened(networked_unit: Path) -> None:
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(networked_unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0, verified.stderr
    scored = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            f"--threshold={NETWORK_THRESHOLD}",
            str(networked_unit),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert scored.returncode == 0, scored.stdout[-2000:] + scored.stderr


def test_unit_has_the_essentials() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "WatchdogSec=",
        "StateDirectory=",
        "ProtectSystem=strict",
        "ReadWritePaths=",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_UNIX",
        "ExecReload=",
    ):
        assert line in text, line
