"""dicom-archive stats: totals and a per-modality breakdown."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dicom_archive.archive.retention import LifecycleSummary, lifecycle_summary
from dicom_archive.archive.snapshot import snapshot_state
from dicom_archive.archive.stats import archive_stats
from dicom_archive.cli.common import (
    add_archive_option,
    human_bytes,
    open_from_args,
    print_several_names,
    render_table,
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "stats",
        help="show totals and a per-modality breakdown",
        description="Patients, studies, series, instances, total size, a breakdown per "
        "modality, the study-date range and the first and last import, and Patient IDs "
        "whose studies state different names.",
    )
    add_archive_option(parser)
    parser.add_argument(
        "--format", "-f", choices=("text", "json"), default="text", help="text (default) or json"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with open_from_args(args) as archive:
        stats = archive_stats(archive.index)
        snapshot = snapshot_state(archive.paths, archive.index)
        lifecycle = lifecycle_summary(archive)  # issue 11: trash and retention
    if args.format == "json":
        document = dict(stats.as_json(), snapshot=snapshot.as_json(), **lifecycle.as_json())
        print(json.dumps(document, ensure_ascii=False, indent=2))
        return 0
    print(f"Patients:    {stats.patients}")
    print(f"Studies:     {stats.studies}")
    print(f"Series:      {stats.series}")
    print(f"Instances:   {stats.instances}")
    print(f"Total size:  {human_bytes(stats.total_bytes)} ({stats.total_bytes} bytes)")
    if stats.first_study_date:
        print(f"Study dates: {stats.first_study_date} to {stats.last_study_date}")
    if stats.first_import:
        print(f"Imports:     first {stats.first_import}, last {stats.last_import}")
    if stats.studies_without_patient_id:
        print(f"Studies without a Patient ID: {stats.studies_without_patient_id}")
    print_several_names(stats.patient_ids_with_several_names)
    print(f"Snapshot:    archive_index.json {snapshot.describe()}")
    _print_lifecycle(lifecycle)
    if stats.modalities:
        print()
        print(
            render_table(
                ("Modality", "Instances", "Series", "Studies", "Size"),
                [
                    (m.modality or "(none)", m.instances, m.series, m.studies, human_bytes(m.bytes))
                    for m in stats.modalities
                ],
            )
        )
    return 0


def _print_lifecycle(summary: LifecycleSummary) -> None:
    print(
        f"Trash:       {summary.trash_instances} instances "
        f"({human_bytes(summary.trash_bytes)}) in {summary.trash_entries} entries"
    )
    if summary.rules is None:
        print("Retention:   no rules recorded (the daemon records its [retention] rules)")
    else:
        print(
            f"Retention:   {summary.due_studies} studies, {summary.due_instances} instances "
            f"({human_bytes(summary.due_bytes)}) due under {len(summary.rules)} rules; "
            f"{summary.protected} protected"
        )
