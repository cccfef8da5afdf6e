"""dicom-archive trash: list, restore and empty what delete (and retention) moved."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dicom_archive.archive.trash import empty, entries, restore
from dicom_archive.cli.common import add_archive_option, human_bytes, open_from_args, render_table
from dicom_archive.errors import EXIT_OK, EXIT_PROBLEMS, UsageError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "trash",
        help="list, restore or empty the trash",
        description="What 'delete' and retention moved to ARCHIVE/trash/: 'list' shows each "
        "entry, 'restore ID' puts its files and rows back, 'empty' removes entries for good "
        "(all, or --older-than DAYS). Restores and empties are recorded in the audit log.",
    )
    actions = parser.add_subparsers(dest="trash_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the entries in the trash")
    add_archive_option(listing)
    listing.add_argument("--format", "-f", choices=("table", "json"), default="table")
    back = actions.add_parser("restore", help="put an entry back into the archive")
    add_archive_option(back)
    back.add_argument("id", type=int, metavar="ID", help="the entry's ID (see: trash list)")
    gone = actions.add_parser("empty", help="remove trashed entries for good")
    add_archive_option(gone)
    gone.add_argument(
        "--older-than", type=float, metavar="DAYS", help="only entries deleted DAYS ago or more"
    )
    gone.add_argument("--id", type=int, action="append", metavar="ID", help="only this entry")
    gone.add_argument(
        "--yes", action="store_true", help="do not ask first (required when not on a terminal)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with open_from_args(args) as archive:
        if args.trash_action == "list":
            found = entries(archive)
            if args.format == "json":
                print(json.dumps([e.as_json() for e in found], ensure_ascii=False, indent=2))
                return EXIT_OK
            if not found:
                print("The trash is empty.")
                return EXIT_OK
            rows = []
            for e in found:
                study = e.studies[0] if e.studies else ("", "", "", "", "")
                more = f" +{len(e.studies) - 1}" if len(e.studies) > 1 else ""
                rows.append(
                    (
                        e.id,
                        e.created_at,
                        e.origin,
                        e.selection,
                        f"{study[0]} {study[1]}{more}",
                        e.instances,
                        human_bytes(e.bytes),
                        e.state,
                        e.reason,
                    )
                )
            headers = ("ID", "Deleted (UTC)", "By", "Selection", "Patient", "N", "Size")
            print(render_table((*headers, "State", "Reason"), rows))
            return EXIT_OK
        if args.trash_action == "restore":
            result = restore(archive, args.id)
            print(f"Restored {result.restored} instances from trash entry {args.id}.")
            if result.left_in_trash:
                print(
                    f"{len(result.left_in_trash)} instances were archived again since the "
                    f"delete and stay in the trash (entry {args.id}).",
                    file=sys.stderr,
                )
                return EXIT_PROBLEMS
            return EXIT_OK
        if args.older_than is not None and args.older_than < 0:
            raise UsageError("--older-than takes a number of days, 0 or more")
        if not args.yes:
            if not sys.stdin.isatty():
                print("Not emptying: this is not a terminal and --yes was not given.")
                return EXIT_PROBLEMS
            answer = input("Remove these trash entries for good? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                return EXIT_PROBLEMS
        result_empty = empty(archive, older_than_days=args.older_than, entry_ids=args.id)
    print(
        f"Removed {len(result_empty.entries)} trash entries, {result_empty.instances} instances "
        f"({human_bytes(result_empty.bytes)})."
    )
    for stranger in result_empty.strangers:
        print(f"left in place (not deleted by dicom-archive): {stranger}", file=sys.stderr)
    return EXIT_PROBLEMS if result_empty.strangers else EXIT_OK
