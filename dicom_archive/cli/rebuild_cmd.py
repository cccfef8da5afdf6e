"""dicom-archive rebuild: rebuild the index from the files under data/."""

from __future__ import annotations

import argparse
from typing import Any

from dicom_archive.archive.rebuild import RebuildReport, rebuild_index
from dicom_archive.cli.common import add_archive_option, safe
from dicom_archive.errors import EXIT_OK, EXIT_PROBLEMS

#: Lines shown per kind of change unless --verbose.
_SHOWN = 20


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "rebuild",
        help="rebuild the index from the files under data/",
        description="Rebuild the index (archive.db) from the files under data/: the files "
        "are the source of truth, and their place in the layout and their headers are "
        "enough. Never deletes or moves a data file. Also adopts an archive made by the "
        "original tool (archive_index.json and data/, no archive.db) and an index SQLite "
        "cannot open or whose integrity check fails; the previous index is kept aside "
        "(archive.db.previous-TIME or archive.db.damaged-TIME), never overwritten. Stop the "
        "daemon and any import first. Exit 0 when every file under data/ is indexed, 1 "
        "when some were skipped (listed with their reason).",
    )
    add_archive_option(parser, "the archive folder (the one holding data/)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would change (instances added, rows dropped, values that differ) "
        "and change nothing",
    )
    parser.add_argument("--verbose", action="store_true", help="list every change")
    parser.set_defaults(run=run)


def _section(title: str, lines: list[str], verbose: bool) -> None:
    if not lines:
        return
    print(f"{title} ({len(lines)}):")
    shown = lines if verbose else lines[:_SHOWN]
    for line in shown:
        print("  " + safe(line))
    if len(shown) < len(lines):
        print(f"  ... and {len(lines) - len(shown)} more (--verbose lists them all)")


def render(report: RebuildReport, verbose: bool) -> None:
    would = "would be " if report.dry_run else ""
    source = {
        "index": "the existing index",
        "damaged index": "a damaged index",
        "snapshot": "archive_index.json (no archive.db)",
        "nothing": "no previous index",
    }.get(report.previous, report.previous)
    print(
        f"Compared with {source}"
        + (f": {report.previous_detail}" if report.previous_detail else "")
    )
    _section(f"Instances {would}added", [f"{a.path}" for a in report.added], verbose)
    _section(
        f"Rows {would}dropped",
        [f"{d.path} ({d.sop_instance_uid})" for d in report.dropped],
        verbose,
    )
    _section(
        f"Values that {'would ' if report.dry_run else ''}change",
        [f"{c.sop_instance_uid} {c.column}: {c.old!r} -> {c.new!r}" for c in report.changed],
        verbose,
    )
    _section(
        "Files not indexed (left in place)",
        [f"{s.path}: {s.reason}" for s in report.skipped],
        verbose,
    )
    _section("Indexed where they lie, not at their layout path", list(report.misplaced), verbose)
    for name in report.kept_aside:
        print(f"Kept aside: {safe(name)}")
    verb = "would hold" if report.dry_run else "now holds"
    print(
        f"{report.files_seen} files under data/, the index {verb} {report.instances} instances: "
        f"{len(report.added)} added, {len(report.dropped)} dropped, {len(report.changed)} "
        f"values changed, {len(report.skipped)} files skipped, in {report.seconds:.1f} s"
        + (" (dry run: nothing changed)" if report.dry_run else "")
    )


def run(args: argparse.Namespace) -> int:
    report = rebuild_index(args.archive, dry_run=args.dry_run)
    render(report, args.verbose)
    return EXIT_PROBLEMS if report.skipped else EXIT_OK
