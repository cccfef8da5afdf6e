"""dicom-archive snapshot: rewrite archive_index.json now, or say whether it is current."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from dicom_archive.archive.snapshot import snapshot_state, write_snapshot
from dicom_archive.cli.common import add_archive_option, open_from_args


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "snapshot",
        help="rewrite archive_index.json from the index",
        description="Rewrite archive_index.json (the whole index in the original tool's "
        "JSON shape) from the index now. An import rewrites it itself only when that is "
        "cheap next to the import; otherwise the previous document stays, complete but "
        "stale, until this command or the daemon rewrites it.",
    )
    add_archive_option(parser)
    parser.add_argument(
        "--check",
        action="store_true",
        help="only say whether it is current (exit 1 when stale or unknown)",
    )
    parser.add_argument(
        "--format", "-f", choices=("text", "json"), default="text", help="text (default) or json"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with open_from_args(args) as archive:
        if not args.check:
            started = time.perf_counter()
            write_snapshot(archive.paths, archive.index)
            seconds = time.perf_counter() - started
        state = snapshot_state(archive.paths, archive.index)
    if args.format == "json":
        print(json.dumps(state.as_json(), ensure_ascii=False, indent=2))
    elif args.check:
        print(f"archive_index.json: {state.describe()}")
    else:
        print(f"archive_index.json written: {state.instances} instances in {seconds:.2f} s")
    return 0 if state.current or not args.check else 1
