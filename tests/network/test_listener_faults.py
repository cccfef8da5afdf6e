"""The listener under hostile and failing conditions: it answers, or refuses, and lives."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_archive.archive.integrity import check_archive
from dicom_archive.archive.store import init_archive, open_archive
from dicom_archive.network.server import DicomServer
from dicom_archive.network.settings import DicomSettings, Peer
from tests.factory import CT_IMAGE_STORAGE, make_instance, write_instance
from tests.reliability.test_daemon_faults import mount_tmpfs, resize

PEERS = (Peer("SENDER", "127.0.0.1", 0),)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DicomServer]:
    init_archive(tmp_path / "archive").close()
    with DicomServer(
        tmp_path / "archive", DicomSettings(port=0, peers=PEERS, max_associations=4)
    ) as running:
        yield running


def _echo(port: int) -> int:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_ARCHIVE")
    if not assoc.is_established:
        return -1
    status = int(assoc.send_c_echo().Status)
    assoc.release()
    return status


def _store(port: int, *datasets: object) -> list[int]:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_ARCHIVE")
    assert assoc.is_established
    statuses = []
    for ds in datasets:
        ds.file_meta = FileMetaDataset()  # type: ignore[attr-defined]
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # type: ignore[attr-defined]
        statuses.append(int(assoc.send_c_store(ds).Status))
    assoc.release()
    return statuses


def test_garbage_and_half_pdus_leave_the_listener_answering(server: DicomServer) -> None:
    for payload in (
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x01\x00\x00\x00\xff\xff\xff\xff" + b"x" * 64,
        os.urandom(4096),
        b"\x04\x00\x00\x00\x00\x10",
    ):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(payload)
            raw.settimeout(5)
            try:
                raw.recv(1024)
            except (TimeoutError, ConnectionResetError):
                pass
    # Each dropped connection frees its slot as soon as the listener sees it close.
    deadline = time.monotonic() + 15
    while _echo(server.port) != 0:
        assert time.monotonic() < deadline, "the listener stopped answering"
        time.sleep(0.2)


def test_an_association_flood_is_bounded_and_the_listener_survives(server: DicomServer) -> None:
    """Sixty associations at once against a limit of four: the excess is refused, and
    once they go, a new caller is served."""
    held = []
    refused = 0
    for _ in range(60):
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOM_ARCHIVE")
        if assoc.is_established:
            held.append(assoc)
        else:
            refused += 1
    assert len(held) <= 4 and refused >= 56
    for assoc in held:
        assoc.release()
    time.sleep(0.5)
    assert _echo(server.port) == 0


@pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed")
def test_a_sender_killed_mid_instance_leaves_nothing_half_archived(
    server: DicomServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """storescu is SIGKILLed while a 128 MB instance is on the wire (its first megabytes
    have reached the listener's spool file): nothing was acknowledged, nothing is
    archived, no temporary is left, the listener goes on."""
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where pynetdicom receives
    big = write_instance(tmp_path / "big.dcm", rows=8192, columns=8192)
    sender = subprocess.Popen(
        [
            "storescu",
            "-aet",
            "SENDER",
            "-aec",
            "DICOM_ARCHIVE",
            "--max-send-pdu",
            "16384",
            "127.0.0.1",
            str(server.port),
            str(big),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def receiving() -> bool:
        return any(f.stat().st_size > 1_000_000 for f in spool.glob("*.dcm"))

    deadline = time.monotonic() + 30
    while not receiving():
        assert time.monotonic() < deadline and sender.poll() is None, "nothing arrived"
        time.sleep(0.005)
    sender.send_signal(signal.SIGKILL)
    sender.wait(10)
    received = (
        max(f.stat().st_size for f in spool.glob("*.dcm")) if list(spool.glob("*.dcm")) else 0
    )
    assert received < big.stat().st_size, "the whole instance arrived before the kill"
    time.sleep(0.5)
    with open_archive(server.archive_root) as archive:
        assert archive.index.instance_count() == 0
        assert check_archive(archive).clean
    assert list((server.archive_root / "data").rglob("*.dcm")) == []
    assert _store(server.port, make_instance()) == [0x0000]


def test_a_full_disk_fails_the_store_with_out_of_resources_and_a_resend_works(
    tmp_path: Path,
) -> None:
    root = tmp_path / "archive"
    mount_tmpfs(root, "2m")
    try:
        init_archive(root).close()
        with DicomServer(root, DicomSettings(port=0, peers=PEERS)) as server:
            big = make_instance(rows=1024, columns=1024)  # 2 MB of pixels
            assert _store(server.port, big) == [0xA700]
            with open_archive(root) as archive:
                assert archive.index.instance_count() == 0
                assert check_archive(archive).clean
            resize(root, "16m")
            assert _store(server.port, big) == [0x0000]
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
