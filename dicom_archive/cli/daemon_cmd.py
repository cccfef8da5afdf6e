"""dicom-archive daemon: watch an incoming folder and archive what lands there."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dicom_archive.daemon.config import LOG_FORMATS, LOG_LEVELS, load_config


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "daemon",
        help="watch an incoming folder and archive the files dropped there",
        description="Run the watch-folder service: files and folders dropped into the "
        "incoming folder are archived once complete, then removed from incoming; files "
        "that cannot be archived are moved to the rejected folder with a NAME.reason.txt. "
        "Settings come from --config (see config.example.toml); the flags below override "
        "it, so the daemon also runs with no file at all. SIGTERM/SIGINT stop it, SIGHUP "
        "reloads the config file.",
    )
    parser.add_argument("--config", "-c", type=Path, metavar="FILE", help="a TOML config file")
    parser.add_argument("--archive", "-a", type=Path, help="the archive folder")
    parser.add_argument("--incoming", "-i", type=Path, help="the folder to watch")
    parser.add_argument("--rejected", "-r", type=Path, help="where files that fail go")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="overrides log_level")
    parser.add_argument("--log-format", choices=LOG_FORMATS, help="overrides log_format")
    parser.add_argument(
        "--init-archive",
        action="store_true",
        help="create an empty archive first if the archive folder holds none",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="print the effective configuration as JSON and exit (0 when valid)",
    )
    parser.set_defaults(run=run)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "archive": args.archive,
        "incoming": args.incoming,
        "rejected": args.rejected,
        "log_level": args.log_level,
        "log_format": args.log_format,
    }


def run(args: argparse.Namespace) -> int:
    overrides = overrides_from_args(args)
    if args.check_config:
        config = load_config(args.config, overrides)
        print(json.dumps(config.summary(), indent=2, ensure_ascii=False))
        return 0
    # Imported here: `dicom-archive query` should not pay for watchdog's import.
    from dicom_archive.daemon.service import run_daemon

    return run_daemon(args.config, overrides, init_archive=args.init_archive)
