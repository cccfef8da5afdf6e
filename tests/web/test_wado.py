"""WADO-RS and WADO-URI through dicomweb-client, requests and curl."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMfileClient
from pydicom.encaps import generate_frames

from dicom_archive.archive.store import open_archive
from dicom_archive.web.metadata import MetadataCache
from tests.factory import write_instance
from tests.web.conftest import Served, import_files


def _rows(root: Path) -> list[tuple[str, str, str, str, str]]:
    with open_archive(root) as archive:
        return archive.index.connection.execute(
            "SELECT st.study_instance_uid, se.series_instance_uid, i.sop_instance_uid, "
            "i.transfer_syntax_uid, i.file_path FROM instances i "
            "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk "
            "ORDER BY i.id"
        ).fetchall()


def _find(root: Path, syntax: str) -> tuple[str, str, str, Path]:
    for study, series, sop, ts, path in _rows(root):
        if ts == syntax:
            return study, series, sop, root / path
    raise LookupError(syntax)


def _parts(response: requests.Response) -> list[tuple[dict[str, str], bytes]]:
    """A multipart/related body split by hand (not by the client under test)."""
    content_type = response.headers["Content-Type"]
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    body = response.content
    chunks = body.split(b"--" + boundary)
    assert chunks[-1].strip() == b"--", "closing delimiter"
    parts = []
    for chunk in chunks[1:-1]:
        head, _, data = chunk[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line)
        parts.append(({k.lower(): v for k, v in headers.items()}, data[:-2]))
    return parts


def test_retrieve_study_gives_the_archived_bytes(served: Served) -> None:
    """Every part of a study retrieval is byte for byte an archived file."""
    client = served.client()
    rows = _rows(served.root)
    study = rows[0][0]
    wanted = {
        hashlib.sha256((served.root / r[4]).read_bytes()).hexdigest() for r in rows if r[0] == study
    }
    response = requests.get(
        f"{served.url}/studies/{study}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=30,
    )
    assert response.status_code == 200
    got = {hashlib.sha256(data).hexdigest() for _, data in _parts(response)}
    assert got == wanted
    datasets = client.retrieve_study(study)
    assert {ds.SOPInstanceUID for ds in datasets} == {r[2] for r in rows if r[0] == study}


def test_retrieve_series_and_instance_with_dicomweb_client(served: Served) -> None:
    client = served.client()
    for study, series, sop, _ts, path in _rows(served.root)[:12]:
        [instance] = [client.retrieve_instance(study, series, sop)]
        assert instance.SOPInstanceUID == sop
        assert instance == pydicom.dcmread(served.root / path)
        assert sop in {ds.SOPInstanceUID for ds in client.retrieve_series(study, series)}


def test_stored_syntax_is_said_in_each_part(served: Served) -> None:
    study, series, sop, path = _find(served.root, "1.2.840.10008.1.2.4.91")
    response = requests.get(
        f"{served.url}/studies/{study}/series/{series}/instances/{sop}", timeout=30
    )
    [(headers, data)] = _parts(response)
    assert headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.91"
    assert data == path.read_bytes()


def test_little_endian_syntaxes_are_transcoded(served: Served) -> None:
    """Implicit VR stored, Explicit VR asked: pydicom rewrites it, same data set."""
    study, series, sop, path = _find(served.root, "1.2.840.10008.1.2")
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
    response = requests.get(
        f"{served.url}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": accept},
        timeout=30,
    )
    assert response.status_code == 200
    [(headers, data)] = _parts(response)
    assert headers["content-type"].endswith("transfer-syntax=1.2.840.10008.1.2.1")
    sent = pydicom.dcmread(io.BytesIO(data))
    assert sent.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    original = pydicom.dcmread(path)
    assert sent.PixelData == original.PixelData and sent.PatientName == original.PatientName


def test_a_syntax_that_needs_decompression_is_406(served: Served) -> None:
    study, series, sop, _ = _find(served.root, "1.2.840.10008.1.2.4.91")
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
    response = requests.get(
        f"{served.url}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": accept},
        timeout=30,
    )
    assert response.status_code == 406
    assert "1.2.840.10008.1.2.4.91" in response.text
    assert (
        requests.get(
            f"{served.url}/studies/{study}", headers={"Accept": "application/json"}, timeout=30
        ).status_code
        == 406
    )


def test_unknown_objects_are_404(served: Served) -> None:
    for path in (
        "/studies/1.2.3",
        "/studies/1.2.3/series/4.5/instances/6.7/frames/1",
        "/studies/1.2.3/metadata",
        "/studies/1.2.3/series/4.5/metadata",
    ):
        response = requests.get(served.url + path, timeout=30)
        assert response.status_code == 404, path
        assert response.text.count("\n") == 1


def _without_bulk(item: Any) -> Any:
    """DICOM JSON with bulk data references dropped (ours are URIs, the oracle's inline)."""
    if isinstance(item, dict):
        if "BulkDataURI" in item or "InlineBinary" in item:
            return {"vr": item.get("vr")}
        return {k: _without_bulk(v) for k, v in item.items()}
    if isinstance(item, list):
        return [_without_bulk(v) for v in item]
    return item


def test_series_metadata_matches_the_file_oracle(served: Served) -> None:
    """For every series: the same attributes with the same DICOM JSON values as
    dicomweb-client's own reading of the archived files."""
    oracle = DICOMfileClient(f"file://{served.root / 'data'}", in_memory=True, update_db=True)
    client = served.client()
    seen = set()
    for study, series, *_ in _rows(served.root):
        if series in seen:
            continue
        seen.add(series)
        ours = {
            m["00080018"]["Value"][0]: m for m in client.retrieve_series_metadata(study, series)
        }
        theirs = {
            m["00080018"]["Value"][0]: m for m in oracle.retrieve_series_metadata(study, series)
        }
        assert set(ours) == set(theirs)
        for sop, item in theirs.items():
            expected = _without_bulk({k: v for k, v in item.items() if not k.startswith("0002")})
            mine = dict(ours[sop])
            # The oracle reads headers only; Pixel Data is ours, as a BulkDataURI.
            pixels = mine.pop("7FE00010", None)
            assert pixels is None or "BulkDataURI" in pixels
            assert _without_bulk(mine) == expected, sop
    assert len(seen) >= 8


def test_bulk_data_uris_resolve(served: Served) -> None:
    study, series, sop, path = _find(served.root, "1.2.840.10008.1.2.1")
    item = served.client().retrieve_instance_metadata(study, series, sop)
    uri = item["7FE00010"]["BulkDataURI"]
    assert uri.startswith(served.url + "/studies/")
    response = requests.get(uri, timeout=30)
    [(headers, data)] = _parts(response)
    assert headers["content-type"] == "application/octet-stream"
    assert data == pydicom.dcmread(path).PixelData
    assert served.client().retrieve_bulkdata(uri) == [data]


def test_native_frames(served: Served) -> None:
    study, series, sop, path = _find(served.root, "1.2.840.10008.1.2")
    ds = pydicom.dcmread(path)
    frames = served.client().retrieve_instance_frames(study, series, sop, [1])
    assert frames == [ds.PixelData]
    # rtdose: 15 frames, implicit VR little endian, 32 bits.
    for study, series, sop, _ts, relative in _rows(served.root):
        ds = pydicom.dcmread(served.root / relative)
        if int(ds.get("NumberOfFrames", 1) or 1) == 15 and "PixelData" in ds:
            size = ds.Rows * ds.Columns * ds.BitsAllocated // 8
            got = served.client().retrieve_instance_frames(study, series, sop, [2, 15])
            assert got == [ds.PixelData[size : 2 * size], ds.PixelData[14 * size :]]
            break
    else:
        pytest.fail("no 15-frame instance")


def test_encapsulated_frames_say_their_syntax(served: Served) -> None:
    """What OHIF's loader asks: any syntax as octet-stream, the syntax in each part."""
    study, series, sop, path = _find(served.root, "1.2.840.10008.1.2.5")
    ds = pydicom.dcmread(path)
    expected = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    accept = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    response = requests.get(
        f"{served.url}/studies/{study}/series/{series}/instances/{sop}/frames/2,1",
        headers={"Accept": accept},
        timeout=30,
    )
    parts = _parts(response)
    assert [h["content-type"] for h, _ in parts] == [
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.5"
    ] * 2
    assert [d for _, d in parts] == [expected[1], expected[0]]
    assert served.client().retrieve_instance_frames(study, series, sop, [1, 2]) == expected
    plain = requests.get(
        f"{served.url}/studies/{study}/series/{series}/instances/{sop}/frames/1",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        timeout=30,
    )
    assert plain.status_code == 406  # uncompressed asked: never decompressed here
    jpeg = _find(served.root, "1.2.840.10008.1.2.4.50")
    response = requests.get(
        f"{served.url}/studies/{jpeg[0]}/series/{jpeg[1]}/instances/{jpeg[2]}/frames/30",
        headers={"Accept": 'multipart/related; type="image/jpeg"'},
        timeout=30,
    )
    [(headers, data)] = _parts(response)
    assert headers["content-type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    assert data.startswith(b"\xff\xd8")


@pytest.mark.parametrize("frames, status", [("0", 400), ("1,x", 400), ("99", 404), ("-1", 400)])
def test_bad_frame_lists(served: Served, frames: str, status: int) -> None:
    study, series, sop, _ = _find(served.root, "1.2.840.10008.1.2.1")
    response = requests.get(
        f"{served.url}/studies/{study}/series/{series}/instances/{sop}/frames/{frames}", timeout=30
    )
    assert response.status_code == status


def test_metadata_cache_follows_the_series(served: Served, tmp_path: Path) -> None:
    """Warm answers parse nothing; an instance added to the series is parsed alone, and
    the answer lists it; a damaged cache file is rebuilt, never served."""
    study, series, _sop, path = _find(served.root, "1.2.840.10008.1.2.1")
    first = pydicom.dcmread(path)
    cache = MetadataCache(served.root)
    with open_archive(served.root) as archive:
        before = cache.series(archive, study, series)
        assert before is not None
        parsed = cache.parsed
        assert cache.series(archive, study, series) is before
        assert cache.parsed == parsed
        added = write_instance(
            tmp_path / "new.dcm",
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            PatientID=first.PatientID,
            PatientName=str(first.PatientName),
            InstanceNumber=99,
        )
        import_files(served.root, [added])
        after = cache.series(archive, study, series)
        assert after is not None and cache.parsed == parsed + 1
        assert len(after.spans) == len(before.spans) + 1
        fresh = MetadataCache(served.root)
        assert fresh.series(archive, study, series).body == after.body  # type: ignore[union-attr]
        assert fresh.parsed == 0  # from the cache file
        cache_file = next((served.root / "cache" / "metadata").glob("*.json"))
        for damaged in sorted((served.root / "cache" / "metadata").glob("*.json")):
            damaged.write_bytes(damaged.read_bytes()[:-10])
        again = MetadataCache(served.root)
        assert again.series(archive, study, series).body == after.body  # type: ignore[union-attr]
        assert again.parsed > 0 and cache_file.exists()
    cache.close()


def test_wado_uri(served: Served) -> None:
    study, series, sop, path = _find(served.root, "1.2.840.10008.1.2.1")
    base = f"{served.url}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    response = requests.get(base + "&contentType=application/dicom", timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/dicom"
    assert response.content == path.read_bytes()
    rendered = requests.get(base, timeout=30)  # image/jpeg, the default: rendered (web-ui)
    assert rendered.status_code == 200 and rendered.headers["Content-Type"] == "image/jpeg"
    assert requests.get(base + "&contentType=image/gif", timeout=30).status_code == 406
    implicit = requests.get(
        base + "&contentType=application/dicom&transferSyntax=1.2.840.10008.1.2", timeout=30
    )
    assert (
        pydicom.dcmread(io.BytesIO(implicit.content)).file_meta.TransferSyntaxUID
        == "1.2.840.10008.1.2"
    )
    assert (
        requests.get(
            base.replace("objectUID=", "objectUID=9") + "&contentType=application/dicom", timeout=30
        ).status_code
        == 404
    )
    bad = requests.get(
        f"{served.url}/wado?requestType=WADO&studyUID=../x&seriesUID=1&objectUID=1", timeout=30
    )
    assert bad.status_code == 400 and "not a valid UID" in bad.text


def test_bulk_data_of_encapsulated_pixels_is_its_frames(served: Served) -> None:
    study, series, sop, path = _find(served.root, "1.2.840.10008.1.2.5")
    ds = pydicom.dcmread(path)
    item = served.client().retrieve_instance_metadata(study, series, sop)
    response = requests.get(
        item["7FE00010"]["BulkDataURI"],
        headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
        timeout=30,
    )
    frames = [data for _, data in _parts(response)]
    assert frames == list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
