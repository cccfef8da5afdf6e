"""A real uvicorn on 127.0.0.1 serving tests.web.ui_app, in its own process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.web.ui_app import ROOT_VARIABLE

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def serve(
    root: Path,
    factory: str = "tests.web.ui_app:create_test_app",
    env: dict[str, str] | None = None,
    probe: str = "/metrics",
) -> Iterator[str]:
    """The base URL of a uvicorn serving ``factory`` (by default our routes on the
    archive at ``root``); stopped (SIGTERM) on exit."""
    # The socket is bound here and handed over (--fd): no free-port race.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    environment = dict(os.environ, **{ROOT_VARIABLE: str(root)}, **(env or {}))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            factory,
            "--fd",
            str(listener.fileno()),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=environment,
        pass_fds=(listener.fileno(),),
    )
    listener.close()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + probe, timeout=5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"uvicorn did not start (exit {process.poll()})") from None
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
