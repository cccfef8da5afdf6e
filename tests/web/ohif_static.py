"""A static server for OHIF's prebuilt ``dist/`` (a single-page app): a file when the
path names one, ``index.html`` otherwise (its router owns /viewer, /local...), and
``/app-config.js`` from the test's own config. Run by uvicorn as
``--factory tests.web.ohif_static:create_ohif_app`` with ``OHIF_DIST`` and
``OHIF_CONFIG`` in the environment."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route


def create_ohif_app() -> Starlette:
    dist = Path(os.environ["OHIF_DIST"]).resolve()
    config = Path(os.environ["OHIF_CONFIG"])

    async def serve(request: Request) -> Response:
        path = request.path_params.get("path", "")
        if path == "app-config.js":
            return FileResponse(config, media_type="text/javascript")
        candidate = (dist / path).resolve()
        if path and candidate.is_relative_to(dist) and candidate.is_file():
            media = "application/wasm" if candidate.suffix == ".wasm" else None
            return FileResponse(candidate, media_type=media)
        return FileResponse(dist / "index.html", media_type="text/html")

    return Starlette(routes=[Route("/", serve), Route("/{path:path}", serve)])
