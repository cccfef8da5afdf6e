"""dicom-archive import: archive files and folders, one outcome per input."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dicom_archive.archive import conflicts
from dicom_archive.archive.importer import Importer
from dicom_archive.archive.records import ImportOutcome, ImportSummary, Outcome
from dicom_archive.archive.snapshot import expected_cost, refresh_if_cheap
from dicom_archive.archive.store import Archive
from dicom_archive.cli.common import ProgressBar, add_archive_option, open_from_args, safe
from dicom_archive.errors import EXIT_OK, EXIT_PROBLEMS


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "import",
        help="import DICOM files into an archive",
        description="Import files, or the files of folders, into the archive. Every input "
        "gets one outcome: imported, duplicate (same bytes already archived), conflict "
        "(same SOP Instance UID, different bytes: never overwritten) or rejected (with a "
        "reason). Sources are never modified or removed.",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILES", help="files or folders")
    add_archive_option(parser)
    parser.add_argument(
        "--recursive", action="store_true", help="import folders' whole trees, not only their files"
    )
    parser.add_argument(
        "--skip-duplicates",
        action="store_true",
        help="skip files already archived with identical bytes quietly instead of "
        "reporting them as errors",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="one line per file, and every differing attribute of a conflict",
    )
    parser.add_argument(
        "--format",
        "-f",
        choices=("text", "json"),
        default="text",
        help="text (default), or json: one JSON object per line on stdout for every "
        "outcome (a conflict with what differs), then one with the summary",
    )
    parser.set_defaults(run=run)


def expand_inputs(inputs: list[Path], recursive: bool) -> tuple[list[Path], list[Path]]:
    """(files to import, inputs that do not exist), folders expanded in sorted order."""
    files: list[Path] = []
    missing: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files.extend(_folder_files(item, recursive))
        elif item.exists() or item.is_symlink():
            files.append(item)
        else:
            missing.append(item)
    return files, missing


def _folder_files(folder: Path, recursive: bool) -> Iterator[Path]:
    if not recursive:
        yield from sorted(p for p in folder.iterdir() if not p.is_dir())
        return
    for current, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            yield Path(current) / name


def _line(outcome: ImportOutcome) -> str:
    source = safe(outcome.source)
    match outcome.outcome:
        case Outcome.IMPORTED:
            return f"imported   {source} -> {safe(outcome.archived_path)}"
        case Outcome.DUPLICATE:
            return f"duplicate  {source}: {safe(outcome.reason)}"
        case Outcome.CONFLICT:
            line = f"conflict   {source}: {safe(outcome.reason)}"
            if outcome.conflict is not None:
                line += f"; {safe(conflicts.summary(outcome.conflict))}"
            return line
        case Outcome.REJECTED:
            return f"rejected   {source}: {safe(outcome.reason)}"
        case _:
            return f"failed     {source}: {safe(outcome.reason)} (source kept; try again)"


def _details(outcome: ImportOutcome) -> list[str]:
    """The long form of a conflict (``--verbose``): one differing attribute a line."""
    if outcome.outcome is not Outcome.CONFLICT or outcome.conflict is None:
        return []
    return ["    " + safe(line) for line in conflicts.detail_lines(outcome.conflict)]


def outcome_json(outcome: ImportOutcome) -> dict[str, Any]:
    """One outcome in the shape of ``import --format json``."""
    data: dict[str, Any] = {
        "outcome": outcome.outcome.value,
        "source": str(outcome.source),
        "sopInstanceUID": outcome.sop_instance_uid or None,
        "archivedPath": outcome.archived_path or None,
        "size": outcome.size,
        "reason": outcome.reason or None,
    }
    if outcome.conflict is not None:
        data["conflict"] = conflicts.as_json(outcome.conflict)
    return data


def summary_json(summary: ImportSummary, interrupted: bool = False) -> dict[str, Any]:
    return {
        "summary": {
            "imported": summary.imported,
            "duplicates": summary.duplicates,
            "conflicts": summary.conflicts,
            "rejected": summary.rejected,
            "failed": summary.failed,
            "bytesImported": summary.bytes_imported,
            "seconds": round(summary.seconds, 3),
            "interrupted": interrupted,
        }
    }


#: Characters JSON leaves raw that a terminal may act on (C1 controls, line and
#: bidi separators): written as \u escapes, which decode to the same string.
_JSON_UNSAFE = re.compile(r"[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def json_line(data: dict[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def summary_line(summary: ImportSummary) -> str:
    text = (
        f"{summary.imported} imported, {summary.duplicates} duplicates, "
        f"{summary.conflicts} conflicts, {summary.rejected} rejected"
    )
    if summary.failed:
        text += f", {summary.failed} failed"
    megabytes = summary.bytes_imported / 1_000_000
    return text + f", {megabytes:.1f} MB in {summary.seconds:.1f} s"


def _refresh_snapshot(archive: Archive, seconds: float) -> None:
    """Rewrite archive_index.json when that is cheap next to this import; otherwise
    leave the previous document (complete, valid, stale) and say so."""
    if not refresh_if_cheap(archive.paths, archive.index, seconds):
        print(
            f"archive_index.json left stale (rewriting it takes about "
            f"{expected_cost(archive.index):.1f} s); to rewrite it now: "
            f"dicom-archive snapshot -a {safe(archive.root)}",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    summary = ImportSummary()
    as_json = args.format == "json"
    with open_from_args(args) as archive, Importer(archive) as importer:
        files, missing = expand_inputs(list(args.files), args.recursive)
        for path in missing:
            summary.rejected += 1
            if as_json:
                gone = ImportOutcome(path, Outcome.REJECTED, reason="no such file or folder")
                print(json_line(outcome_json(gone)))
            else:
                print(f"rejected   {safe(path)}: no such file or folder", file=sys.stderr)
        progress = ProgressBar(len(files), "importing")
        try:
            # closing(): on Ctrl-C the generator's clean-up (temporaries read ahead)
            # runs now, not whenever the generator happens to be collected.
            with contextlib.closing(importer.import_files(files)) as outcomes:
                for outcome in outcomes:
                    summary.add(outcome)
                    progress.advance()
                    if as_json:
                        progress.close()
                        print(json_line(outcome_json(outcome)), flush=True)
                        continue
                    quiet_duplicate = outcome.outcome is Outcome.DUPLICATE and args.skip_duplicates
                    if args.verbose and (outcome.outcome is Outcome.IMPORTED or quiet_duplicate):
                        print(_line(outcome))
                    elif outcome.outcome is not Outcome.IMPORTED and not quiet_duplicate:
                        progress.close()
                        print(_line(outcome), file=sys.stderr)
                        if args.verbose:
                            for line in _details(outcome):
                                print(line, file=sys.stderr)
        except KeyboardInterrupt:
            # What was committed stays archived: say so, and keep the snapshot in step
            # (a batch may have committed just before its outcomes reached us).
            progress.close()
            importer.discard_own_temporaries()
            _refresh_snapshot(archive, time.perf_counter() - started)
            summary.seconds = time.perf_counter() - started
            if as_json:
                print(json_line(summary_json(summary, interrupted=True)))
            else:
                print(summary_line(summary) + " (interrupted; run again to import the rest)")
            raise
        progress.close()
        if summary.imported:
            _refresh_snapshot(archive, time.perf_counter() - started)
    summary.seconds = time.perf_counter() - started
    print(json_line(summary_json(summary)) if as_json else summary_line(summary))
    problems = summary.conflicts + summary.rejected + summary.failed
    if not args.skip_duplicates:
        problems += summary.duplicates
    return EXIT_PROBLEMS if problems else EXIT_OK
