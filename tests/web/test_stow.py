"""STOW-RS through dicomweb-client and raw HTTP, including hostile bodies."""

from __future__ import annotations

import http.client
import io
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests

from dicom_archive.archive.store import init_archive, open_archive
from tests.factory import make_instance, new_uid, write_dataset
from tests.web.conftest import Served, serve, stop_and_check

BOUNDARY = "stow-test-boundary"


@pytest.fixture
def empty(tmp_path: Path) -> Iterator[Served]:
    root = tmp_path / "archive"
    init_archive(root).close()
    server = serve(root, max_upload_bytes=2 * 1024 * 1024)
    try:
        yield Served(root, server, server.url, [])
    finally:
        stop_and_check(server)


def _file_bytes(tmp_path: Path, **overrides: object) -> bytes:
    path = write_dataset(make_instance(**overrides), tmp_path / f"{new_uid()}.dcm")
    return path.read_bytes()


def _body(parts: list[bytes], content_type: str = "application/dicom") -> bytes:
    out = b""
    for data in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _post(url: str, body: bytes, content_type: str | None = None) -> requests.Response:
    content_type = (
        content_type or f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    )
    return requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=60)


def _instances(root: Path) -> list[str]:
    with open_archive(root) as archive:
        return [
            r[0] for r in archive.index.connection.execute("SELECT sop_instance_uid FROM instances")
        ]


def _tmp_is_empty(root: Path) -> bool:
    return not any((root / "tmp").iterdir())


def test_store_instances_with_dicomweb_client(empty: Served) -> None:
    """Stored instances are archived, searchable, and come back with the same data set."""
    study = new_uid()
    datasets = [make_instance(StudyInstanceUID=study, InstanceNumber=n) for n in range(1, 6)]
    for ds in datasets:
        write_dataset(ds, empty.root.parent / "x.dcm")  # gives it file meta
    client = empty.client()
    response = client.store_instances(datasets)
    referenced = response.ReferencedSOPSequence
    assert [item.ReferencedSOPInstanceUID for item in referenced] == [
        d.SOPInstanceUID for d in datasets
    ]
    assert "FailedSOPSequence" not in response
    assert response.RetrieveURL == f"{empty.url}/studies/{study}"
    assert sorted(_instances(empty.root)) == sorted(d.SOPInstanceUID for d in datasets)
    back = client.retrieve_instance(
        study, datasets[0].SeriesInstanceUID, datasets[0].SOPInstanceUID
    )
    assert back.PatientName == datasets[0].PatientName and back.PixelData == datasets[0].PixelData
    assert _tmp_is_empty(empty.root)


def test_duplicates_succeed_and_conflicts_fail(empty: Served, tmp_path: Path) -> None:
    sop = new_uid()
    original = _file_bytes(tmp_path, SOPInstanceUID=sop, PatientID="A")
    assert _post(f"{empty.url}/studies", _body([original])).status_code == 200
    again = _post(f"{empty.url}/studies", _body([original]))
    assert again.status_code == 200  # identical bytes: stored already, nothing changes
    other = _file_bytes(tmp_path, SOPInstanceUID=sop, PatientID="B")
    conflict = _post(f"{empty.url}/studies", _body([other]))
    assert conflict.status_code == 409
    failed = conflict.json()["00081198"]["Value"][0]
    assert failed["00081155"]["Value"] == [sop]
    assert failed["00081197"]["Value"] == [0x0110]
    with open_archive(empty.root) as archive:
        stored = archive.index.find_instance(sop)
        assert stored is not None
        assert (empty.root / stored.file_path).read_bytes() == original


def test_an_instance_of_another_study_is_refused(empty: Served, tmp_path: Path) -> None:
    study = new_uid()
    mine = _file_bytes(tmp_path, StudyInstanceUID=study)
    foreign = _file_bytes(tmp_path)
    response = _post(f"{empty.url}/studies/{study}", _body([mine, foreign]))
    assert response.status_code == 202
    body = response.json()
    assert len(body["00081199"]["Value"]) == 1
    [failed] = body["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA900]
    assert len(_instances(empty.root)) == 1
    alone = _post(f"{empty.url}/studies/{study}", _body([foreign]))
    assert alone.status_code == 409


def test_parts_that_are_not_dicom(empty: Served, tmp_path: Path) -> None:
    good = _file_bytes(tmp_path)
    response = _post(f"{empty.url}/studies", _body([b"not dicom at all", good]))
    assert response.status_code == 202
    [failed] = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    json_part = _post(f"{empty.url}/studies", _body([b"{}"], "application/json"))
    assert json_part.status_code == 409
    assert _tmp_is_empty(empty.root)


@pytest.mark.parametrize(
    "body, content_type, status",
    [
        (b"--stow-test-boundary\r\nContent-Type: application/dicom\r\n\r\nabc", None, 400),
        (b"no boundary anywhere", None, 400),
        (b"--stow-test-boundary--\r\n", None, 400),
        (
            b"--stow-test-boundary\r\nbroken header line\r\n\r\nx\r\n--stow-test-boundary--",
            None,
            400,
        ),
        (b"--x\r\n\r\n\r\n--x--", "multipart/related; type=application/dicom", 400),
        (b"whatever", "application/dicom", 415),
        (b"whatever", "multipart/related; type=application/dicom+json; boundary=b", 415),
    ],
)
def test_malformed_bodies_are_refused_with_a_reason(
    empty: Served, body: bytes, content_type: str | None, status: int
) -> None:
    response = _post(f"{empty.url}/studies", body, content_type)
    assert response.status_code == status
    assert response.text.count("\n") == 1 and "Traceback" not in response.text
    assert _instances(empty.root) == [] and _tmp_is_empty(empty.root)


def test_a_declared_huge_upload_is_refused_before_reading(empty: Served) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", empty.server.port, timeout=30)
    connection.putrequest("POST", "/studies")
    connection.putheader(
        "Content-Type", f"multipart/related; type=application/dicom; boundary={BOUNDARY}"
    )
    connection.putheader("Content-Length", str(50 * 1024**3))
    connection.endheaders()
    connection.send(b"--" + BOUNDARY.encode() + b"\r\n\r\n" + b"\0" * 1024)
    response = connection.getresponse()
    assert response.status == 413
    assert b"exceeds 2 MB" in response.read()
    connection.close()


def test_a_streamed_upload_over_the_limit_stops_with_flat_memory(empty: Served) -> None:
    """Chunked, no length: the server reads 2 MB, answers 413, keeps no spool file."""

    def chunks() -> Iterator[bytes]:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        for _ in range(64):  # 64 MB if it were all read
            yield b"\0" * (1024 * 1024)

    try:
        response = requests.post(
            f"{empty.url}/studies",
            data=chunks(),
            headers={
                "Content-Type": f"multipart/related; type=application/dicom; boundary={BOUNDARY}"
            },
            timeout=60,
        )
        assert response.status_code == 413
    except requests.ConnectionError:
        pass  # the server may close while we are still sending: also a refusal
    assert _instances(empty.root) == [] and _tmp_is_empty(empty.root)


def test_large_parts_stream_through(tmp_path: Path) -> None:
    """A 40 MB instance in a 64 MB limit: archived byte for byte."""
    root = tmp_path / "archive"
    init_archive(root).close()
    server = serve(root, max_upload_bytes=64 * 1024 * 1024)
    try:
        pixels = bytes(range(256)) * (2048 * 10240 * 2 // 256)
        ds = make_instance(rows=2048, columns=10240, PixelData=pixels)
        data = write_dataset(ds, tmp_path / "big.dcm").read_bytes()
        assert len(data) > 40 * 1024 * 1024
        response = _post(f"{server.url}/studies", _body([data]))
        assert response.status_code == 200
        with open_archive(root) as archive:
            stored = archive.index.find_instance(ds.SOPInstanceUID)
            assert stored is not None and (root / stored.file_path).read_bytes() == data
        assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == ds.SOPInstanceUID
    finally:
        stop_and_check(server)
