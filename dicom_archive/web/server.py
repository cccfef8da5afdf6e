"""The DICOMweb face on a socket: uvicorn in a thread, started and stopped cleanly.

The socket is bound here, in the caller's thread, so a taken port or a bad address
is an ``OSError`` from ``start()`` (a one-line config error), not a log line from a
thread that quietly died.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from dicom_archive.logs import get_logger
from dicom_archive.web.app import create_app
from dicom_archive.web.settings import WebSettings

log = get_logger("dicom_archive.web")
_START_TIMEOUT_S = 30.0


class WebServer:
    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.started_at = ""

    @property
    def port(self) -> int:
        assert self._socket is not None
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = self.settings.bind
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        app = create_app(self.settings)
        family = socket.AF_INET6 if ":" in self.settings.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by every accepted connection. Without it a keep-alive client waits
        # 40 ms per request: the body, written after the headers, sits in Nagle's
        # buffer until the client's delayed ACK (QIDO p50 48 ms -> 3 ms, measured).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.settings.bind, self.settings.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._socket = sock
        config = uvicorn.Config(
            app,
            log_config=None,  # our structlog setup stays; no access log (ours has no query)
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="dicom-archive-web"
        )
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the web server did not start on {self.url}")
            time.sleep(0.01)
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        log.info("web_listening", url=self.url, **self.settings.summary())

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._socket is not None:
            self._socket.close()
        self._server = None
        log.info("web_stopped")

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url if self._socket is not None else "",
            "bind": self.settings.bind,
            "port": self.port if self._socket is not None else self.settings.port,
            "auth": self.settings.auth,
            "started_at": self.started_at,
        }
