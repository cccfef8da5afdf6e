"""dicom-archive listen: the archive on the DICOM network, without the watch folder."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from dicom_archive.cli.common import add_archive_option
from dicom_archive.errors import UsageError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "listen",
        help="answer C-ECHO, C-STORE and C-FIND on the DICOM network",
        description="Listen for DICOM associations: C-ECHO; C-STORE of any storage SOP "
        "class in any common transfer syntax, archived as sent through the same importer "
        "as files (Success only once the instance is durable; a conflicting duplicate "
        "fails with 0xC001, a rejected file with 0xC002, a transient failure with 0xA700 "
        "so the sender retries); C-FIND (Patient and Study Root, every level) from the "
        "index. Binds to 127.0.0.1 unless --bind says otherwise. Callers must be known "
        "peers (--peer AE=HOST:PORT, or [dicom.peers] in --config); --store-from-anyone "
        "accepts C-STORE from any caller, never queries. SIGTERM or Ctrl-C stops it.",
    )
    add_archive_option(parser)
    parser.add_argument(
        "--config", "-c", type=Path, metavar="FILE", help="a TOML file with a [dicom] table"
    )
    parser.add_argument("--ae-title", help="our AE title (default DICOM_ARCHIVE)")
    parser.add_argument("--bind", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", "-p", type=int, help="TCP port (default 11112)")
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="AE=HOST:PORT",
        help="a known peer (allowed to call; a C-MOVE destination); repeatable",
    )
    parser.add_argument(
        "--store-from-anyone",
        action="store_true",
        help="accept C-STORE from callers that are not peers",
    )
    parser.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace) -> Any:
    from dicom_archive.daemon.config import load_config_file
    from dicom_archive.network.settings import parse_settings

    raw: dict[str, Any] = {}
    source = "command line"
    if args.config is not None:
        section = load_config_file(args.config).get("dicom", {})
        if not isinstance(section, dict):
            raise UsageError(f"{args.config}: [dicom] must be a table")
        raw, source = dict(section), str(args.config)
    for key, value in (("ae_title", args.ae_title), ("bind", args.bind), ("port", args.port)):
        if value is not None:
            raw[key] = value
    if args.store_from_anyone:
        raw["store_from_anyone"] = True
    if args.peer:
        peers = dict(raw.get("peers", {}))
        for text in args.peer:
            ae_title, sep, where = text.partition("=")
            if not sep:
                raise UsageError(f"--peer {text!r}: expected AE=HOST:PORT")
            peers[ae_title] = where
        raw["peers"] = peers
    return parse_settings(raw, source)


def run(args: argparse.Namespace) -> int:
    from dicom_archive.archive.store import is_archive
    from dicom_archive.errors import NotAnArchive
    from dicom_archive.logs import configure_logging
    from dicom_archive.network.server import DicomServer

    settings = settings_from_args(args)
    root = Path(args.archive)
    if not is_archive(root):
        raise NotAnArchive(root)
    configure_logging()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server = DicomServer(root, settings)
    try:
        server.start()
    except OSError as exc:
        where = f"{settings.bind}:{settings.port}"
        raise UsageError(f"cannot listen on {where} ({exc.strerror})") from exc
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0
