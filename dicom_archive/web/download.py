"""A study as one ZIP file over HTTP: ``GET /studies/{study}/archive.zip``.

The ZIP is export's own (``archive/export_zip.py``: readable folders, the archived
bytes, each SHA-256 checked on the way out), written to a private temporary folder
outside the archive, sent from disk and removed once sent: memory stays flat
whatever the study's size, and a ZIP with a damaged member is never sent.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from dicom_archive.archive.export import Selector
from dicom_archive.archive.store import open_archive
from dicom_archive.errors import ExportError
from dicom_archive.web.common import HTTPProblem, path_uids


def _build_zip(root: Path, study_uid: str, folder: Path) -> Path:
    from dicom_archive.archive.export_zip import export_zip

    target = folder / f"{study_uid}.zip"
    with open_archive(root) as archive:
        try:
            report = export_zip(archive, Selector(study_uid, None, None), target)
        except ExportError as exc:
            status = 404 if "nothing in the archive matches" in str(exc) else 500
            raise HTTPProblem(status, str(exc)) from exc
    if report.errors:
        raise HTTPProblem(500, f"the study cannot be zipped whole: {report.errors[0]}")
    return target


async def study_zip(request: Request) -> Response:
    (study_uid,) = path_uids(request, "study")
    folder = Path(tempfile.mkdtemp(prefix="dicom-archive-zip-"))
    try:
        target = await run_in_threadpool(
            _build_zip, request.app.state.archive_root, study_uid, folder
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(
        target,
        media_type="application/zip",
        filename=target.name,
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )


def download_routes() -> list[BaseRoute]:
    return [Route("/studies/{study}/archive.zip", study_zip, methods=["GET"])]
