"""The DICOMweb face as real processes: `dicom-archive web`, and the daemon's [web] table."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

from dicom_archive.archive.store import init_archive
from tests.factory import write_instance
from tests.integration.daemon_harness import DaemonProcess, wait_until


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    def up() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}")
        try:
            requests.get(url, timeout=1)
            return True
        except requests.ConnectionError:
            return False

    wait_until(up, 30, url)


@pytest.fixture
def web_process(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    archive = tmp_path / "archive"
    init_archive(archive).close()
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicom_archive", "web", "-a", str(archive), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/studies", proc)
        yield url, archive, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


def test_web_command_serves_store_search_retrieve(
    web_process: tuple[str, Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """curl stores a file; dicomweb-client finds it and gets its bytes back; SIGTERM
    stops the server with exit code 0."""
    url, _archive, proc = web_process
    source = Path(get_testdata_file("CT_small.dcm"))
    done = subprocess.run(
        ["curl", "-sS", "-X", "POST", "-H",
         'Content-Type: multipart/related; type="application/dicom"; boundary=XX',
         "--data-binary", "@-", f"{url}/studies"],
        input=b"--XX\r\nContent-Type: application/dicom\r\n\r\n" + source.read_bytes()
        + b"\r\n--XX--\r\n",
        capture_output=True, check=True,
    )  # fmt: skip
    assert b"00081199" in done.stdout
    client = DICOMwebClient(url)
    [study] = client.search_for_studies(search_filters={"PatientName": "CompressedSamples*"})
    uid = study["0020000D"]["Value"][0]
    [instance] = client.retrieve_study(uid)
    assert instance.SOPInstanceUID == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_web_command_refuses_a_taken_port_and_an_open_bind(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    init_archive(archive).close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "dicom_archive", "web", "-a", str(archive), "-p", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert done.stderr.count("\n") == 1
    exposed = subprocess.run(
        [sys.executable, "-m", "dicom_archive", "web", "-a", str(archive), "--bind", "0.0.0.0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert exposed.returncode == 2 and "not a loopback address" in exposed.stderr


def test_hash_password_prints_a_usable_hash() -> None:
    from dicom_archive.web.settings import verify_password

    done = subprocess.run(
        [sys.executable, "-m", "dicom_archive", "web", "--hash-password"],
        input="tr0ub4dor\n", capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    encoded = done.stdout.strip()
    assert encoded.startswith("pbkdf2_sha256$") and verify_password("tr0ub4dor", encoded)


def test_the_daemon_serves_dicomweb_and_status_shows_it(tmp_path: Path) -> None:
    """A file dropped into incoming is found over QIDO-RS; `status` shows the URL."""
    port = _free_port()
    daemon = DaemonProcess(tmp_path, web={"port": port})
    try:
        daemon.start()
        url = f"http://127.0.0.1:{port}"
        write_instance(tmp_path / "staging" / "a.dcm", PatientName="WEB^DAEMON")
        shutil.move(tmp_path / "staging" / "a.dcm", daemon.incoming / "a.dcm")
        daemon.wait_archived(1)
        found = DICOMwebClient(url).search_for_studies(search_filters={"PatientName": "WEB*"})
        assert len(found) == 1

        def status() -> str:
            return subprocess.run(
                [sys.executable, "-m", "dicom_archive", "status", "-a", str(daemon.archive)],
                capture_output=True, text=True,
            ).stdout  # fmt: skip

        shown = wait_until(lambda: "DICOMweb:" in status() and status(), 20, "status")
        assert f"DICOMweb:     {url} (auth none)" in shown
        assert daemon.stop() == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/studies", timeout=2)
    finally:
        daemon.close()


def test_the_daemon_refuses_a_taken_web_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = DaemonProcess(tmp_path, web={"port": port})
        try:
            daemon.start(wait_ready=False)
            assert daemon.proc is not None
            code = daemon.proc.wait(30)
            assert code == 2
            time.sleep(0.1)
            assert f"cannot listen on 127.0.0.1:{port}" in daemon.log_text()
        finally:
            daemon.close()
