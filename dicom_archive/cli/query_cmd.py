"""dicom-archive query: find studies by patient, UID, modality and date."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dicom_archive.archive.query import StudyQuery, StudyResult, find_studies, parse_date_range
from dicom_archive.cli.common import add_archive_option, open_from_args, render_table, safe

HEADERS = (
    "Patient Name",
    "Patient ID",
    "Date",
    "Study UID",
    "Description",
    "Modalities",
    "Series",
    "Instances",
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "query",
        help="find studies",
        description="Find studies. Filters combine with AND. --patient-name and --patient-id "
        "take wildcards, case-insensitive: '*' any run of characters, '?' exactly one "
        "(quote them from the shell: --patient-name 'DOE*').",
    )
    add_archive_option(parser)
    parser.add_argument("--patient-name", metavar="P", help="patient name, wildcards allowed")
    parser.add_argument("--patient-id", metavar="P", help="patient ID, wildcards allowed")
    parser.add_argument("--study-uid", metavar="UID", help="Study Instance UID (exact)")
    parser.add_argument(
        "--modality", metavar="M", help="studies having a series of this modality (e.g. CT)"
    )
    parser.add_argument(
        "--study-date", metavar="D", help="YYYYMMDD, or a range A-B, A- (from A), -B (up to B)"
    )
    parser.add_argument(
        "--format",
        "-f",
        choices=("table", "json", "text"),
        default="table",
        help="table (default), json (a list of studies with their series) or text",
    )
    parser.set_defaults(run=run)


def query_from_args(args: argparse.Namespace) -> StudyQuery:
    return StudyQuery(
        patient_name=args.patient_name,
        patient_id=args.patient_id,
        study_uid=args.study_uid,
        modality=args.modality,
        study_date=parse_date_range(args.study_date) if args.study_date else None,
    )


def _row(result: StudyResult) -> tuple[object, ...]:
    return (
        result.patient_name,
        result.patient_id,
        result.study_date,
        result.study_instance_uid,
        result.description,
        "/".join(result.modalities),
        result.series_count,
        result.instance_count,
    )


def _text(result: StudyResult) -> str:
    date = result.study_date or "(no date)"
    modalities = "/".join(result.modalities) or "-"
    description = f' "{result.description}"' if result.description else ""
    return safe(
        f"{date}  {result.patient_name or '(no name)'} [{result.patient_id}]  {modalities}"
        f"{description}  {result.series_count} series, {result.instance_count} instances  "
        f"{result.study_instance_uid}"
    )


def run(args: argparse.Namespace) -> int:
    query = query_from_args(args)
    with open_from_args(args) as archive, archive.index.read():
        results = find_studies(archive.index, query)
        if args.format == "json":
            print("[", end="")
            for count, result in enumerate(results):
                print(("," if count else "") + "\n  ", end="")
                print(json.dumps(result.as_json(), ensure_ascii=False), end="")
            print("\n]")
            return 0
        if args.format == "text":
            found = 0
            for result in results:
                found += 1
                print(_text(result))
            if not found:
                print("No studies match.")
            return 0
        rows = [_row(result) for result in results]
        print(render_table(HEADERS, rows))
        print(f"{len(rows)} studies" if rows else "No studies match.")
    return 0
