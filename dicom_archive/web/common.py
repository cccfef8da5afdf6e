"""What every route shares: UID checks, the per-thread archive, one-line errors."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from dicom_archive.archive.store import Archive, open_archive
from dicom_archive.errors import ArchiveError, IndexBusy, InvalidQuery
from dicom_archive.logs import get_logger

log = get_logger("dicom_archive.web")

DICOM_JSON = "application/dicom+json"
#: PS3.5 9.1: digits and dots, no empty component, at most 64 characters. A UID in a
#: URL is looked up in the index, never used as a path, but one that is not a UID is
#: refused before anything else looks at it (``..``, ``%2F``, NUL...).
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class HTTPProblem(Exception):
    """A request that cannot be answered as asked: a status and a one-line reason."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def valid_uid(text: str) -> str:
    if len(text) > 64 or not _UID.fullmatch(text):
        shown = text[:70].encode("ascii", "backslashreplace").decode()
        raise HTTPProblem(400, f"{shown!r} is not a valid UID (digits and dots, at most 64)")
    return text


def path_uids(request: Request, *names: str) -> list[str]:
    return [valid_uid(str(request.path_params[name])) for name in names]


class ArchiveAccess:
    """One open archive (index connection) per thread: Starlette runs blocking work in a
    pool of threads, and an index connection must not be shared between threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[Archive] = []

    def get(self) -> Archive:
        archive: Archive | None = getattr(self._local, "archive", None)
        if archive is None:
            archive = open_archive(self.root)
            self._local.archive = archive
            with self._lock:
                self._opened.append(archive)
        return archive

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for archive in opened:
            try:
                archive.close()
            except Exception:  # a connection of a thread still running: closed at exit
                log.debug("archive_close_failed")


def archive_access(request: Request) -> ArchiveAccess:
    access: ArchiveAccess = request.app.state.archive_access
    return access


def problem_response(exc: Exception) -> Response:
    """The answer for an error: its status and one line, never a traceback."""
    if isinstance(exc, HTTPProblem):
        return PlainTextResponse(exc.reason + "\n", exc.status, headers=exc.headers)
    if isinstance(exc, InvalidQuery):
        return PlainTextResponse(f"{exc}\n", 400)
    if isinstance(exc, IndexBusy):
        return PlainTextResponse(f"{exc}\n", 503, headers={"Retry-After": "5"})
    if isinstance(exc, ArchiveError):
        return PlainTextResponse(f"{exc}\n", 500)
    raise exc


def base_url(request: Request) -> str:
    """The URL of the DICOMweb root (no trailing slash) for URLs in answers.

    ``public_url`` when configured (behind a reverse proxy); else the Host header when
    it names a port; else the address the connection reached. A Host without a port is
    not trusted alone: dicomweb-client sends the bare host name even for port 8042."""
    public: str = request.app.state.settings.public_url
    if public:
        return public.rstrip("/")
    host = request.headers.get("host", "")
    root_path = str(request.scope.get("root_path", "")).rstrip("/")
    scheme = request.url.scheme
    if host and (host.rsplit(":", 1)[-1].isdigit() and not host.endswith("]")):
        return f"{scheme}://{host}{root_path}"
    server = request.scope.get("server")
    if server:
        address, port = server[0], server[1]
        address = f"[{address}]" if ":" in str(address) else address
        return f"{scheme}://{address}:{port}{root_path}"
    return str(request.base_url).rstrip("/")
