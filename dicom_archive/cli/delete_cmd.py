"""dicom-archive delete: move a study, series or patient to the archive's trash."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dicom_archive.archive.trash import Selection, delete, preview
from dicom_archive.cli.common import add_archive_option, human_bytes, open_from_args, safe
from dicom_archive.errors import EXIT_OK, EXIT_PROBLEMS


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "delete",
        help="move a study, series or patient to the trash (undo with: trash restore)",
        description="Move the selected instances' files (a rename, no copy) and rows to the "
        "trash inside the archive. Nothing outside the selection is touched; protected "
        "studies and patients are refused. 'trash restore ID' puts them back, 'trash empty' "
        "removes them for good. Every delete is recorded in the audit log.",
    )
    add_archive_option(parser)
    selector = parser.add_mutually_exclusive_group(required=True)
    selector.add_argument("--study-uid", metavar="U", help="a Study Instance UID")
    selector.add_argument("--series-uid", metavar="U", help="a Series Instance UID")
    selector.add_argument("--patient-id", metavar="ID", help="a Patient ID (exact)")
    parser.add_argument("--reason", metavar="TEXT", help="why (kept in the audit log)")
    parser.add_argument(
        "--yes",
        action="store_true",
        help="do not ask first (without it, a non-interactive run only lists the selection)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    selection = Selection(args.study_uid, args.series_uid, args.patient_id)
    with open_from_args(args) as archive:
        seen = preview(archive, selection)
        if not seen.studies:
            print(
                f"dicom-archive: nothing in the archive matches {safe(selection.describe())}",
                file=sys.stderr,
            )
            return EXIT_PROBLEMS
        print(
            f"{selection.describe()}: {seen.instances} instances "
            f"({human_bytes(seen.bytes)}) in {len(seen.studies)} studies:"
            if len(seen.studies) != 1
            else f"{selection.describe()}: {seen.instances} instances "
            f"({human_bytes(seen.bytes)}) in 1 study:"
        )
        for patient_id, name, study_uid, date, description, count in seen.studies:
            print(safe(f"  {patient_id} {name}  {date} {description}  {study_uid}  ({count})"))
        if seen.protected:
            print(
                safe(
                    f"dicom-archive: {selection.describe()} includes protected "
                    f"{', '.join(seen.protected)}; unprotect it first (dicom-archive unprotect)"
                ),
                file=sys.stderr,
            )
            return EXIT_PROBLEMS
        if not args.yes and not _confirmed(seen.instances):
            return EXIT_PROBLEMS
        made = delete(archive, selection, reason=args.reason)
    print(
        f"Moved {made.instances} instances ({human_bytes(made.bytes)}) to the trash as entry "
        f"{made.id}; undo with: dicom-archive trash restore {made.id} -a {safe(args.archive)}"
    )
    return EXIT_OK


def _confirmed(count: int) -> bool:
    if not sys.stdin.isatty():
        print("Not deleting: this is not a terminal and --yes was not given.")
        return False
    answer = input(f"Move these {count} instances to the trash? [y/N] ")
    return answer.strip().lower() in ("y", "yes")
