"""dicom-archive check: compare the index with the files on disk."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from dicom_archive.archive.index import now_iso
from dicom_archive.archive.integrity import check_archive, record_check
from dicom_archive.archive.records import CheckReport, FindingKind
from dicom_archive.archive.stats import patient_ids_with_several_names
from dicom_archive.archive.store import Archive
from dicom_archive.cli.common import (
    ProgressBar,
    add_archive_option,
    open_from_args,
    print_several_names,
    safe,
)
from dicom_archive.errors import EXIT_OK, EXIT_PROBLEMS

if TYPE_CHECKING:  # repair (and the header parser it needs) is imported only to repair
    from dicom_archive.archive.repair import RepairPlan

LABELS = {
    FindingKind.MISSING: "missing files",
    FindingKind.SIZE_MISMATCH: "size mismatches",
    FindingKind.ORPHANED: "orphaned files",
    FindingKind.TEMPORARY: "leftover temporary files",
    FindingKind.CONTENT_CHANGED: "content changed",
    FindingKind.UNREADABLE: "unreadable",
    FindingKind.WRONG_IDENTITY: "wrong identity",
}
_VERIFY_ONLY = {FindingKind.CONTENT_CHANGED, FindingKind.UNREADABLE, FindingKind.WRONG_IDENTITY}


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="compare the index with the files on disk",
        description="Find missing files, size mismatches, orphaned files (in data/ but not "
        "indexed) and leftover temporary files. --verify-files also re-hashes every file "
        "against its SHA-256 from import and re-reads its header to confirm its UIDs. "
        "Exit 0 when clean, 1 when anything is found. --repair lists what it will do, "
        "then (with --yes, or after asking on a terminal) indexes orphaned files that are "
        "valid DICOM, moves unreadable or conflicting orphans to quarantine/, drops rows "
        "whose files are gone (recorded in quarantine/repair-log.jsonl) and clears "
        "leftover temporary files. It never deletes a data file.",
    )
    add_archive_option(parser)
    parser.add_argument(
        "--verify-files", action="store_true", help="re-hash every file and re-read its header"
    )
    parser.add_argument("--verbose", action="store_true", help="list every finding")
    parser.add_argument(
        "--repair", action="store_true", help="repair what is found (see above), after listing it"
    )
    parser.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="with --repair: do not ask first (without it, a non-interactive run only reports)",
    )
    parser.add_argument(
        "--format",
        "-f",
        choices=("text", "json"),
        default="text",
        help="text (default) or json, for monitoring",
    )
    parser.set_defaults(run=run)


def report_json(report: CheckReport) -> dict[str, Any]:
    return {
        "clean": report.clean,
        "verified": report.verified,
        "instancesChecked": report.instances_checked,
        "filesSeen": report.files_seen,
        "seconds": round(report.seconds, 3),
        "counts": report.counts(),
        "findings": [
            {"kind": f.kind.value, "path": f.path, "detail": f.detail} for f in report.findings
        ],
    }


def run(args: argparse.Namespace) -> int:
    started_at = now_iso()
    with open_from_args(args) as archive:
        total = archive.index.instance_count()
        progress = ProgressBar(total, "verifying" if args.verify_files else "checking")
        last = 0

        def on_progress(done: int) -> None:
            nonlocal last
            progress.advance(done - last)
            last = done

        report = check_archive(archive, verify_files=args.verify_files, on_progress=on_progress)
        progress.close()
        record_check(archive.index, report, started_at)
        several_names = patient_ids_with_several_names(archive.index)
        if args.repair and not report.clean:
            return _repair(archive, report, args)
    if args.format == "json":
        document = report_json(report)
        document["patientIDsWithSeveralNames"] = [p.as_json() for p in several_names]
        print(json.dumps(document, ensure_ascii=False, indent=2))
        return EXIT_OK if report.clean else EXIT_PROBLEMS
    if args.verbose:
        for finding in report.findings:
            detail = f" ({finding.detail})" if finding.detail else ""
            print(safe(f"{finding.kind.value:16} {finding.path}{detail}"))
    counts = report.counts()
    kinds = [k for k in FindingKind if args.verify_files or k not in _VERIFY_ONLY]
    print(
        f"{report.instances_checked} instances checked"
        f"{' and verified' if args.verify_files else ''} in {report.seconds:.1f} s: "
        + ", ".join(f"{counts[k.value]} {LABELS[k]}" for k in kinds)
    )
    # A note for people, not a problem: each study keeps the name its files state.
    print_several_names(several_names)
    if report.clean:
        print("The archive is clean.")
        return EXIT_OK
    if not args.verbose:
        print("Run with --verbose to list every finding.")
    return EXIT_PROBLEMS


#: Keyed by repair.Action's values (a StrEnum, so its members look these up directly).
_VERBS = {
    "index": "index",
    "move-and-index": "move into its layout path and index",
    "quarantine": "quarantine",
    "drop-row": "drop row",
    "remove-temporary": "remove temporary",
    "leave": "leave (needs a person)",
}


def _describe(plan: RepairPlan) -> None:
    for step in plan.steps:
        target = f" -> {step.target}" if step.target else ""
        print(safe(f"{_VERBS[step.action]:12} {step.path}{target}: {step.detail}"))


def _confirmed(args: argparse.Namespace, count: int) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        print("Not repairing: this is not a terminal and --yes was not given.")
        return False
    answer = input(f"Apply these {count} repairs? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _repair(archive: Archive, report: CheckReport, args: argparse.Namespace) -> int:
    from dicom_archive.archive.repair import apply_repair, plan_repair

    plan = plan_repair(archive, report)
    print(f"{len(report.findings)} findings; the repair plan:")
    _describe(plan)
    if not plan.actionable:
        print("Nothing can be repaired automatically.")
        return EXIT_PROBLEMS
    if not _confirmed(args, len(plan.actionable)):
        return EXIT_PROBLEMS
    result = apply_repair(archive, plan)
    for step, why in result.failed:
        print(safe(f"not done     {step.path}: {why}"), file=sys.stderr)
    print(
        f"{len(result.done)} repairs done, {len(result.failed)} not done, "
        f"{len(plan.left)} left for a person. Log: {safe(result.log_path)}"
    )
    after = check_archive(archive)
    print("The archive is clean." if after.clean else f"{len(after.findings)} findings remain.")
    return EXIT_OK if after.clean and not plan.left else EXIT_PROBLEMS
