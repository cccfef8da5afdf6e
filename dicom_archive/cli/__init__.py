"""The ``dicom-archive`` command: argument parsing and rendering only.

Every command is a module with ``add_parser(subparsers)`` and ``run(args) -> int``.
Errors the user can cause arrive as ``ArchiveError`` and leave as one line on
stderr with the error's exit code; anything else is a bug (traceback with --debug).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from dicom_archive import __version__
from dicom_archive.cli import (
    check_cmd,
    daemon_cmd,
    export_cmd,
    import_cmd,
    init_cmd,
    list_cmd,
    listen_cmd,
    query_cmd,
    rebuild_cmd,
    send_cmd,
    stats_cmd,
    status_cmd,
)
from dicom_archive.errors import EXIT_PROBLEMS, ArchiveError

COMMANDS = [
    init_cmd,
    import_cmd,
    query_cmd,
    list_cmd,
    export_cmd,
    check_cmd,
    stats_cmd,
    rebuild_cmd,
    daemon_cmd,
    status_cmd,
    listen_cmd,
    send_cmd,
]
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-archive",
        description="A local DICOM archive: import files, query, export and check them.",
        epilog="Run 'dicom-archive COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"dicom-archive {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show a traceback when something goes wrong"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ArchiveError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"dicom-archive: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dicom-archive: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, without a second error at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        else:
            print(
                f"dicom-archive: unexpected error: {exc.__class__.__name__}: {exc} "
                "(run with --debug for details)",
                file=sys.stderr,
            )
        return EXIT_PROBLEMS
