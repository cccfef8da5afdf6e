"""dicom-archive export: copy a study, series or patient out of the archive."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from dicom_archive.archive.export import ExportItem, Selector, export_instances
from dicom_archive.cli.common import (
    ProgressBar,
    add_archive_option,
    human_bytes,
    open_from_args,
    safe,
)
from dicom_archive.errors import EXIT_OK, EXIT_PROBLEMS


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="copy a study, series or patient out of the archive",
        description="Copy byte-identical files into OUTPUT/PATIENT/STUDY/SERIES/SOP.dcm (or "
        "all into OUTPUT with --flatten). An identical file already there is skipped; a "
        "different one is an error and is never overwritten.",
    )
    add_archive_option(parser)
    parser.add_argument("--output", "-o", required=True, type=Path, metavar="DIR")
    selector = parser.add_mutually_exclusive_group(required=True)
    selector.add_argument("--study-uid", metavar="U", help="a Study Instance UID")
    selector.add_argument("--series-uid", metavar="U", help="a Series Instance UID")
    selector.add_argument("--patient-id", metavar="ID", help="a Patient ID (exact)")
    parser.add_argument("--flatten", action="store_true", help="all files directly in DIR")
    parser.add_argument("--verbose", action="store_true", help="one line per file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    selector = Selector(args.study_uid, args.series_uid, args.patient_id)
    with open_from_args(args) as archive:
        progress = ProgressBar(0, "exporting")

        def on_selected(total: int) -> None:
            nonlocal progress
            progress = ProgressBar(total, "exporting")

        def on_file(item: ExportItem, status: str) -> None:
            progress.advance()
            if args.verbose:
                progress.close()
                print(safe(f"{status:9}  {item.file_path}"))

        report = export_instances(
            archive,
            selector,
            args.output,
            flatten=args.flatten,
            on_selected=on_selected,
            on_file=on_file,
        )
        progress.close()
    for error in report.errors:
        print(f"error  {safe(error)}", file=sys.stderr)
    seconds = time.perf_counter() - started
    skipped = f", {report.skipped_identical} already there" if report.skipped_identical else ""
    failed = f", {len(report.errors)} errors" if report.errors else ""
    print(
        f"{report.copied} files exported ({human_bytes(report.bytes_copied)}){skipped}{failed} "
        f"to {safe(args.output)} in {seconds:.1f} s"
    )
    return EXIT_PROBLEMS if report.errors else EXIT_OK
