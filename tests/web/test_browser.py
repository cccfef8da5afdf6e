"""The study browser's HTML over a real uvicorn: search with the query command's
rules, paging, study and series pages, the daemon's status, and escaping of
hostile values."""

from __future__ import annotations

import html.parser
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.store import init_archive
from tests.factory import StudySpec, make_instance, new_uid, write_dataset, write_studies
from tests.integration.daemon_harness import DaemonProcess, wait_until
from tests.web.ui_server import serve

HOSTILE_NAME = "<script>alert('name')</script>^Evil"
HOSTILE_DESCRIPTION = '"><img src=x onerror=alert(1)>'


class Page(html.parser.HTMLParser):
    """The parts of a page the tests look at: rows, images, links, text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: dict[str, int] = {}
        self.images: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.scripts = 0
        self.text: list[str] = []
        self._rel = ""
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "tr" and values.get("class"):
            self.rows[values["class"] or ""] = self.rows.get(values["class"] or "", 0) + 1
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag == "a":
            self.links.append((values.get("rel") or "", values.get("href") or ""))
        if tag == "script" or any(k.startswith("on") for k in values):
            self.scripts += 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.headers["Content-Type"] == "text/html; charset=utf-8"
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    work = tmp_path_factory.mktemp("browser")
    spec = StudySpec(patients=30, studies_per_patient=2, series_per_study=1, instances_per_series=1)
    files = write_studies(work / "many", spec)
    hostile_study = new_uid()
    hostile_series = [new_uid(), new_uid()]
    for n, series_uid in enumerate(hostile_series):
        for i in range(3):
            files.append(write_dataset(make_instance(
                PatientName=HOSTILE_NAME, PatientID="X&Y<1>", StudyInstanceUID=hostile_study,
                SeriesInstanceUID=series_uid, SeriesNumber=n + 1, InstanceNumber=i + 1,
                StudyDescription=HOSTILE_DESCRIPTION, SeriesDescription=f"series {n}</td>",
                Modality="MR", StudyDate="20230301",
            ), work / "hostile" / f"{n}-{i}.dcm"))  # fmt: skip
    root = work / "archive"
    with init_archive(root) as archive:
        assert all(o.outcome.value == "imported" for o in import_paths(archive, files))
    with serve(root) as base:
        yield base, {"study": hostile_study, "series0": hostile_series[0]}


def test_hostile_values_are_shown_never_run(site: tuple[str, dict[str, str]]) -> None:
    base, uids = site
    for url in (
        base + "/",
        base + "/?patient_name=*script*",
        f"{base}/browse/studies/{uids['study']}",
        f"{base}/browse/studies/{uids['study']}/series/{uids['series0']}",
        base + "/?patient_name=<b>x</b>",
    ):
        status, text = fetch(url)
        assert status == 200, url
        page = Page(text)
        assert page.scripts == 0, url  # no <script>, no on* attribute got through
        assert "<script>alert" not in text and "<img src=x" not in text
    status, text = fetch(base + "/?patient_name=*script*")
    page = Page(text)
    assert page.rows == {"study": 1}
    assert HOSTILE_NAME in page.all_text and HOSTILE_DESCRIPTION in page.all_text
    assert "X&Y<1>" in page.all_text


def test_search_uses_the_query_commands_rules(site: tuple[str, dict[str, str]]) -> None:
    base, _ = site
    count = lambda query: Page(fetch(base + "/?" + query)[1]).rows.get("study", 0)  # noqa: E731
    assert count("patient_name=doe%5Epatient1") == 2  # exact, case-insensitive
    assert count("patient_name=DOE%5EPATIENT1*") == 2 * 11  # 1, 10-19
    assert count("patient_name=DOE%5EPATIENT?") == 2 * 10
    assert count("patient_id=PAT00003") == 2
    assert count("modality=mr") == 1
    assert count("study_date=20230101-20231231") == 1
    assert count("study_date=-20230301&modality=MR") == 1
    assert count("patient_name=nobody") == 0
    assert "No study matches." in fetch(base + "/?patient_name=nobody")[1]


def test_bad_search_values_are_400_with_the_reason(site: tuple[str, dict[str, str]]) -> None:
    base, _ = site
    status, text = fetch(base + "/?study_date=2024-13-45")
    assert status == 400 and "invalid study date" in text
    assert 'value="2024-13-45"' in text  # the form keeps what was typed
    assert fetch(base + "/?page=0")[0] == 400
    assert fetch(base + "/?page=x")[0] == 400


def test_paging_keeps_the_search(site: tuple[str, dict[str, str]]) -> None:
    base, _ = site
    first = Page(fetch(base + "/")[1])
    assert first.rows["study"] == 50
    (next_link,) = [href for rel, href in first.links if rel == "next"]
    second = Page(fetch(base + next_link)[1])
    assert second.rows["study"] == 61 - 50
    assert not [h for rel, h in second.links if rel == "next"]
    assert [h for rel, h in second.links if rel == "prev"] == ["/?page=1"]
    searched = Page(fetch(base + "/?patient_name=DOE*&page=1")[1])
    assert [h for rel, h in searched.links if rel == "next"] == ["/?patient_name=DOE%2A&page=2"]


def test_study_and_series_pages(site: tuple[str, dict[str, str]]) -> None:
    base, uids = site
    study = uids["study"]
    status, text = fetch(f"{base}/browse/studies/{study}")
    assert status == 200
    page = Page(text)
    assert page.rows == {"series": 2}
    assert f"/studies/{study}/series/{uids['series0']}/thumbnail" in page.images
    assert "2 series, 6 instances" in page.all_text
    download = [h for _, h in page.links if h.startswith(f"/studies/{study}?")]
    assert download == [
        f"/studies/{study}?accept=multipart%2Frelated%3B+type%3D%22application%2Fdicom%22"
    ]
    assert f"/studies/{study}/archive.zip" in [h for _, h in page.links]
    status, text = fetch(f"{base}/browse/studies/{study}/series/{uids['series0']}")
    assert status == 200
    series = Page(text)
    assert len([i for i in series.images if i.endswith("/thumbnail")]) == 3
    assert fetch(f"{base}/browse/studies/1.2.3")[0] == 404
    assert fetch(f"{base}/browse/studies/{study}/series/1.2.3")[0] == 404
    assert fetch(f"{base}/browse/studies/1.2.x")[0] == 400


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="DCMTK not installed")
def test_the_daemons_status_is_on_the_page(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    try:
        daemon.start()
        for path in write_studies(tmp_path / "drops", StudySpec(series_per_study=1)):
            shutil.copy(path, daemon.incoming / path.name)
        (daemon.incoming / "junk.dcm").write_bytes(b"junk" * 100)
        daemon.wait_until_count(3)
        with serve(daemon.archive) as base:
            # The counts are recorded per batch, the queue depth at each heartbeat (5 s).
            running = wait_until(
                lambda: (
                    (t := Page(fetch(base + "/")[1]).all_text)
                    and "1 rejected" in t
                    and "Queue 0 files waiting" in t
                    and t
                ),
                30,
                "the daemon's counts and empty queue on the page",
            )
            assert re.search(r"Daemon running, pid \d+", running)
            assert "Since start 3 imported, 0 duplicates, 0 conflicts, 1 rejected" in running
            assert "Rejected 1 files set aside" in running
            assert "Last check never" in running
            assert "Last imports DOE^PATIENT0" in running
            assert "junk.dcm" in running  # the recent errors
            assert daemon.stop() == 0
            subprocess.run(
                [sys.executable, "-m", "dicom_archive", "check", "-a", str(daemon.archive)],
                check=True, capture_output=True,
            )  # fmt: skip
            stopped = Page(fetch(base + "/")[1]).all_text
            assert "Daemon not running (last run" in stopped
            assert re.search(r"Last check \S+Z: 3 instances, clean", stopped)
            assert "In total 3 imported" in stopped
    finally:
        daemon.close()
