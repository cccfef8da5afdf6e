"""A study as one ZIP over HTTP: the archived bytes, each in its readable folder."""

from __future__ import annotations

import hashlib
import io
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from dicom_archive.archive.store import open_archive
from tests.web.conftest import Served


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_a_study_downloads_as_a_zip_of_its_archived_bytes(served: Served) -> None:
    with open_archive(served.root) as archive:
        rows = archive.index.connection.execute(
            "SELECT st.study_instance_uid, i.file_path, i.sha256 FROM instances i "
            "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk"
        ).fetchall()
    study = max({r[0] for r in rows}, key=lambda uid: sum(r[0] == uid for r in rows))
    expected = sorted(sha for uid, _path, sha in rows if uid == study)
    temporary = Path(tempfile.gettempdir())
    before = set(temporary.glob("dicom-archive-zip-*"))
    status, headers, body = _get(f"{served.url}/studies/{study}/archive.zip")
    assert status == 200 and headers["content-type"] == "application/zip"
    assert f"{study}.zip" in headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(body)) as zipped:
        assert zipped.testzip() is None
        names = [n for n in zipped.namelist() if not n.endswith("/")]
        got = sorted(hashlib.sha256(zipped.read(n)).hexdigest() for n in names)
    assert got == expected and len(got) >= 2
    assert all(n.count("/") == 3 for n in names)  # patient / study / series / file
    # Nothing is left behind on the server's disk (removed once the body is sent).
    deadline = time.monotonic() + 10
    while set(temporary.glob("dicom-archive-zip-*")) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(temporary.glob("dicom-archive-zip-*")) - before


@pytest.mark.parametrize(
    ("uid", "status"), [("1.2.3.4.5.6.7.8.9", 404), ("..", 400), ("1.2.x", 400)]
)
def test_an_unknown_or_hostile_study_gets_a_one_line_reason(
    served: Served, uid: str, status: int
) -> None:
    code, _headers, body = _get(f"{served.url}/studies/{uid}/archive.zip")
    assert code == status
    assert body and b"Traceback" not in body and body.count(b"\n") <= 1
