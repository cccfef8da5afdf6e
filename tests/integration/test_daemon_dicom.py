"""The daemon's DICOM listener: a real subprocess, real senders, a real SIGKILL."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from dicom_archive.archive.integrity import check_archive
from dicom_archive.archive.store import open_archive
from tests.factory import CT_IMAGE_STORAGE, make_instance
from tests.integration.daemon_harness import DaemonProcess, wait_until


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    port = _free_port()
    process = DaemonProcess(tmp_path, dicom={"port": port, "peers": {"SENDER": "127.0.0.1:0"}})
    process.dicom_port = port  # type: ignore[attr-defined]
    yield process
    process.close()


def _sender(port: int, count: int, acknowledged: list[str], stop: threading.Event) -> None:
    """Store ``count`` new instances, keeping the UID of each one answered Success."""
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_ARCHIVE")
    if not assoc.is_established:
        return
    try:
        for n in range(count):
            if stop.is_set():
                break
            ds = make_instance(InstanceNumber=n)
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            status = assoc.send_c_store(ds)
            if status and status.Status == 0x0000:
                acknowledged.append(str(ds.SOPInstanceUID))
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()


def test_the_daemon_listens_and_status_shows_it(daemon: DaemonProcess) -> None:
    daemon.start()
    port = daemon.dicom_port  # type: ignore[attr-defined]
    acknowledged: list[str] = []
    senders = [
        threading.Thread(target=_sender, args=(port, 20, acknowledged, threading.Event()))
        for _ in range(3)
    ]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(60)
    assert len(acknowledged) == 60
    assert set(daemon.sop_uids()) == set(acknowledged)

    def status() -> str:
        result = subprocess.run(
            [sys.executable, "-m", "dicom_archive", "status", "-a", str(daemon.archive)],
            capture_output=True, text=True,
        )  # fmt: skip
        return result.stdout

    shown = wait_until(lambda: "60 instances received" in status() and status(), 20, "status")
    assert f"DICOM_ARCHIVE on 127.0.0.1:{port}" in shown
    assert daemon.stop() == 0


def test_every_acknowledged_instance_survives_a_sigkill(daemon: DaemonProcess) -> None:
    """Four senders store while the daemon is killed: after a restart every instance
    that was answered Success is archived, once, and check is clean."""
    daemon.start()
    port = daemon.dicom_port  # type: ignore[attr-defined]
    acknowledged: list[str] = []
    stop = threading.Event()
    senders = [threading.Thread(target=_sender, args=(port, 400, acknowledged, stop))
               for _ in range(4)]  # fmt: skip
    for thread in senders:
        thread.start()
    wait_until(lambda: len(acknowledged) >= 40, 60, "some stores acknowledged")
    daemon.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    daemon.proc.wait(10)  # type: ignore[union-attr]
    stop.set()
    for thread in senders:
        thread.join(30)
    before_restart = list(acknowledged)
    assert 40 <= len(before_restart) < 1600
    daemon.start()
    archived = daemon.sop_uids()
    assert set(before_restart) <= set(archived)
    assert len(archived) == len(set(archived))
    assert daemon.stop() == 0
    time.sleep(0.1)
    with open_archive(daemon.archive) as archive:
        assert check_archive(archive, verify_files=True).clean
