"""dicom-archive list: the archive's contents as a tree, a table or JSON."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

from dicom_archive.archive.index import SHOWN_STUDY_DATE, Index
from dicom_archive.archive.snapshot import write_json_document
from dicom_archive.cli.common import (
    add_archive_option,
    human_bytes,
    open_from_args,
    render_table,
    safe,
)

_SERIES_ROWS = f"""
SELECT p.id, p.patient_name, p.patient_id,
       st.id, st.study_instance_uid, {SHOWN_STUDY_DATE}, st.description,
       se.id, se.series_instance_uid, se.modality, se.series_number, se.description,
       se.instance_count, se.total_bytes,
       (SELECT COUNT(*) FROM studies s2 WHERE s2.patient_pk = p.id),
       (SELECT COUNT(*) FROM series x WHERE x.study_pk = st.id),
       (SELECT SUM(instance_count) FROM series x WHERE x.study_pk = st.id)
FROM patients p
JOIN studies st ON st.patient_pk = p.id
JOIN series se ON se.study_pk = st.id
ORDER BY p.patient_name, p.patient_id, st.study_date, st.id, se.series_number, se.id
"""

TABLE_HEADERS = (
    "Patient Name",
    "Patient ID",
    "Study Date",
    "Study UID",
    "Modality",
    "Series #",
    "Series Description",
    "Instances",
    "Size",
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "list",
        help="show the archive's contents",
        description="Show the archive: a Patient -> Study -> Series tree (default), a table "
        "with one row per series, or the documented JSON shape of archive_index.json.",
    )
    add_archive_option(parser)
    parser.add_argument(
        "--format",
        "-f",
        choices=("tree", "table", "json"),
        default="tree",
        help="tree (default), table or json",
    )
    parser.add_argument(
        "--show-instances", action="store_true", help="in the tree, list instances under series"
    )
    parser.set_defaults(run=run)


def _series_rows(index: Index) -> Iterator[tuple[Any, ...]]:
    yield from index.connection.execute(_SERIES_ROWS)


def _instances(index: Index, series_pk: int) -> Iterator[tuple[Any, ...]]:
    yield from index.connection.execute(
        "SELECT sop_instance_uid, instance_number, file_path, file_size FROM instances "
        "WHERE series_pk = ? ORDER BY instance_number, id",
        (series_pk,),
    )


def _print_tree(index: Index, show_instances: bool) -> int:
    patient_pk = study_pk = None
    printed = 0
    for row in _series_rows(index):
        (
            p_pk,
            p_name,
            p_id,
            s_pk,
            s_uid,
            s_date,
            s_desc,
            se_pk,
            se_uid,
            modality,
            number,
            se_desc,
            count,
            size,
            p_studies,
            s_series,
            s_instances,
        ) = row
        if p_pk != patient_pk:
            patient_pk = p_pk
            printed += 1
            print(safe(f"{p_name or '(no name)'} [{p_id}]  ({p_studies} studies)"))
        if s_pk != study_pk:
            study_pk = s_pk
            description = f"  {s_desc}" if s_desc else ""
            print(
                safe(
                    f"  Study {s_date or '(no date)'}{description}  ({s_series} series, "
                    f"{s_instances} instances)  {s_uid}"
                )
            )
        label = f"#{number}" if number is not None else "#-"
        description = f"  {se_desc}" if se_desc else ""
        print(
            safe(
                f"    Series {modality or '??'} {label}{description}  ({count} instances, "
                f"{human_bytes(size)})  {se_uid}"
            )
        )
        if show_instances:
            for sop, instance_number, path, file_size in _instances(index, se_pk):
                number_text = f"#{instance_number}" if instance_number is not None else "#-"
                print(safe(f"      {number_text}  {sop}  {human_bytes(file_size)}  {path}"))
    if not printed:
        print("The archive is empty.")
    return 0


def run(args: argparse.Namespace) -> int:
    with open_from_args(args) as archive, archive.index.read():
        if args.format == "json":
            write_json_document(archive.index, sys.stdout, indent=True)
            return 0
        if args.format == "tree":
            return _print_tree(archive.index, args.show_instances)
        rows = [
            (
                r[1],
                r[2],
                r[5],
                r[4],
                r[9],
                r[10] if r[10] is not None else "",
                r[11],
                r[12],
                human_bytes(r[13]),
            )
            for r in _series_rows(archive.index)
        ]
        print(render_table(TABLE_HEADERS, rows))
        print(f"{len(rows)} series" if rows else "The archive is empty.")
    return 0
