"""The ``dicom-archive`` command: argument parsing and rendering only.

Every command is a module with ``add_parser(subparsers)`` and ``run(args) -> int``.
Only the module of the command being run is imported (``check`` need not load pydicom
or structlog); ``--help`` and mistyped commands get the full parser.
Errors the user can cause arrive as ``ArchiveError`` and leave as one line on
stderr with the error's exit code; anything else is a bug (traceback with --debug).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from dicom_archive import __version__
from dicom_archive.errors import EXIT_PROBLEMS, ArchiveError

#: Command name -> its module under dicom_archive.cli, in the order of ``--help``.
#: A command's module is imported only when that command runs (or for ``--help``):
#: importing all of them cost about 0.2 s of every run's start-up.
COMMANDS = {
    "init": "init_cmd",
    "import": "import_cmd",
    "query": "query_cmd",
    "list": "list_cmd",
    "export": "export_cmd",
    "check": "check_cmd",
    "stats": "stats_cmd",
    "snapshot": "snapshot_cmd",
    "rebuild": "rebuild_cmd",
    "daemon": "daemon_cmd",
    "status": "status_cmd",
    "listen": "listen_cmd",
    "send": "send_cmd",
    # issue 11 (lifecycle): audit log, delete/trash, retention
    "audit": "audit_cmd",
    "delete": "delete_cmd",
    "trash": "trash_cmd",
    "retention": "retention_cmd",
    "protect": "protect_cmd",
    "unprotect": "unprotect_cmd",
    "web": "web_cmd",
}
EXIT_INTERRUPTED = 130


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"dicom_archive.cli.{COMMANDS[name]}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``only`` a parser that knows that one command."""
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
    for name in [only] if only in COMMANDS else COMMANDS:
        assert name is not None
        command_module(name).add_parser(subparsers)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The command word (the first argument that is not an option), if it is known."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_in(words))
    args = parser.parse_args(words)
    try:
        return int(args.run(args))
    except ArchiveError as exc:
        if args.debug:
            import traceback

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
            import traceback

            traceback.print_exc()
        else:
            print(
                f"dicom-archive: unexpected error: {exc.__class__.__name__}: {exc} "
                "(run with --debug for details)",
                file=sys.stderr,
            )
        return EXIT_PROBLEMS
