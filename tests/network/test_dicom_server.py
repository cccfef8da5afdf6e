"""The archive on the DICOM network: C-ECHO, C-STORE through the importer, C-FIND."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from dicom_archive.archive.integrity import check_archive
from dicom_archive.archive.store import init_archive, open_archive
from dicom_archive.network.server import DicomServer
from dicom_archive.network.settings import DicomSettings, Peer
from tests.factory import (
    CT_IMAGE_STORAGE,
    dataset_bytes,
    iter_pydicom_files,
    make_instance,
    new_uid,
    write_dataset,
)

DCMTK = shutil.which("storescu") is not None
needs_dcmtk = pytest.mark.skipif(not DCMTK, reason="DCMTK not installed (apt-get install dcmtk)")


@pytest.fixture
def archive_root(tmp_path: Path) -> Path:
    init_archive(tmp_path / "archive").close()
    return tmp_path / "archive"


def _settings(**overrides: object) -> DicomSettings:
    values: dict[str, object] = {
        "port": 0,
        "peers": (
            Peer("STORESCU", "127.0.0.1", 0),
            Peer("FINDSCU", "127.0.0.1", 0),
            Peer("ECHOSCU", "127.0.0.1", 0),
            Peer("TESTSCU", "127.0.0.1", 0),
        ),
    }
    values.update(overrides)
    return DicomSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def server(archive_root: Path) -> Iterator[DicomServer]:
    with DicomServer(archive_root, _settings()) as running:
        yield running


def _associate(server: DicomServer, *contexts: str, ae_title: str = "TESTSCU") -> object:
    ae = AE(ae_title=ae_title)
    for context in contexts:
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOM_ARCHIVE")
    return assoc


def _store(server: DicomServer, *datasets: Dataset) -> list[int]:
    """Send over one association in Explicit VR Little Endian, as the factory writes."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    for ds in datasets:
        if "file_meta" not in ds.__dict__ or "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOM_ARCHIVE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _find_responses(
    port: int, model: str, ae_title: str = "FINDSCU", **keys: object
) -> list[tuple[int, Dataset | None]]:
    """(status, identifier) of every response to one C-FIND."""
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_ARCHIVE")
    assert assoc.is_established
    query = Dataset()
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    try:
        return [(int(status.Status), found) for status, found in assoc.send_c_find(query, model)]
    finally:
        assoc.release()


def _find(server: DicomServer, model: str, **keys: object) -> list[Dataset]:
    """The matches of a C-FIND that must succeed."""
    responses = _find_responses(server.port, model, **keys)
    assert responses[-1][0] == 0x0000, hex(responses[-1][0])
    return [found for status, found in responses if status in (0xFF00, 0xFF01) and found]


# -- echo and store -----------------------------------------------------------------


def test_a_known_peer_echoes_and_an_unknown_one_is_refused(server: DicomServer) -> None:
    assoc = _associate(server, Verification, ae_title="ECHOSCU")
    assert assoc.is_established  # type: ignore[attr-defined]
    assert assoc.send_c_echo().Status == 0  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    stranger = _associate(server, Verification, ae_title="STRANGER")
    assert stranger.is_rejected  # type: ignore[attr-defined]


def test_a_stored_instance_is_durable_when_success_arrives(
    server: DicomServer, archive_root: Path
) -> None:
    """Success is only answered after the row is committed: another connection sees it
    at once, and the file holds the bytes that were sent."""
    ds = make_instance(PatientName="Network^Nora", PatientID="NET1")
    write_dataset(ds, archive_root.parent / "sent.dcm")
    assert _store(server, ds) == [0x0000]
    db = sqlite3.connect(archive_root / "archive.db")
    row = db.execute(
        "SELECT file_path FROM instances WHERE sop_instance_uid = ?", (ds.SOPInstanceUID,)
    ).fetchone()
    db.close()
    assert row is not None
    assert dataset_bytes(archive_root / row[0]) == dataset_bytes(archive_root.parent / "sent.dcm")


def test_identical_resend_succeeds_and_a_conflict_fails_without_overwriting(
    server: DicomServer, archive_root: Path
) -> None:
    ds = make_instance()
    assert _store(server, ds, ds) == [0x0000, 0x0000]
    changed = make_instance(SOPInstanceUID=ds.SOPInstanceUID, PatientName="Other^Name")
    assert _store(server, changed) == [0xC001]
    with open_archive(archive_root) as archive:
        assert archive.index.instance_count() == 1
        assert check_archive(archive, verify_files=True).clean


def test_a_dataset_without_its_uids_is_refused_and_the_listener_goes_on(
    server: DicomServer, archive_root: Path
) -> None:
    broken = make_instance(StudyInstanceUID=None)
    assert _store(server, broken, make_instance()) == [0xC002, 0x0000]
    with open_archive(archive_root) as archive:
        assert archive.index.instance_count() == 1


def test_four_senders_at_once_all_land_once(server: DicomServer, archive_root: Path) -> None:
    batches = [[make_instance(InstanceNumber=n) for n in range(25)] for _ in range(4)]
    results: list[list[int]] = []
    threads = [
        threading.Thread(target=lambda b=b: results.append(_store(server, *b))) for b in batches
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [[0] * 25] * 4
    with open_archive(archive_root) as archive:
        assert archive.index.instance_count() == 100
        assert check_archive(archive).clean
    assert server.committer.batches <= 100


def test_store_from_anyone_stores_but_never_answers_queries(archive_root: Path) -> None:
    with DicomServer(archive_root, _settings(peers=(), store_from_anyone=True)) as open_door:
        assert _store(open_door, make_instance(PatientID="ANY")) == [0x0000]
        responses = _find_responses(
            open_door.port,
            StudyRootQueryRetrieveInformationModelFind,
            ae_title="NOBODY",
            QueryRetrieveLevel="STUDY",
            StudyInstanceUID="",
        )
    statuses = [status for status, _ in responses]
    assert statuses == [0x0124]


# -- find ----------------------------------------------------------------------------


@pytest.fixture
def filled(server: DicomServer) -> dict[str, str]:
    """Two patients, three studies; returns names to study UIDs."""
    uids = {"jan": new_uid(), "jan2": new_uid(), "legacy": new_uid()}
    series = new_uid()
    datasets = [
        make_instance(
            PatientName="Citizen^Jan",
            PatientID="P1",
            StudyInstanceUID=uids["jan"],
            SeriesInstanceUID=series,
            Modality="CT",
            InstanceNumber=n,
        )
        for n in (1, 2)
    ]
    datasets.append(
        make_instance(
            PatientName="Burger^Jan",
            PatientID="P1",
            StudyInstanceUID=uids["jan2"],
            Modality="MR",
            StudyDate="20240301",
        )
    )
    datasets.append(
        make_instance(
            PatientName="Müller^Jörg",
            PatientID="P2",
            StudyInstanceUID=uids["legacy"],
            StudyDate="1994.11.05",
            StudyTime="101500",
            Modality="US",
        )
    )
    assert set(_store(server, *datasets)) == {0}
    uids["series"] = series
    return uids


def test_study_level_wildcard_is_case_insensitive_and_answers_counts(
    server: DicomServer, filled: dict[str, str]
) -> None:
    found = _find(
        server,
        StudyRootQueryRetrieveInformationModelFind,
        QueryRetrieveLevel="STUDY",
        PatientName="citizen*",
        StudyInstanceUID="",
        ModalitiesInStudy="",
        NumberOfStudyRelatedInstances="",
        NumberOfStudyRelatedSeries="",
        AccessionNumber="",
    )
    assert len(found) == 1
    (study,) = found
    assert study.StudyInstanceUID == filled["jan"]
    assert study.PatientName == "Citizen^Jan"
    assert study.ModalitiesInStudy == "CT"
    assert int(study.NumberOfStudyRelatedInstances) == 2
    assert int(study.NumberOfStudyRelatedSeries) == 1
    assert study.AccessionNumber == "ACC001"
    assert study.SpecificCharacterSet == "ISO_IR 192"


def test_date_ranges_find_legacy_dates_and_uid_lists_match_each(
    server: DicomServer, filled: dict[str, str]
) -> None:
    by_range = _find(
        server,
        StudyRootQueryRetrieveInformationModelFind,
        QueryRetrieveLevel="STUDY",
        StudyDate="19940101-19941231",
        StudyInstanceUID="",
        PatientName="",
    )
    assert [(s.StudyInstanceUID, str(s.PatientName), s.StudyDate) for s in by_range] == [
        (filled["legacy"], "Müller^Jörg", "19941105")
    ]
    by_list = _find(
        server,
        StudyRootQueryRetrieveInformationModelFind,
        QueryRetrieveLevel="STUDY",
        StudyInstanceUID=f"{filled['jan']}\\{filled['legacy']}",
    )
    assert {s.StudyInstanceUID for s in by_list} == {filled["jan"], filled["legacy"]}
    by_time = _find(
        server,
        StudyRootQueryRetrieveInformationModelFind,
        QueryRetrieveLevel="STUDY",
        StudyTime="1000-1100",
        StudyInstanceUID="",
    )
    assert {s.StudyInstanceUID for s in by_time} == {
        filled["legacy"],
        filled["jan"],
        filled["jan2"],
    }


def test_patient_root_levels_down_to_images(server: DicomServer, filled: dict[str, str]) -> None:
    patients = _find(
        server,
        PatientRootQueryRetrieveInformationModelFind,
        QueryRetrieveLevel="PATIENT",
        PatientID="P1",
        PatientName="",
        NumberOfPatientRelatedStudies="",
    )
    assert sorted((str(p.PatientName), int(p.NumberOfPatientRelatedStudies)) for p in patients) == [
        ("Burger^Jan", 1),
        ("Citizen^Jan", 1),
    ]
    series = _find(
        server,
        PatientRootQueryRetrieveInformationModelFind,
        QueryRetrieveLevel="SERIES",
        PatientID="P1",
        StudyInstanceUID=filled["jan"],
        SeriesInstanceUID="",
        Modality="",
        NumberOfSeriesRelatedInstances="",
    )
    assert [
        (s.SeriesInstanceUID, s.Modality, int(s.NumberOfSeriesRelatedInstances)) for s in series
    ] == [(filled["series"], "CT", 2)]
    images = _find(
        server,
        StudyRootQueryRetrieveInformationModelFind,
        QueryRetrieveLevel="IMAGE",
        StudyInstanceUID=filled["jan"],
        SeriesInstanceUID=filled["series"],
        SOPInstanceUID="",
        InstanceNumber="",
    )
    assert [int(i.InstanceNumber) for i in images] == [1, 2]


def test_a_malformed_date_gets_a_failure_status_not_a_crash(
    server: DicomServer, filled: dict[str, str]
) -> None:
    responses = _find_responses(
        server.port,
        StudyRootQueryRetrieveInformationModelFind,
        QueryRetrieveLevel="STUDY",
        StudyDate="2024-13-45",
    )
    statuses = [status for status, _ in responses]
    assert statuses[-1] == 0xC000
    assert _find(
        server,
        StudyRootQueryRetrieveInformationModelFind,
        QueryRetrieveLevel="STUDY",
        StudyInstanceUID=filled["jan"],
    )


# -- real peers ----------------------------------------------------------------------


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, check=False
    )
    return probe.returncode == 0


def _what_storescu_sends(folder: Path, out: Path) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> SHA-256 of the data set bytes storescu puts on the wire for
    each file, as DCMTK's own storescp records them in bit-preserving mode. storescp
    has no bind option, so both run in a private network namespace."""
    out.mkdir()
    script = (
        "ip link set lo up && "
        f"(storescp +B +xe -aet ORACLE -od {out} 11190 & echo $! > {out}/.pid) && sleep 1 && "
        f"storescu -aec ORACLE +sd -nh 127.0.0.1 11190 {folder}; "
        f"kill $(cat {out}/.pid)"
    )
    subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, timeout=120)
    received = {}
    for path in out.iterdir():
        if path.name.startswith("."):
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        received[str(ds.SOPInstanceUID)] = (
            str(ds.file_meta.TransferSyntaxUID),
            hashlib.sha256(dataset_bytes(path)).hexdigest(),
        )
    return received


@needs_dcmtk
@pytest.mark.skipif(not _can_unshare(), reason="needs unshare -n for DCMTK's storescp oracle")
def test_dcmtk_storescu_of_pydicoms_files_archives_the_bytes_it_sent(
    server: DicomServer, archive_root: Path, tmp_path: Path
) -> None:
    """Interop on files nobody here wrote: every instance storescu sends is archived
    with exactly the data set bytes it sent (the oracle: storescp +B, same files)."""
    folder = tmp_path / "send"
    folder.mkdir()
    sources: dict[str, Path] = {}
    for n, path in enumerate(iter_pydicom_files()):
        try:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        except Exception:
            continue
        if uid not in sources:  # pydicom ships some UIDs in several encodings
            sources[uid] = shutil.copy(path, folder / f"{n}.dcm")
    sent = _what_storescu_sends(folder, tmp_path / "oracle")
    result = subprocess.run(
        [
            "storescu",
            "-aet",
            "STORESCU",
            "-aec",
            "DICOM_ARCHIVE",
            "+sd",
            "-nh",
            "127.0.0.1",
            str(server.port),
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Association Rejected" not in result.stderr
    with open_archive(archive_root) as archive:
        rows = {
            uid: (path, syntax)
            for uid, path, syntax in archive.index.connection.execute(
                "SELECT sop_instance_uid, file_path, transfer_syntax_uid FROM instances"
            )
        }
    assert len(sent) >= 80, "the oracle received too little"
    assert set(rows) == set(sent)
    ours = {
        uid: (syntax, hashlib.sha256(dataset_bytes(archive_root / path)).hexdigest())
        for uid, (path, syntax) in rows.items()
    }
    # Where the two receivers negotiated the same transfer syntax storescu sent the
    # same bytes to both; where we kept the file's own encoding (storescp prefers to
    # have it converted), what we hold is the file's own data set.
    for uid, (syntax, digest) in ours.items():
        if syntax == sent[uid][0]:
            assert digest == sent[uid][1], uid
        else:
            assert digest == hashlib.sha256(dataset_bytes(sources[uid])).hexdigest(), uid


@needs_dcmtk
def test_dcmtk_findscu_and_echoscu_get_answers(server: DicomServer, filled: dict[str, str]) -> None:
    echo = subprocess.run(
        ["echoscu", "-aet", "ECHOSCU", "-aec", "DICOM_ARCHIVE", "127.0.0.1", str(server.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert echo.returncode == 0, echo.stderr
    found = subprocess.run(
        [
            "findscu",
            "-aet",
            "FINDSCU",
            "-aec",
            "DICOM_ARCHIVE",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "PatientName=BURGER*",
            "-k",
            "StudyInstanceUID",
            "-k",
            "ModalitiesInStudy",
            "127.0.0.1",
            str(server.port),
        ],
        capture_output=True,
        timeout=30,
    )
    output = found.stderr.decode("utf-8", "replace") + found.stdout.decode("utf-8", "replace")
    assert found.returncode == 0, output
    assert filled["jan2"] in output and "[MR]" in output and "Citizen" not in output
