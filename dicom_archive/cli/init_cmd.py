"""dicom-archive init: create an empty archive."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dicom_archive.archive.store import init_archive


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "init",
        help="create an empty archive",
        description="Create an archive: its index (archive.db), data/ folder and an empty "
        "archive_index.json. Refuses an existing archive unless --force.",
    )
    parser.add_argument("--path", "-p", required=True, type=Path, help="the archive folder")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing archive's index and data/ with an empty archive "
        "(never deletes files that are not part of an archive)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with init_archive(args.path, force=args.force) as archive:
        print(f"Created an empty archive at {archive.root}")
        print(f"Import files with: dicom-archive import FILES... --archive {archive.root}")
    return 0
