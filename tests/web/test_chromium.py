"""The study browser in headless Chromium: the study list shows our studies, the
thumbnails decode, search and navigation work without JavaScript, hostile values
never run, and the screenshots are pictures, not blank pages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.store import init_archive
from tests.factory import make_instance, new_uid, write_dataset
from tests.web.chromium import browser_context, needs_chromium, picture_stats
from tests.web.ui_server import serve

pytestmark = needs_chromium

HOSTILE = "<img src=x onerror=alert(1)>^Mallory"
REAL_IMAGES = ["MR_small.dcm", "CT_small.dcm", "examples_rgb_color.dcm", "examples_palette.dcm"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("chromium")
    files = [Path(get_testdata_file(name)) for name in REAL_IMAGES]
    hostile_study = new_uid()
    files.append(write_dataset(make_instance(rows=64, columns=64, PatientName=HOSTILE,
                                             StudyInstanceUID=hostile_study, PatientID="EVIL"),
                               work / "hostile.dcm"))  # fmt: skip
    root = work / "archive"
    with init_archive(root) as archive:
        assert all(o.outcome.value == "imported" for o in import_paths(archive, files))
    with serve(root) as url:
        yield url


def _thumbnails(page) -> list[tuple[str, bool, int]]:  # type: ignore[no-untyped-def]
    return page.evaluate(
        "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
    )


def test_study_list_shows_our_studies_and_their_thumbnails(base: str, tmp_path: Path) -> None:
    with browser_context() as context:
        page = context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(base + "/")
        page.wait_for_load_state("networkidle")
        text = page.inner_text("#studies")
        for name in ("CompressedSamples^MR1", "CompressedSamples^CT1", "Mallory"):
            assert name in text, name
        assert HOSTILE in text  # shown as text
        assert dialogs == []  # and never run
        assert "Archive 5 patients, 5 studies, 5 instances" in " ".join(
            page.inner_text("#status").split()
        )
        # every study's thumbnail loaded and decoded as an image
        images = _thumbnails(page)
        assert len(images) == 5
        assert all(complete and width > 0 for _, complete, width in images), images
        shot = page.screenshot(path=str(tmp_path / "studies.png"), full_page=True)
        deviation, colours = picture_stats(shot)
        assert deviation > 20 and colours > 50, (deviation, colours)
        # the MR thumbnail itself is a picture (screenshot of the element)
        row = page.locator("tr.study", has_text="CompressedSamples^MR1")
        deviation, colours = picture_stats(row.locator("img").screenshot())
        assert deviation > 20 and colours > 20


def test_search_and_study_page_work_without_javascript(base: str, tmp_path: Path) -> None:
    with browser_context(java_script_enabled=False) as context:
        page = context.new_page()
        page.goto(base + "/")
        page.fill("input[name=patient_name]", "compressed*mr*")
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        assert "patient_name=compressed" in page.url
        rows = page.locator("tr.study")
        assert rows.count() == 1
        assert "CompressedSamples^MR1" in rows.inner_text()
        rows.locator("a").nth(1).click()
        page.wait_for_load_state("networkidle")
        assert "/browse/studies/" in page.url
        assert page.locator("tr.series").count() == 1
        images = _thumbnails(page)
        assert len(images) == 1 and images[0][1] and images[0][2] > 0
        assert page.locator("#download").get_attribute("href").startswith("/studies/")
        page.locator("tr.series a").first.click()
        page.wait_for_load_state("networkidle")
        images = _thumbnails(page)
        assert len(images) == 1 and images[0][2] > 0
        shot = page.screenshot(path=str(tmp_path / "series.png"))
        deviation, colours = picture_stats(shot)
        assert deviation > 10 and colours > 20
