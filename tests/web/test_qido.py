"""QIDO-RS through dicomweb-client, and its file-backed DICOMfileClient as an oracle."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from dicomweb_client.api import DICOMfileClient

from tests.web.conftest import Served


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value")
    return values[0] if values else None


def _curl(url: str, *extra: str) -> tuple[int, str, str]:
    done = subprocess.run(
        ["curl", "-sS", "-g", "-D", "-", "-o", "-", *extra, url],
        capture_output=True,
        check=True,
    )
    head, _, body = done.stdout.decode().partition("\r\n\r\n")
    status = int(head.split()[1])
    return status, head, body


@pytest.fixture(scope="module")
def oracle(served: Served, tmp_path_factory: pytest.TempPathFactory) -> DICOMfileClient:
    return DICOMfileClient(
        f"file://{served.root / 'data'}",
        in_memory=True,
        update_db=True,
    )


def test_studies_match_the_file_oracle(served: Served, oracle: DICOMfileClient) -> None:
    """Every study the oracle finds in the archived files is found, with the same
    patient, date and counts."""
    ours = {_value(s, "0020000D"): s for s in served.client().search_for_studies()}
    theirs = {_value(s, "0020000D"): s for s in oracle.search_for_studies()}
    assert set(ours) == set(theirs)
    for uid, study in theirs.items():
        mine = ours[uid]
        compared = [
            t for t in ("00100020", "00080050", "00080020", "00201208", "00201206") if t in study
        ]
        assert "00100020" in compared
        for tag in compared:
            assert _value(mine, tag) == _value(study, tag), (uid, tag)
        if _value(study, "00100010"):
            assert _value(mine, "00100010") == _value(study, "00100010")


def test_series_and_instances_match_the_file_oracle(
    served: Served, oracle: DICOMfileClient
) -> None:
    client = served.client()
    for study in oracle.search_for_studies():
        uid = _value(study, "0020000D")
        ours = {_value(s, "0020000E"): s for s in client.search_for_series(uid)}
        theirs = {_value(s, "0020000E"): s for s in oracle.search_for_series(uid)}
        assert set(ours) == set(theirs)
        for series_uid, series in theirs.items():
            assert _value(ours[series_uid], "00080060") == _value(series, "00080060")
            mine = {_value(i, "00080018") for i in client.search_for_instances(uid, series_uid)}
            other = {_value(i, "00080018") for i in oracle.search_for_instances(uid, series_uid)}
            assert mine == other


def test_dicom_json_types(served: Served) -> None:
    """PN is an object with Alphabetic (and Ideographic/Phonetic) groups, IS a number,
    empty values carry no Value, and ModalitiesInStudy is never an empty list."""
    studies = served.client().search_for_studies(search_filters={"PatientName": "DOE*"})
    assert studies
    for study in studies:
        assert study["00100010"]["Value"][0]["Alphabetic"].startswith("DOE^")
        assert isinstance(study["00201208"]["Value"][0], int)
        assert study["00080061"]["Value"] in (["CT", "MR"], ["MR", "CT"])
    everything = served.client().search_for_studies()
    for study in everything:
        for element in study.values():
            assert element.get("Value", [0]) != [], element
            assert element.get("Value", [0]) != [""], element
    nomod = served.client().search_for_studies(search_filters={"PatientName": "SMITH^ANNA"})
    assert len(nomod) == 1 and "00080061" not in nomod[0]
    series = served.client().search_for_series()
    assert all(
        isinstance(s["00200011"]["Value"][0], int)
        for s in series
        if "Value" in s.get("00200011", {})
    )


def test_japanese_names_keep_their_groups(served: Served, tmp_path: Path) -> None:
    from tests.factory import charset_file
    from tests.web.conftest import import_files

    import_files(served.root, [charset_file("chrH31.dcm")])
    found = served.client().search_for_studies(search_filters={"PatientName": "Yamada*"})
    assert found
    name = found[0]["00100010"]["Value"][0]
    assert name["Alphabetic"] == "Yamada^Tarou"
    assert name["Ideographic"] == "山田^太郎"
    assert name["Phonetic"] == "やまだ^たろう"


def test_filters_by_keyword_tag_wildcard_and_dates(served: Served) -> None:
    client = served.client()
    by_keyword = client.search_for_studies(search_filters={"PatientID": "PAT00001"})
    by_tag = client.search_for_studies(search_filters={"00100020": "PAT00001"})
    assert len(by_keyword) == 1 and by_keyword == by_tag
    lower = client.search_for_studies(search_filters={"PatientName": "doe^patient?"})
    assert len(lower) == 3
    dated = client.search_for_studies(search_filters={"StudyDate": "20240102-20240103"})
    assert sorted(_value(s, "00100020") for s in dated) == ["PAT00001", "PAT00002"]
    assert client.search_for_studies(search_filters={"StudyDate": "-20231231"}) == [] or all(
        _value(s, "00080020") <= "20231231"
        for s in client.search_for_studies(search_filters={"StudyDate": "-20231231"})
    )
    ct_series = client.search_for_series(search_filters={"Modality": "ct"})
    assert ct_series and all(_value(s, "00080060") == "CT" for s in ct_series)
    fuzzy = client.search_for_studies(search_filters={"PatientName": "DOE*"}, fuzzymatching=True)
    assert len(fuzzy) == 3


def test_limit_and_offset_page_exactly(served: Served) -> None:
    """Pages of any size tile the full result without gaps or repeats, and
    dicomweb-client's get_remaining loop ends."""
    client = served.client()
    full = [_value(s, "0020000D") for s in client.search_for_studies()]
    assert len(full) >= 8
    for size in (1, 3, 5):
        paged: list[str] = []
        offset = 0
        while page := client.search_for_studies(limit=size, offset=offset):
            assert len(page) <= size
            paged += [_value(s, "0020000D") for s in page]
            offset += size
        assert paged == full
    remaining = client.search_for_studies(limit=2, get_remaining=True)
    assert [_value(s, "0020000D") for s in remaining] == full


def test_includefield(served: Served) -> None:
    status, _, body = _curl(
        f"{served.url}/series?includefield=StudyDescription,00100020&includefield=00080090&limit=1"
    )
    assert status == 200
    item = json.loads(body)[0]
    assert "00081030" in item and "00100020" in item and "00080090" in item
    status, _, body = _curl(f"{served.url}/instances?includefield=all&limit=1")
    item = json.loads(body)[0]
    for tag in ("00100010", "00080020", "00080060", "00200013", "00080016"):
        assert tag in item


@pytest.mark.parametrize(
    "query, reason",
    [
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("StudyDate=2024-01-01-2024", "StudyDate"),
        ("NoSuchKeyword=1", "NoSuchKeyword"),
        ("includefield=Bogus", "Bogus"),
        ("StudyInstanceUID=1.2.x", "not a valid UID"),
        ("fuzzymatching=maybe", "fuzzymatching"),
    ],
)
def test_bad_parameters_are_400_with_a_reason(served: Served, query: str, reason: str) -> None:
    status, _, body = _curl(f"{served.url}/studies?{query}")
    assert status == 400
    assert reason in body and body.count("\n") == 1 and "Traceback" not in body


def test_unsupported_attribute_is_a_warning(served: Served) -> None:
    status, head, _ = _curl(f"{served.url}/studies?SliceThickness=5")
    assert status == 200 and "warning: 299" in head.lower() and "SliceThickness" in head


def test_uids_in_the_path_are_checked(served: Served) -> None:
    """Path traversal, encoded slashes and non-UIDs never reach the index or the disk."""
    for path in (
        "/studies/..%5C..%5Cetc/series",
        "/studies/1.2.3abc/series",
        "/studies/%00/series",
    ):
        status, _, body = _curl(served.url + path, "--path-as-is")
        assert status == 400, path
        assert "not a valid UID" in body
    # An encoded slash is decoded by the server into a path no route matches.
    for path in ("/studies/..%2F..%2Fetc/series", "/studies/../../etc/passwd"):
        status, _, body = _curl(served.url + path, "--path-as-is")
        assert status == 404 and "root:" not in body
