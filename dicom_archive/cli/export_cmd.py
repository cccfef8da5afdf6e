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
from dicom_archive.errors import EXIT_OK, EXIT_PROBLEMS, UsageError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="copy a study, series or patient out of the archive",
        description="Copy byte-identical files into OUTPUT/PATIENT/STUDY/SERIES/SOP.dcm (or "
        "all into OUTPUT with --flatten). An identical file already there is skipped; a "
        "different one is an error and is never overwritten.",
    )
    add_archive_option(parser)
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        metavar="DIR",
        help="the folder to copy into (a name ending in .zip: a ZIP file, as --zip)",
    )
    selector = parser.add_mutually_exclusive_group(required=True)
    selector.add_argument("--study-uid", metavar="U", help="a Study Instance UID")
    selector.add_argument("--series-uid", metavar="U", help="a Series Instance UID")
    selector.add_argument("--patient-id", metavar="ID", help="a Patient ID (exact)")
    parser.add_argument("--flatten", action="store_true", help="all files directly in DIR")
    parser.add_argument("--verbose", action="store_true", help="one line per file")
    add_media_options(parser)
    _add_deidentify_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.deidentify or _deidentify_options_given(args):
        return _run_deidentified(args)
    media = run_media(args)
    if media is not None:
        return media
    if args.output is None:
        raise UsageError("say where to: --output DIR, --zip FILE or --dicomdir DIR")
    started = time.perf_counter()
    selector = Selector(args.study_uid, args.series_uid, args.patient_id)
    with open_from_args(args) as archive:
        progress = _FileProgress("exporting", args.verbose)

        report = export_instances(
            archive,
            selector,
            args.output,
            flatten=args.flatten,
            on_selected=progress.selected,
            on_file=progress.file,
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


class _FileProgress:
    """The progress bar of a folder export, and with --verbose one line per file."""

    def __init__(self, label: str, verbose: bool) -> None:
        self.label = label
        self.verbose = verbose
        self.bar = ProgressBar(0, label)

    def selected(self, total: int) -> None:
        self.bar = ProgressBar(total, self.label)

    def file(self, item: ExportItem, status: str) -> None:
        self.bar.advance()
        if self.verbose:
            self.bar.close()
            print(safe(f"{status:9}  {item.file_path}"))

    def close(self) -> None:
        self.bar.close()


# -- issue 11 (lifecycle): ZIP file and DICOMDIR media -----------------------------


def add_media_options(parser: argparse.ArgumentParser) -> None:
    media = parser.add_argument_group("a ZIP file or DICOMDIR media instead of a folder")
    media.add_argument(
        "--zip",
        type=Path,
        metavar="FILE",
        help="one ZIP file (streamed, ZIP64 when large) with readable Patient/Study/Series "
        "folders; an existing FILE is refused",
    )
    media.add_argument(
        "--dicomdir",
        type=Path,
        metavar="DIR",
        help="a PS3.10 file-set in DIR (new or empty): DICOMDIR plus DICOM/PAT00001/... with "
        "8-character File IDs, ready for a CD, DVD or USB stick",
    )


def run_media(args: argparse.Namespace) -> int | None:
    """The exit code of a --zip or --dicomdir export, or None for a folder export."""
    output = args.output
    as_zip = args.zip
    if output is not None and output.suffix.lower() == ".zip" and not output.is_dir():
        if as_zip is not None:
            raise UsageError("give the ZIP file once: --zip FILE or -o FILE.zip")
        as_zip, output = output, None
    chosen = [x for x in (output, as_zip, args.dicomdir) if x is not None]
    if len(chosen) > 1:
        raise UsageError("choose one of --output DIR, --zip FILE, --dicomdir DIR")
    if as_zip is None and args.dicomdir is None:
        return None
    if getattr(args, "flatten", False):
        raise UsageError("--flatten applies to --output DIR only")
    selector = Selector(args.study_uid, args.series_uid, args.patient_id)
    if as_zip is not None:
        return _run_zip(args, selector, as_zip)
    return _run_dicomdir(args, selector, args.dicomdir)


def _run_zip(args: argparse.Namespace, selector: Selector, target: Path) -> int:
    from dicom_archive.archive.export_zip import ZipMember, export_zip

    started = time.perf_counter()
    with open_from_args(args) as archive:
        progress = ProgressBar(0, "zipping")

        def on_selected(total: int) -> None:
            nonlocal progress
            progress = ProgressBar(total, "zipping")

        def on_member(member: ZipMember, status: str) -> None:
            progress.advance()
            if args.verbose:
                progress.close()
                print(safe(f"{status:9}  {member.file_path}  ->  {member.name}"))

        report = export_zip(archive, selector, target, on_selected=on_selected, on_member=on_member)
        progress.close()
    for error in report.errors:
        print(f"error  {safe(error)}", file=sys.stderr)
    failed = f", {len(report.errors)} errors" if report.errors else ""
    print(
        f"{report.written} files ({human_bytes(report.bytes_written)}) in {safe(target)} "
        f"({human_bytes(report.zip_bytes)}){failed} in {time.perf_counter() - started:.1f} s"
    )
    return EXIT_PROBLEMS if report.errors else EXIT_OK


def _run_dicomdir(args: argparse.Namespace, selector: Selector, target: Path) -> int:
    from dicom_archive.archive.dicomdir import export_dicomdir

    started = time.perf_counter()
    with open_from_args(args) as archive:
        report = export_dicomdir(archive, selector, target)
    for error in report.errors:
        print(f"error  {safe(error)}", file=sys.stderr)
    for warning in report.warnings:
        print(f"warning  {safe(warning)}", file=sys.stderr)
    print(
        f"{report.written} files ({human_bytes(report.bytes_written)}) in the file-set "
        f"{safe(target)}; media profile: {report.profile}"
        f" in {time.perf_counter() - started:.1f} s"
    )
    return EXIT_PROBLEMS if report.errors else EXIT_OK


# --- De-identified export (--deidentify): PS3.15 Annex E, archive/deid_export.py -------

_DEID_FLAGS = (
    "clean_descriptors",
    "retain_patient_characteristics",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_uids",
    "retain_safe_private",
)


def _add_deidentify_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "de-identification",
        "PS3.15 Annex E Basic Application Level Confidentiality Profile and its options. "
        "Text burned into the pixels is NOT removed: each series that may carry it is "
        "named in a warning.",
    )
    group.add_argument(
        "--deidentify", action="store_true", help="write de-identified copies, not the originals"
    )
    group.add_argument("--profile", choices=["basic"], default=None, help="the profile (basic)")
    dates = group.add_mutually_exclusive_group()
    dates.add_argument(
        "--retain-dates", action="store_true", help="keep dates and times as they are (113106)"
    )
    dates.add_argument(
        "--shift-dates",
        action="store_true",
        help="move every date back by a per-patient offset, keeping intervals (113107)",
    )
    group.add_argument(
        "--clean-descriptors",
        action="store_true",
        help="keep descriptions, with the instance's names, IDs and dates removed (113105)",
    )
    group.add_argument(
        "--retain-patient-characteristics",
        action="store_true",
        help="keep sex, age, size, weight... (113108)",
    )
    group.add_argument(
        "--retain-device-identity",
        action="store_true",
        help="keep station name, device serial numbers... (113109)",
    )
    group.add_argument(
        "--retain-institution-identity",
        action="store_true",
        help="keep institution name and address (113112)",
    )
    group.add_argument("--retain-uids", action="store_true", help="keep the original UIDs (113110)")
    group.add_argument(
        "--retain-safe-private",
        action="store_true",
        help="keep the private attributes the file itself declares safe in its Private Data "
        "Element Characteristics Sequence (113111)",
    )
    group.add_argument(
        "--project",
        metavar="NAME",
        help="pseudonyms, UIDs and date offsets are stable per patient within a project "
        "(default: 'default')",
    )
    group.add_argument("--reason", metavar="TEXT", help="why, for the audit log")


def _deidentify_options_given(args: argparse.Namespace) -> bool:
    return bool(
        args.profile
        or args.retain_dates
        or args.shift_dates
        or args.project is not None
        or args.reason is not None
        or any(getattr(args, name) for name in _DEID_FLAGS)
    )


def _run_deidentified(args: argparse.Namespace) -> int:
    from dicom_archive.archive.deid_export import export_deidentified
    from dicom_archive.archive.deidentify import DeidOptions

    if not args.deidentify:
        raise UsageError("de-identification options need --deidentify")
    if args.output is None or args.zip is not None or args.dicomdir is not None:
        raise UsageError("--deidentify writes into a folder: --output DIR (not --zip, --dicomdir)")
    project = "default" if args.project is None else args.project
    if not project or len(project) > 64 or not project.isprintable():
        raise UsageError("--project: 1 to 64 printable characters")
    options = DeidOptions(
        dates="retain" if args.retain_dates else "shift" if args.shift_dates else "remove",
        project=project,
        **{name: bool(getattr(args, name)) for name in _DEID_FLAGS},
    )
    started = time.perf_counter()
    selector = Selector(args.study_uid, args.series_uid, args.patient_id)
    with open_from_args(args) as archive:
        progress = _FileProgress("de-identifying", args.verbose)

        report = export_deidentified(
            archive,
            selector,
            args.output,
            options,
            flatten=args.flatten,
            reason=args.reason,
            on_selected=progress.selected,
            on_file=progress.file,
        )
        progress.close()
    for error in report.errors:
        print(f"error  {safe(error)}", file=sys.stderr)
    for warning in report.pixel_warnings:
        print(
            f"warning  series {warning.series_instance_uid} ({warning.modality or 'no modality'}, "
            f"{warning.instances} instance{'s' if warning.instances != 1 else ''}): "
            f"{warning.reason}",
            file=sys.stderr,
        )
    if report.pixel_warnings:
        print(
            "warning  pixels are NOT cleaned: review the series above for burned-in names, "
            "dates or IDs before sharing",
            file=sys.stderr,
        )
    seconds = time.perf_counter() - started
    skipped = f", {report.skipped_identical} already there" if report.skipped_identical else ""
    failed = f", {len(report.errors)} errors" if report.errors else ""
    print(
        f"{report.written} files de-identified ({human_bytes(report.bytes_written)}){skipped}"
        f"{failed} for {report.patients} patient{'s' if report.patients != 1 else ''}, "
        f"project {safe(project)!r}, "
        f"to {safe(args.output)} in {seconds:.1f} s"
    )
    return EXIT_PROBLEMS if report.errors else EXIT_OK
