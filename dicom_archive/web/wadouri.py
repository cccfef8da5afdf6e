"""WADO-URI (PS3.18 9): ``/wado?requestType=WADO&studyUID=&seriesUID=&objectUID=``.

``contentType=application/dicom`` answers the stored file (or, with
``transferSyntax``, the little endian transcoding WADO-RS also offers). Rendered
types (``image/jpeg``, the default of the standard, and ``image/png``) are made by
the renderer of the rendered routes (``rendered_routes.render_for_wado_uri``).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from dicom_archive.archive.matching import FindRequest, Level, retrieve_targets
from dicom_archive.errors import ArchiveError
from dicom_archive.web.common import HTTPProblem, archive_access, valid_uid
from dicom_archive.web.multipart import parse_accept
from dicom_archive.web.rendered_routes import error_status, render_for_wado_uri
from dicom_archive.web.wado import _TRANSCODE_FROM, _TRANSCODE_TO, _transcoded

RENDERED_TYPES = ("image/jpeg", "image/png", "image/gif", "image/jp2")


def _one(request: Request, name: str) -> str:
    values = request.query_params.getlist(name)
    if len(values) != 1:
        raise HTTPProblem(
            400, f"{name} is required once" if not values else f"{name} is given more than once"
        )
    return values[0]


def wado_uri(request: Request) -> Response:
    if _one(request, "requestType") != "WADO":
        raise HTTPProblem(400, "requestType must be WADO")
    study = valid_uid(_one(request, "studyUID"))
    series = valid_uid(_one(request, "seriesUID"))
    instance = valid_uid(_one(request, "objectUID"))
    content_types = [
        t.type for t in parse_accept(request.query_params.get("contentType", "image/jpeg"))
    ]
    rendered = "application/dicom" not in content_types and "*/*" not in content_types
    if rendered and not any(t in RENDERED_TYPES for t in content_types):
        raise HTTPProblem(406, f"contentType {content_types!r} is not supported")
    criteria = {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": instance}
    archive = archive_access(request).get()
    targets = retrieve_targets(archive.index, FindRequest(Level.IMAGE, criteria, ()))
    if not targets:
        raise HTTPProblem(404, "no such instance in the archive")
    target = targets[0]
    path = Path(archive_access(request).root) / target.file_path
    if rendered:  # web-ui: the renderer of the WADO-RS rendered resources
        try:
            body, media_type = render_for_wado_uri(path, request.query_params, content_types)
        except ArchiveError as exc:
            raise HTTPProblem(error_status(exc), str(exc)) from exc
        return Response(body, media_type=media_type)
    wanted = request.query_params.get("transferSyntax")
    if wanted and wanted != "*" and wanted != target.transfer_syntax_uid:
        if wanted in _TRANSCODE_TO and target.transfer_syntax_uid in _TRANSCODE_FROM:
            return Response(_transcoded(path, wanted), media_type="application/dicom")
        raise HTTPProblem(
            406, f"the instance is stored as {target.transfer_syntax_uid}, not sent as {wanted}"
        )
    return FileResponse(
        path,
        media_type="application/dicom",
        filename=f"{instance}.dcm",
        content_disposition_type="inline",
    )


def wado_uri_routes() -> list[BaseRoute]:
    return [Route("/wado", wado_uri, methods=["GET"])]
