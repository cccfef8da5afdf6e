"""The ASGI application: routes from ``ROUTE_GROUPS``, wrapped in CORS and auth.

``ROUTE_GROUPS`` is a list of zero-argument callables, each returning routes, so
other faces (the study browser, metrics, rendering) join by appending theirs; the
authentication and CORS middleware wrap the whole application and so cover them too.
"""

from __future__ import annotations

import base64
import hmac
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicom_archive.archive.store import is_archive
from dicom_archive.errors import ArchiveError, NotAnArchive
from dicom_archive.network.storing import StoreCommitter
from dicom_archive.web.browser import browser_routes
from dicom_archive.web.common import ArchiveAccess, HTTPProblem, log, problem_response
from dicom_archive.web.download import download_routes
from dicom_archive.web.metadata import MetadataCache
from dicom_archive.web.metrics import metrics_routes
from dicom_archive.web.qido import qido_routes
from dicom_archive.web.rendered_routes import rendered_routes
from dicom_archive.web.settings import WebSettings
from dicom_archive.web.stow import stow_routes
from dicom_archive.web.wado import wado_routes
from dicom_archive.web.wadouri import wado_uri_routes

ROUTE_GROUPS: list[Callable[[], list[BaseRoute]]] = [
    download_routes,
    qido_routes,
    wado_routes,
    stow_routes,
    wado_uri_routes,
    # web-ui: WADO-RS rendered/thumbnail, the study browser at /, Prometheus /metrics
    rendered_routes,
    browser_routes,
    metrics_routes,
]


class AuthMiddleware:
    """Bearer token or HTTP basic on every HTTP request; nothing when auth is "none".

    A password is checked against its hash once per distinct header value (PBKDF2 on
    every request of a viewer's hundreds would cost seconds); the cache keeps only a
    digest of the accepted header, never the password."""

    def __init__(self, app: ASGIApp, settings: WebSettings) -> None:
        self.app = app
        self.settings = settings
        self._accepted: set[bytes] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.settings.auth == "none" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        challenge = 'Bearer realm="dicom-archive"'
        if self.settings.auth == "basic":
            challenge = 'Basic realm="dicom-archive", charset="UTF-8"'
        response = Response(
            "authentication required\n", 401, {"WWW-Authenticate": challenge}, "text/plain"
        )
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        header = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value
                break
        scheme, _, credentials = header.decode("latin-1").partition(" ")
        credentials = credentials.strip()
        if self.settings.auth == "bearer":
            return scheme.lower() == "bearer" and hmac.compare_digest(
                credentials.encode(), self.settings.token.encode()
            )
        if scheme.lower() != "basic":
            return False
        import hashlib

        digest = hashlib.sha256(header).digest()
        if digest in self._accepted:
            return True
        try:
            user, sep, password = (
                base64.b64decode(credentials, validate=True).decode().partition(":")
            )
        except (ValueError, UnicodeDecodeError):
            return False
        if sep and self.settings.check_password(user, password):
            self._accepted.add(digest)
            return True
        return False


class AccessLogMiddleware:
    """One log event per request: method, path (never the query, which holds patient
    names), status and time; never a header (Authorization)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            log.info(
                "http",
                method=scope.get("method", ""),
                path=scope.get("path", "")[:300],
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )


async def _problem(request: Request, exc: Exception) -> Response:
    return problem_response(exc)


def create_app(settings: WebSettings) -> Starlette:
    if not is_archive(settings.archive_root):
        raise NotAnArchive(settings.archive_root)
    access = ArchiveAccess(settings.archive_root)
    cache = MetadataCache(settings.archive_root)
    # Read in the committer's thread: two reader processes measured no faster for
    # requests of 50 parts on two shared cores, and cost two processes per server.
    committer = StoreCommitter(settings.archive_root)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        committer.start()
        try:
            yield
        finally:
            committer.stop()
            cache.close()
            access.close()

    routes: list[BaseRoute] = []
    for group in ROUTE_GROUPS:
        routes.extend(group())
    middleware = [Middleware(AccessLogMiddleware)]
    if settings.cors_origins:
        # Outside auth: a browser's preflight OPTIONS carries no credentials.
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["Content-Type", "Content-Length", "Warning", "Location"],
                allow_credentials=settings.auth != "none" and "*" not in settings.cors_origins,
            )
        )
    middleware.append(Middleware(AuthMiddleware, settings=settings))
    handlers: dict[Any, Any] = {HTTPProblem: _problem, ArchiveError: _problem}
    app = Starlette(
        routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=lifespan
    )
    app.state.archive_root = settings.archive_root
    app.state.settings = settings
    app.state.archive_access = access
    app.state.metadata_cache = cache
    app.state.committer = committer
    return app
