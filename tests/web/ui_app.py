"""The HTTP app the browser, rendering and metrics tests serve: our routes alone.

web-core's ``create_app`` mounts the same route groups; these tests do not depend
on it. uvicorn runs it as ``--factory tests.web.ui_app:create_test_app`` in a real
subprocess, with the archive named by ``DICOM_ARCHIVE_TEST_ROOT``.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from dicom_archive.web.browser import browser_routes
from dicom_archive.web.metrics import metrics_routes
from dicom_archive.web.rendered_routes import rendered_routes

ROOT_VARIABLE = "DICOM_ARCHIVE_TEST_ROOT"


def build_app(root: Path) -> Starlette:
    routes: list[BaseRoute] = []
    for group in (rendered_routes, browser_routes, metrics_routes):
        routes.extend(group())
    app = Starlette(routes=routes)
    app.state.archive_root = root
    return app


def create_test_app() -> Starlette:
    return build_app(Path(os.environ[ROOT_VARIABLE]))
