"""``archive_index.json``: the whole index in the documented JSON shape.

Written for tools that read the original format. Streamed study by study, so
memory stays flat however large the archive; replaced atomically (temporary file,
fsync, rename, fsync of the folder), so a reader never sees half a file.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import IO

from dicom_archive.archive.index import SHOWN_STUDY_DATE, Index
from dicom_archive.archive.layout import ArchivePaths

SNAPSHOT_VERSION = "1.0"
#: Up to this many instances `list --format json` is indented for people; beyond,
#: it streams compact JSON in flat memory.
_INDENT_LIMIT = 20_000

# CROSS JOIN fixes the loop order (patients, then their studies, series, instances,
# each through its index), so rows arrive grouped and in id order with no sort of
# the whole index; SQLite builds each instance's JSON text itself.
_ROWS = f"""
SELECT p.id, st.id, se.id,
       p.patient_name, p.patient_id,
       st.study_instance_uid, {SHOWN_STUDY_DATE}, st.description,
       se.series_instance_uid, se.modality, se.description,
       json_object('sopInstanceUID', i.sop_instance_uid, 'sopClassUID', i.sop_class_uid,
                   'filePath', i.file_path, 'fileSize', i.file_size,
                   'importDate', i.imported_at)
FROM patients p
CROSS JOIN studies st ON st.patient_pk = p.id
CROSS JOIN series se ON se.study_pk = st.id
CROSS JOIN instances i ON i.series_pk = se.id
ORDER BY p.id, st.id, se.id, i.id
"""


def primary_modality(instances_per_modality: Counter[str]) -> str:
    """The modality holding most instances; ties go to the first seen."""
    if not instances_per_modality:
        return ""
    return instances_per_modality.most_common(1)[0][0]


def _study_modality(index: Index, study_pk: int) -> str:
    counts: Counter[str] = Counter()
    for modality, count in index.connection.execute(
        "SELECT modality, instance_count FROM series WHERE study_pk = ? ORDER BY id",
        (study_pk,),
    ):
        if modality:
            counts[modality] += count
    return primary_modality(counts)


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _write_patients(index: Index, out: IO[str]) -> None:
    """Stream ``patients[]`` row by row: no patient, study or series is held in memory
    (one patient may hold a hundred thousand instances)."""
    patient_pk = study_pk = series_pk = None
    write = out.write
    for row in index.connection.execute(_ROWS):
        p_pk, s_pk, se_pk = row[0], row[1], row[2]
        if se_pk == series_pk:
            write(",")
            write(row[11])
            continue
        if p_pk != patient_pk:
            if patient_pk is not None:
                write("]}]}]},")
            write(f'{{"patientName":{_json(row[3])},"patientID":{_json(row[4])},"studies":[')
            patient_pk, study_pk = p_pk, None
        if s_pk != study_pk:
            if study_pk is not None:
                write("]}]},")
            write(
                f'{{"studyInstanceUID":{_json(row[5])},"studyDate":{_json(row[6])},'
                f'"studyDescription":{_json(row[7])},'
                f'"modality":{_json(_study_modality(index, s_pk))},"series":['
            )
            study_pk, series_pk = s_pk, None
        if series_pk is not None:
            write("]},")
        write(
            f'{{"seriesInstanceUID":{_json(row[8])},"modality":{_json(row[9])},'
            f'"seriesDescription":{_json(row[10])},"instances":['
        )
        write(row[11])
        series_pk = se_pk
    if patient_pk is not None:
        write("]}]}]}")


def write_json_document(index: Index, out: IO[str], indent: bool = False) -> None:
    """Write the documented JSON shape to ``out``, streamed row by row.

    ``indent`` asks for a document meant for people; it is re-indented from the
    compact stream one patient at a time only where the archive is small enough.
    """
    created = index.meta("created_at") or ""
    modified = index.meta("modified_at") or created
    file_count = index.instance_count()
    head = {
        "version": SNAPSHOT_VERSION,
        "creationDate": created,
        "lastModified": modified,
        "fileCount": file_count,
    }
    if indent and file_count <= _INDENT_LIMIT:
        buffer = io.StringIO()
        _write_patients(index, buffer)
        document = dict(head, patients=json.loads("[" + buffer.getvalue() + "]"))
        out.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
        return
    out.write(json.dumps(head, ensure_ascii=False)[:-1] + ',"patients":[')
    _write_patients(index, out)
    out.write("]}\n")


def write_snapshot(paths: ArchivePaths, index: Index) -> Path:
    """Rewrite ``archive_index.json`` atomically from one consistent read of the index."""
    target = paths.snapshot
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with index.read(), open(temporary, "w", encoding="utf-8") as out:
            write_json_document(index, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()
    directory = os.open(paths.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return target
