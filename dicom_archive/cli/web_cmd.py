"""dicom-archive web: the archive's DICOMweb face (QIDO-RS, WADO-RS, STOW-RS, WADO-URI)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from dicom_archive.errors import UsageError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "web",
        help="serve the archive over DICOMweb (QIDO-RS, WADO-RS, STOW-RS, WADO-URI)",
        description="Serve the archive over HTTP as a DICOMweb origin server for web viewers "
        "(OHIF) and scripts (dicomweb-client): searches from the index, instances as "
        "stored, metadata cached per series, frames, uploads through the same importer as "
        "files. Binds to 127.0.0.1:8042 unless --bind/--port say otherwise; a non-loopback "
        "address needs authentication ([web] auth in --config). SIGTERM or Ctrl-C stops it.",
    )
    parser.add_argument(
        "--archive", "-a", type=Path, metavar="ARCHIVE", help="the archive folder to serve"
    )
    parser.add_argument(
        "--config", "-c", type=Path, metavar="FILE", help="a TOML file with a [web] table"
    )
    parser.add_argument("--bind", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", "-p", type=int, help="TCP port (default 8042)")
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser pages from ORIGIN (e.g. http://localhost:3000, or *); repeatable",
    )
    parser.add_argument(
        "--hash-password",
        action="store_true",
        help="read a password on stdin, print its hash for [web] password_hash, and exit",
    )
    parser.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace) -> Any:
    from dicom_archive.daemon.config import load_config_file
    from dicom_archive.web.settings import parse_web_settings

    raw: dict[str, Any] = {}
    source = "command line"
    archive = args.archive
    if args.config is not None:
        table = load_config_file(args.config)
        section = table.get("web", {})
        if not isinstance(section, dict):
            raise UsageError(f"{args.config}: [web] must be a table")
        raw, source = dict(section), str(args.config)
        if archive is None and isinstance(table.get("archive"), str):
            archive = Path(table["archive"])
    if archive is None:
        raise UsageError("--archive is required (or an archive key in --config)")
    for key, value in (("bind", args.bind), ("port", args.port)):
        if value is not None:
            raw[key] = value
    if args.cors_origin:
        raw["cors_origins"] = list(args.cors_origin)
    return parse_web_settings(raw, source, Path(archive))


def run(args: argparse.Namespace) -> int:
    if args.hash_password:
        from dicom_archive.web.settings import hash_password

        if sys.stdin.isatty():
            import getpass

            password = getpass.getpass("Password: ")
        else:
            password = sys.stdin.readline().rstrip("\n")
        if not password:
            raise UsageError("an empty password cannot be hashed")
        print(hash_password(password))
        return 0
    from dicom_archive.archive.store import is_archive
    from dicom_archive.errors import NotAnArchive
    from dicom_archive.logs import configure_logging
    from dicom_archive.web.server import WebServer

    settings = settings_from_args(args)
    if not is_archive(settings.archive_root):
        raise NotAnArchive(settings.archive_root)
    configure_logging()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server = WebServer(settings)
    try:
        server.start()
    except OSError as exc:
        where = f"{settings.bind}:{settings.port}"
        raise UsageError(f"cannot listen on {where} ({exc.strerror or exc})") from exc
    try:
        while not stop.wait(0.5):
            if not server.alive():
                raise UsageError("the web server stopped unexpectedly")
    finally:
        server.stop()
    return 0
