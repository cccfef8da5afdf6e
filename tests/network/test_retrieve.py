"""C-GET, C-MOVE and `send`: archived bytes go out exactly as stored."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.transport import ThreadedAssociationServer

from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.integrity import check_archive
from dicom_archive.archive.store import init_archive, open_archive
from dicom_archive.cli import main
from dicom_archive.network.server import DicomServer
from dicom_archive.network.settings import DicomSettings, Peer
from tests.factory import dataset_bytes, new_uid, write_instance

needs_dcmtk = pytest.mark.skipif(shutil.which("getscu") is None, reason="DCMTK not installed")


def _digests(root: Path) -> dict[str, str]:
    """SOP Instance UID -> SHA-256 of each archived file's data set."""
    with open_archive(root) as archive:
        rows = archive.index.connection.execute(
            "SELECT sop_instance_uid, file_path FROM instances"
        ).fetchall()
    return {uid: hashlib.sha256(dataset_bytes(root / path)).hexdigest() for uid, path in rows}


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, str]:
    """An archive holding one study of three CT instances (and one other study)."""
    root = tmp_path / "archive"
    uid = new_uid()
    files = [write_instance(tmp_path / "in" / f"{n}.dcm", StudyInstanceUID=uid, InstanceNumber=n)
             for n in range(3)]  # fmt: skip
    files.append(write_instance(tmp_path / "in" / "other.dcm"))
    with init_archive(root) as archive:
        assert {o.outcome.value for o in import_paths(archive, files)} == {"imported"}
    return root, uid


def _settings(destination_port: int = 0) -> DicomSettings:
    return DicomSettings(
        port=0,
        peers=(Peer("GETSCU", "127.0.0.1", 0), Peer("DEST", "127.0.0.1", destination_port)),
    )


class _Receiver:
    """A storage SCP on loopback that keeps what it receives, bytes as sent."""

    def __init__(self) -> None:
        self.received: dict[str, bytes] = {}
        ae = AE(ae_title="DEST")
        ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.server: ThreadedAssociationServer = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def _on_store(self, event: Any) -> int:
        try:  # the listener under test turns on pynetdicom's chunked receive
            data = Path(event.dataset_path).read_bytes()
        except (AttributeError, ValueError):
            data = event.encoded_dataset()
        self.received[str(event.request.AffectedSOPInstanceUID)] = data
        return 0x0000


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    running = _Receiver()
    yield running
    running.server.shutdown()


def _query(level: str, **keys: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return identifier


def _archived_bodies(root: Path) -> dict[str, bytes]:
    """Each archived file without its 128-byte preamble: what a Part 10 writer of the
    received data set reproduces when the meta is the same."""
    with open_archive(root) as archive:
        rows = archive.index.connection.execute(
            "SELECT sop_instance_uid, file_path FROM instances"
        ).fetchall()
    return {uid: (root / path).read_bytes() for uid, path in rows}


def test_c_get_sends_every_instance_of_the_study(study: tuple[Path, str]) -> None:
    root, uid = study
    received: dict[str, Dataset] = {}

    def on_store(event: Any) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = event.dataset
        return 0x0000

    with DicomServer(root, _settings()) as server:
        ae = AE(ae_title="GETSCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOM_ARCHIVE",
                             ext_neg=[build_role(CTImageStorage, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
        responses = list(assoc.send_c_get(_query("STUDY", StudyInstanceUID=uid),
                                          StudyRootQueryRetrieveInformationModelGet))  # fmt: skip
        assoc.release()
    final = responses[-1][0]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 3
    assert len(received) == 3
    assert {str(ds.StudyInstanceUID) for ds in received.values()} == {uid}


def test_c_move_sends_the_stored_bytes_to_a_configured_destination(
    study: tuple[Path, str], receiver: _Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    root, uid = study
    caplog.set_level(logging.DEBUG, logger="pynetdicom")
    with DicomServer(root, _settings(receiver.port)) as server:
        ae = AE(ae_title="GETSCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOM_ARCHIVE")
        responses = list(assoc.send_c_move(_query("STUDY", StudyInstanceUID=uid), "DEST",
                                           StudyRootQueryRetrieveInformationModelMove))  # fmt: skip
        unknown = list(assoc.send_c_move(_query("STUDY", StudyInstanceUID=uid), "NOWHERE",
                                         StudyRootQueryRetrieveInformationModelMove))  # fmt: skip
        no_key = list(assoc.send_c_move(_query("STUDY", StudyInstanceUID=""), "DEST",
                                        StudyRootQueryRetrieveInformationModelMove))  # fmt: skip
        assoc.release()
    assert responses[-1][0].Status == 0x0000
    archived = _archived_bodies(root)
    assert set(receiver.received) == {u for u in archived if u in receiver.received}
    assert len(receiver.received) == 3
    for sop, body in receiver.received.items():
        # The destination got the archived data set byte for byte (the meta it writes
        # itself may differ: compare from the end of each file meta).
        assert archived[sop].endswith(body[body.index(b"\xe0\x7f\x10\x00") :]), sop
    assert unknown[-1][0].Status == 0xA801
    assert 0xC000 <= no_key[-1][0].Status <= 0xCFFF  # unable to process
    # A refusal is a one-line answer, not a traceback of ours in pynetdicom's log.
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if "must yield" in r.getMessage()]


def test_send_copies_a_study_into_another_archive_byte_for_byte(
    study: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """archive -> send -> a second archive's listener: identical files, clean check."""
    root, uid = study
    other = tmp_path / "other"
    init_archive(other).close()
    with DicomServer(other, DicomSettings(port=0, peers=(Peer("DICOM_ARCHIVE", "127.0.0.1", 0),),
                                          ae_title="OTHER")) as server:  # fmt: skip
        code = main(["send", "-a", str(root), "--to", "OTHER", "--study-uid", uid,
                     "--peer", f"OTHER=127.0.0.1:{server.port}"])  # fmt: skip
    assert code == 0
    assert "3 sent, 0 failed" in capsys.readouterr().out
    ours, theirs = _digests(root), _digests(other)
    assert len(theirs) == 3 and all(ours[sop] == digest for sop, digest in theirs.items())
    with open_archive(other) as archive:
        assert check_archive(archive, verify_files=True).clean
    assert main(["send", "-a", str(root), "--to", "OTHER", "--study-uid", "1.2.3",
                 "--peer", "OTHER=127.0.0.1:1"]) == 1  # fmt: skip


@needs_dcmtk
def test_dcmtk_getscu_receives_the_archived_data_sets(
    study: tuple[Path, str], tmp_path: Path
) -> None:
    root, uid = study
    out = tmp_path / "got"
    out.mkdir()
    with DicomServer(root, _settings()) as server:
        result = subprocess.run(
            ["getscu", "-aet", "GETSCU", "-aec", "DICOM_ARCHIVE", "-S", "-k",
             "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}", "-od", str(out),
             "127.0.0.1", str(server.port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = sorted(out.iterdir())
    assert len(got) == 3, result.stderr
    archived = _archived_bodies(root)
    for path in got:
        body = path.read_bytes()
        pixels = body.index(b"\xe0\x7f\x10\x00")
        assert any(a.endswith(body[pixels:]) for a in archived.values()), path.name
