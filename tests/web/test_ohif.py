"""OHIF, the standard open web viewer (the prebuilt ``@ohif/app`` from npm), pointed
at ``dicom-archive web`` in headless Chromium: its study list shows our studies, and
opening one draws the image in the viewport under software WebGL (SwiftShader).

The viewer is served from its own origin, as deployed beside an archive, so the
DICOMweb server's CORS is exercised too; its ``app-config.js`` is the one the README
shows (qidoRoot/wadoRoot at our server).
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.store import init_archive
from tests.factory import make_instance, new_uid, write_dataset
from tests.integration.daemon_harness import wait_until
from tests.web.chromium import browser_context, needs_chromium
from tests.web.ohif_install import installed
from tests.web.ui_server import serve

pytestmark = needs_chromium

# Software WebGL: Chromium's SwiftShader behind ANGLE (no GPU here).
SWIFTSHADER = ["--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
DESCRIPTION = "OHIF DISC PHANTOM"


def app_config(dicomweb: str) -> str:
    """The viewer's app-config.js for a dicom-archive server at ``dicomweb``."""
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 1,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "defaultDataSourceName": "dicom-archive",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "dicom-archive",
                "configuration": {
                    "friendlyName": "dicom-archive",
                    "name": "dicom-archive",
                    "qidoRoot": dicomweb,
                    "wadoRoot": dicomweb,
                    "wadoUriRoot": dicomweb + "/wado",
                    "qidoSupportsIncludeField": True,
                    "imageRendering": "wadors",
                    # OHIF asks our WADO-RS thumbnail resource for the study browser panel
                    "thumbnailRendering": "thumbnail",
                    "thumbnailRequestStrategy": "fetch",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "singlepart": "bulkdata,video",
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


def disc_phantom(path: Path, study_uid: str) -> Path:
    """A 256x256 CT: a bright disc (1000) of radius 64 on black (0), window 500/1000."""
    y, x = np.mgrid[:256, :256]
    pixels = np.where((x - 128) ** 2 + (y - 128) ** 2 <= 64**2, 1000, 0).astype(np.uint16)
    ds = make_instance(
        rows=256, columns=256, PixelData=pixels.tobytes(), PatientName="OHIF^Phantom",
        PatientID="OHIF-001", StudyInstanceUID=study_uid, StudyDescription=DESCRIPTION,
        WindowCenter="500", WindowWidth="1000", RescaleIntercept="0", RescaleSlope="1",
        ImagePositionPatient=[0, 0, 0], ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
        PixelSpacing=[1, 1], SliceThickness="1", FrameOfReferenceUID=new_uid(),
    )  # fmt: skip
    return write_dataset(ds, path)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    dist = installed()
    if dist is None:
        pytest.skip("OHIF is not installed: python -m tests.web.ohif_install (needs npm)")
    work = tmp_path_factory.mktemp("ohif")
    study_uid = new_uid()
    files = [disc_phantom(work / "disc.dcm", study_uid), Path(get_testdata_file("MR_small.dcm"))]
    root = work / "archive"
    with init_archive(root) as archive:
        assert all(o.outcome.value == "imported" for o in import_paths(archive, files))
    port = _free_port()
    dicomweb = f"http://127.0.0.1:{port}"
    config = work / "app-config.js"
    config.write_text(app_config(dicomweb))
    env = {"OHIF_DIST": str(dist), "OHIF_CONFIG": str(config)}
    with serve(root, "tests.web.ohif_static:create_ohif_app", env, "/app-config.js") as ohif:
        web = subprocess.Popen(
            [sys.executable, "-m", "dicom_archive", "web", "-a", str(root),
             "--port", str(port), "--cors-origin", ohif],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ),
        )  # fmt: skip
        try:

            def up() -> bool:
                try:
                    with urllib.request.urlopen(dicomweb + "/studies", timeout=5):
                        return True
                except OSError:
                    assert web.poll() is None, "dicom-archive web exited"
                    return False

            wait_until(up, 30, "dicom-archive web")
            yield {"ohif": ohif, "dicomweb": dicomweb, "study": study_uid}
        finally:
            web.terminate()
            web.wait(10)


def poll(page: Any, condition: Any, timeout: float, what: str) -> Any:
    """wait_until for a page: Playwright delivers its events (responses) only while
    the test waits inside Playwright, never during a time.sleep."""
    deadline = time.monotonic() + timeout
    while (value := condition()) is None or value is False:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        page.wait_for_timeout(200)
    return value


def _record(page: Any, dicomweb: str) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    page.on(
        "response",
        lambda r: (
            seen.append((r.status, r.url[len(dicomweb) :])) if r.url.startswith(dicomweb) else None
        ),
    )
    return seen


def test_the_study_list_shows_our_studies(viewer: dict[str, Any], tmp_path: Path) -> None:
    with browser_context(SWIFTSHADER) as context:
        page = context.new_page()
        seen = _record(page, viewer["dicomweb"])
        page.goto(viewer["ohif"] + "/")
        page.get_by_text(DESCRIPTION).wait_for(timeout=60_000)
        text = page.inner_text("body")
        assert "Phantom" in text and "OHIF" in text  # OHIF shows "OHIF, Phantom"
        assert "CompressedSamples" in text  # MR_small
        assert "1-2 of 2" in text
        page.screenshot(path=str(tmp_path / "ohif-study-list.png"))
        assert any(status == 200 and url.startswith("/studies?") for status, url in seen), seen


def test_opening_a_study_shows_the_image(viewer: dict[str, Any], tmp_path: Path) -> None:
    with browser_context(SWIFTSHADER) as context:
        page = context.new_page()
        seen = _record(page, viewer["dicomweb"])
        page.goto(f"{viewer['ohif']}/viewer?StudyInstanceUIDs={viewer['study']}")
        poll(page, lambda: any(s == 200 and "/metadata" in u for s, u in seen), 60, "metadata")
        renderer = page.evaluate(
            "(() => { const gl = document.createElement('canvas').getContext('webgl2');"
            " return gl ? gl.getParameter(gl.RENDERER) : ''; })()"
        )
        if not renderer:
            pytest.skip(
                "no WebGL2 under software rendering: the study list and the series metadata "
                "loaded, the viewport cannot draw"
            )
        canvas = page.locator("canvas.cornerstone-canvas").first
        canvas.wait_for(timeout=60_000)

        def drawn() -> np.ndarray | None:
            url = canvas.evaluate("c => c.toDataURL('image/png')")
            pixels = np.asarray(
                Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("L")
            )
            height, width = pixels.shape
            centre = pixels[height // 2 - 10 : height // 2 + 10, width // 2 - 10 : width // 2 + 10]
            return pixels if centre.mean() > 200 else None

        pixels = poll(page, drawn, 60, "the disc drawn in the viewport")
        Image.fromarray(pixels).save(tmp_path / "ohif-canvas.png")
        page.screenshot(path=str(tmp_path / "ohif-viewer.png"))
        height, width = pixels.shape
        assert pixels[5, 5] < 30 and pixels[-5, -5] < 30  # black corners
        # The disc fills pi*64^2 of the 256^2 image; fitted into the canvas it covers
        # that share of the image's square, so of the canvas no more than that.
        bright = float(np.mean(pixels > 128))
        square = min(height, width) ** 2 / (height * width)
        assert 0.5 * square * np.pi / 16 < bright <= 1.1 * square * np.pi / 16, bright
        assert any(s == 200 and "/frames/1" in u for s, u in seen), seen
        poll(page, lambda: [u for s, u in seen if s == 200 and u.endswith("/thumbnail")], 30,
             "the series thumbnail from our thumbnail resource")  # fmt: skip
