"""WADO-RS rendered and thumbnail resources (PS3.18 8.3.5 and 8.3.6), as JPEG or PNG.

The media type comes from the ``accept`` query parameter or the Accept header (with
q-values; ``*/*`` and ``image/*`` mean JPEG); anything else is 406. ``quality``,
``viewport`` (``vw,vh`` or ``vw,vh,sx,sy,sw,sh``) and ``window``
(``center,width[,function]``) follow PS3.18 8.3.5.1; a malformed one is 400 with the
reason. A study or series thumbnail shows the middle instance of its first series
that has pixels to show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from dicom_archive.errors import ArchiveError, UsageError
from dicom_archive.logs import get_logger
from dicom_archive.web import lookup
from dicom_archive.web.rendering import (
    JPEG,
    MAX_VIEWPORT,
    MEDIA_TYPES,
    FrameNotFound,
    NotRenderable,
    Viewport,
    Window,
    parse_quality,
    parse_viewport,
    parse_window,
    render_frame,
    render_thumbnail,
)

log = get_logger(__name__)

_INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"
#: Browsers keep pictures a while (the study list shows 50 thumbnails a page).
_INSTANCE_CACHE = "private, max-age=3600"
_GROUP_CACHE = "private, max-age=60"


class NotAcceptable(ArchiveError):
    """No media type the client accepts is one we render."""


def choose_media_type(accept: str | None) -> str:
    """The best of MEDIA_TYPES for an Accept value (RFC 9110 12.5.1), JPEG by default."""
    if not accept or not accept.strip():
        return JPEG
    choices: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        if not media:
            continue
        weight = 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if weight <= 0:
            continue
        if media in ("*/*", "image/*"):
            media = JPEG
        if media in MEDIA_TYPES:
            choices.append((-weight, position, media))
    if not choices:
        raise NotAcceptable(
            f"cannot render as {accept.strip()[:100]}: use {' or '.join(MEDIA_TYPES)}"
        )
    return min(choices)[2]


def _media_type(request: Request) -> str:
    # PS3.18 8.3.3.1: the accept query parameter, when present, takes precedence.
    return choose_media_type(request.query_params.get("accept") or request.headers.get("accept"))


def _params(request: Request) -> tuple[int, Viewport | None, Window | None]:
    query = request.query_params
    quality = parse_quality(query["quality"]) if "quality" in query else 90
    viewport = parse_viewport(query["viewport"]) if "viewport" in query else None
    window = parse_window(query["window"]) if "window" in query else None
    return quality, viewport, window


def _frame_number(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"frame {text[:20]!r}: rendered frames are one number from 1 (no lists)")
    return int(text)


def error_status(exc: ArchiveError) -> int:
    if isinstance(exc, NotAcceptable):
        return 406
    if isinstance(exc, FrameNotFound):
        return 404
    if isinstance(exc, NotRenderable):
        # The resource exists but has no picture we can make (PS3.18: rendering not
        # supported for it): a client error for this resource, not a server fault.
        return 422
    return 400


def _error(exc: ArchiveError) -> Response:
    return PlainTextResponse(str(exc) + "\n", status_code=error_status(exc))


def render_for_wado_uri(
    path: Path, query: Mapping[str, str], content_types: Sequence[str]
) -> tuple[bytes, str]:
    """A WADO-URI rendered answer (PS3.18 9.3.2): ``contentType`` image/jpeg or
    image/png, ``frameNumber``, ``rows``/``columns`` (the output fits in them, aspect
    kept), ``windowCenter`` with ``windowWidth``, ``imageQuality``. Raises ArchiveError
    (``error_status`` gives its HTTP status)."""
    media_type = next((t for t in content_types if t in MEDIA_TYPES), None)
    if media_type is None:
        raise NotAcceptable(
            f"contentType {', '.join(content_types)[:100]}: rendered as "
            f"{' or '.join(MEDIA_TYPES)} only"
        )
    frame = _frame_number(query.get("frameNumber", "1"))
    viewport = None
    if "rows" in query or "columns" in query:
        rows = _positive(query.get("rows", str(MAX_VIEWPORT)), "rows")
        columns = _positive(query.get("columns", str(MAX_VIEWPORT)), "columns")
        viewport = Viewport(columns, rows)
    window = None
    if "windowCenter" in query or "windowWidth" in query:
        if "windowCenter" not in query or "windowWidth" not in query:
            raise UsageError("windowCenter and windowWidth go together")
        window = parse_window(f"{query['windowCenter']},{query['windowWidth']}")
    quality = parse_quality(query["imageQuality"]) if "imageQuality" in query else 90
    body = render_frame(
        path, frame=frame, media_type=media_type, viewport=viewport, window=window, quality=quality
    )
    return body, media_type


def _positive(text: str, name: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= MAX_VIEWPORT:
        raise UsageError(f"{name}={text[:20]!r}: use a whole number from 1 to {MAX_VIEWPORT}")
    return int(text)


def _not_found(what: str) -> Response:
    return PlainTextResponse(f"{what} is not in the archive\n", status_code=404)


async def instance_rendered(request: Request) -> Response:
    p = request.path_params
    root: Path = request.app.state.archive_root
    try:
        media_type = _media_type(request)
        quality, viewport, window = _params(request)
        frame = _frame_number(p["frame"]) if "frame" in p else 1
        found = await run_in_threadpool(
            lookup.instance_file, root, p["study"], p["series"], p["instance"]
        )
        if found is None:
            return _not_found(f"instance {p['instance']}")
        body = await run_in_threadpool(
            _render, found.path, frame, media_type, viewport, window, quality
        )
    except ArchiveError as exc:
        return _error(exc)
    return Response(body, media_type=media_type, headers={"Cache-Control": _INSTANCE_CACHE})


def _render(
    path: Path,
    frame: int,
    media_type: str,
    viewport: Viewport | None,
    window: Window | None,
    quality: int,
) -> bytes:
    return render_frame(
        path,
        frame=frame,
        media_type=media_type,
        viewport=viewport,
        window=window,
        quality=quality,
    )


async def thumbnail(request: Request) -> Response:
    p = request.path_params
    root: Path = request.app.state.archive_root
    try:
        media_type = _media_type(request)
        _, viewport, _ = _params(request)
        body = await run_in_threadpool(
            _thumbnail, root, media_type, viewport, p["study"], p.get("series"), p.get("instance")
        )
    except ArchiveError as exc:
        return _error(exc)
    if body is None:
        return _not_found(_what(p))
    # A study's or series' picture changes as instances arrive; an instance's never
    # does (archived bytes are never overwritten).
    cache = _INSTANCE_CACHE if "instance" in p else _GROUP_CACHE
    return Response(body, media_type=media_type, headers={"Cache-Control": cache})


def _what(params: dict[str, Any]) -> str:
    for key in ("instance", "series", "study"):
        if key in params:
            return f"{key} {params[key]}"
    return "it"


def _thumbnail(
    root: Path,
    media_type: str,
    viewport: Viewport | None,
    study: str,
    series: str | None,
    instance: str | None,
) -> bytes | None:
    if instance is not None:
        assert series is not None
        found = lookup.instance_file(root, study, series, instance)
        if found is None:
            return None
        return render_thumbnail(found.path, media_type=media_type, viewport=viewport)
    groups = lookup.series_files(root, study, series)
    if not groups:
        return None
    last: NotRenderable | None = None
    for files in groups:
        # The middle instance first, then the others: a series may open with a
        # localiser or hold a non-image object.
        middle = len(files) // 2
        for candidate in [files[middle], *files[:middle], *files[middle + 1 :]][:5]:
            try:
                return render_thumbnail(candidate.path, media_type=media_type, viewport=viewport)
            except NotRenderable as exc:
                last = exc
    assert last is not None
    raise last


def rendered_routes() -> list[BaseRoute]:
    return [
        Route(_INSTANCE + "/rendered", instance_rendered, methods=["GET"]),
        Route(_INSTANCE + "/frames/{frame}/rendered", instance_rendered, methods=["GET"]),
        Route("/studies/{study}/thumbnail", thumbnail, methods=["GET"]),
        Route("/studies/{study}/series/{series}/thumbnail", thumbnail, methods=["GET"]),
        Route(_INSTANCE + "/thumbnail", thumbnail, methods=["GET"]),
    ]
