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

from dicom_archive.archive.index import Index
from dicom_archive.archive.layout import ArchivePaths

SNAPSHOT_VERSION = "1.0"
#: Up to this many instances `list --format json` is indented for people; beyond,
#: it streams compact JSON in flat memory.
_INDENT_LIMIT = 20_000

_ROWS = """
SELECT p.id, p.patient_name, p.patient_id,
       st.id, st.study_instance_uid, st.study_date, st.description,
       se.id, se.series_instance_uid, se.modality, se.description,
       i.sop_instance_uid, i.sop_class_uid, i.file_path, i.file_size, i.imported_at
FROM patients p
JOIN studies st ON st.patient_pk = p.id
JOIN series se ON se.study_pk = st.id
JOIN instances i ON i.series_pk = se.id
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
    first_patient = True
    for row in index.connection.execute(_ROWS):
        (p_pk, p_name, p_id, s_pk, s_uid, s_date, s_desc, se_pk, se_uid, se_mod, se_desc,
         sop, sop_class, path, size, imported) = row  # fmt: skip
        if p_pk != patient_pk:
            if patient_pk is not None:
                out.write("]}]}]}")
            out.write("" if first_patient else ",")
            first_patient = False
            out.write(f'{{"patientName":{_json(p_name)},"patientID":{_json(p_id)},"studies":[')
            patient_pk, study_pk, series_pk = p_pk, None, None
        if s_pk != study_pk:
            if study_pk is not None:
                out.write("]}]},")
            out.write(
                f'{{"studyInstanceUID":{_json(s_uid)},"studyDate":{_json(s_date)},'
                f'"studyDescription":{_json(s_desc)},'
                f'"modality":{_json(_study_modality(index, s_pk))},"series":['
            )
            study_pk, series_pk = s_pk, None
        if se_pk != series_pk:
            if series_pk is not None:
                out.write("]},")
            out.write(
                f'{{"seriesInstanceUID":{_json(se_uid)},"modality":{_json(se_mod)},'
                f'"seriesDescription":{_json(se_desc)},"instances":['
            )
            series_pk = se_pk
            first_instance = True
        out.write("" if first_instance else ",")
        first_instance = False
        out.write(
            f'{{"sopInstanceUID":{_json(sop)},"sopClassUID":{_json(sop_class)},'
            f'"filePath":{_json(path)},"fileSize":{size},"importDate":{_json(imported)}}}'
        )
    if patient_pk is not None:
        out.write("]}]}]}")


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
