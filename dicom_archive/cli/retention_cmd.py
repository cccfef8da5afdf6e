"""dicom-archive retention / protect / unprotect: the rules that let old studies go,
and the studies and patients they never touch."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dicom_archive.archive.retention import (
    RetentionSettings,
    apply_retention,
    due_studies,
    parse_retention,
    protect,
    protected_items,
    recorded_settings,
    unprotect,
)
from dicom_archive.archive.store import Archive
from dicom_archive.cli.common import add_archive_option, human_bytes, open_from_args, render_table
from dicom_archive.errors import EXIT_OK, EXIT_PROBLEMS, UsageError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "retention",
        help="list (--dry-run) or apply the retention rules through the trash",
        description="The [retention] rules of a daemon config file (--config), or those "
        "the daemon last started with: studies older than N days by study date or import "
        "date, optionally per modality. Protected studies and patients (dicom-archive "
        "protect, or the config's protect_studies/protect_patients) are never touched. "
        "Without --dry-run the due studies move to the trash, one entry per study.",
    )
    add_archive_option(parser)
    parser.add_argument("--config", "-c", type=Path, metavar="FILE", help="a daemon config file")
    parser.add_argument("--dry-run", action="store_true", help="only list what would go")
    parser.add_argument("--yes", action="store_true", help="apply without asking")
    parser.add_argument("--format", "-f", choices=("table", "json"), default="table")
    parser.set_defaults(run=run)


_PROTECT_HELP = {
    "protect": "keep a study or patient from retention and delete (alone: list them)",
    "unprotect": "let retention and delete touch a study or patient again",
}


def add_protect_parser(subparsers: Any, name: str) -> None:
    text = _PROTECT_HELP[name]
    parser = subparsers.add_parser(name, help=text, description=text.capitalize() + ".")
    add_archive_option(parser)
    which = parser.add_mutually_exclusive_group(required=name == "unprotect")
    which.add_argument("--study-uid", metavar="U", help="a Study Instance UID")
    which.add_argument("--patient-id", metavar="ID", help="a Patient ID (exact)")
    parser.add_argument("--reason", metavar="TEXT", help="why (kept in the audit log)")
    parser.set_defaults(run=run_protect if name == "protect" else run_unprotect)


def settings_from(args: argparse.Namespace, archive: Archive) -> RetentionSettings:
    if args.config is not None:
        from dicom_archive.daemon.config import load_config_file

        raw = load_config_file(args.config)
        return parse_retention(raw.get("retention", {}), str(args.config))
    recorded = recorded_settings(archive)
    if recorded is None:
        raise UsageError(
            "no retention rules: pass --config FILE (a daemon config with a [retention] "
            "table), or start the daemon with one"
        )
    return recorded


def run(args: argparse.Namespace) -> int:
    with open_from_args(args) as archive:
        settings = settings_from(args, archive)
        due = due_studies(archive, settings)
        if args.format == "json" and args.dry_run:
            print(json.dumps([d.as_json() for d in due], ensure_ascii=False, indent=2))
            return EXIT_OK
        for rule in settings.rules:
            print(f"rule: {rule.describe()}")
        if not settings.rules:
            print("No retention rules.")
        if not due:
            print("No study is due.")
            return EXIT_OK
        print(
            render_table(
                ("Patient ID", "Name", "Date", "Last import", "Study UID", "Mod", "N", "Size"),
                [
                    (
                        d.patient_id,
                        d.patient_name,
                        d.study_date,
                        d.last_import[:10],
                        d.study_instance_uid,
                        d.modalities,
                        d.instances,
                        human_bytes(d.bytes),
                    )
                    for d in due
                ],
            )
        )
        total = sum(d.instances for d in due)
        print(
            f"{len(due)} studies, {total} instances "
            f"({human_bytes(sum(d.bytes for d in due))}) are due."
        )
        if args.dry_run:
            return EXIT_OK
        if not args.yes:
            if not sys.stdin.isatty():
                print("Not applying: this is not a terminal and --yes was not given.")
                return EXIT_PROBLEMS
            if input("Move them to the trash? [y/N] ").strip().lower() not in ("y", "yes"):
                return EXIT_PROBLEMS
        result = apply_retention(archive, settings)
    print(
        f"Moved {len(result.studies)} studies, {result.instances} instances "
        f"({human_bytes(result.bytes)}) to the trash (entries "
        f"{', '.join(map(str, result.trash_ids)) or '-'})."
    )
    for why in result.skipped:
        print(f"skipped: {why}", file=sys.stderr)
    return EXIT_OK


def run_protect(args: argparse.Namespace) -> int:
    with open_from_args(args) as archive:
        if args.study_uid is None and args.patient_id is None:
            items = protected_items(archive)
            if not items:
                print("Nothing is protected.")
            else:
                print(
                    render_table(
                        ("Kind", "Value", "Since (UTC)", "Reason"),
                        [(i.kind, i.value, i.at, i.reason) for i in items],
                    )
                )
            return EXIT_OK
        kind, value = ("study", args.study_uid) if args.study_uid else ("patient", args.patient_id)
        added = protect(archive, kind, value, reason=args.reason)
    print(f"{kind} {value} {'is now' if added else 'was already'} protected.")
    return EXIT_OK


def run_unprotect(args: argparse.Namespace) -> int:
    with open_from_args(args) as archive:
        kind, value = ("study", args.study_uid) if args.study_uid else ("patient", args.patient_id)
        removed = unprotect(archive, kind, value, reason=args.reason)
    if not removed:
        print(f"dicom-archive: {kind} {value} was not protected", file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"{kind} {value} is no longer protected.")
    return EXIT_OK
