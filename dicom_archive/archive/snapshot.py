"""``archive_index.json``: the whole index in the documented JSON shape.

Written for tools that read the original format. Streamed study by study, so
memory stays flat however large the archive; replaced atomically (temporary file,
fsync, rename, fsync of the folder), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from dicom_archive.archive.index import Index
from dicom_archive.archive.layout import ArchivePaths

SNAPSHOT_VERSION = "1.0"

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


def iter_patients(index: Index) -> Iterator[dict[str, Any]]:
    """Patients in the documented shape, each holding its studies, one at a time."""
    patient: dict[str, Any] | None = None
    study: dict[str, Any] | None = None
    series: dict[str, Any] | None = None
    modalities: Counter[str] = Counter()
    patient_pk = study_pk = series_pk = None

    def close_study() -> None:
        if study is not None and patient is not None:
            study["modality"] = primary_modality(modalities)
            patient["studies"].append(_ordered_study(study))

    for row in index.connection.execute(_ROWS):
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
            se_mod,
            se_desc,
            sop,
            sop_class,
            path,
            size,
            imported,
        ) = row
        if p_pk != patient_pk:
            close_study()
            study = None
            if patient is not None:
                yield patient
            patient = {"patientName": p_name, "patientID": p_id, "studies": []}
            patient_pk = p_pk
            study_pk = None
        if s_pk != study_pk:
            close_study()
            study = {
                "studyInstanceUID": s_uid,
                "studyDate": s_date,
                "studyDescription": s_desc,
                "series": [],
            }
            modalities = Counter()
            study_pk, series_pk = s_pk, None
        assert study is not None
        if se_pk != series_pk:
            series = {
                "seriesInstanceUID": se_uid,
                "modality": se_mod,
                "seriesDescription": se_desc,
                "instances": [],
            }
            study["series"].append(series)
            series_pk = se_pk
        assert series is not None
        if se_mod:
            modalities[se_mod] += 1
        series["instances"].append(
            {
                "sopInstanceUID": sop,
                "sopClassUID": sop_class,
                "filePath": path,
                "fileSize": size,
                "importDate": imported,
            }
        )
    close_study()
    if patient is not None:
        yield patient


def _ordered_study(study: dict[str, Any]) -> dict[str, Any]:
    return {
        "studyInstanceUID": study["studyInstanceUID"],
        "studyDate": study["studyDate"],
        "studyDescription": study["studyDescription"],
        "modality": study["modality"],
        "series": study["series"],
    }


def write_json_document(index: Index, out: IO[str], indent: bool = False) -> None:
    """Write the documented JSON shape to ``out``, one patient in memory at a time."""
    created = index.meta("created_at") or ""
    modified = index.meta("modified_at") or created
    head = {
        "version": SNAPSHOT_VERSION,
        "creationDate": created,
        "lastModified": modified,
        "fileCount": index.instance_count(),
    }
    text = json.dumps(head, ensure_ascii=False, indent=2 if indent else None)
    out.write(text[:-1].rstrip() + (',\n  "patients": [' if indent else ', "patients": ['))
    first = True
    for patient in iter_patients(index):
        if not first:
            out.write(",")
        first = False
        if indent:
            body = json.dumps(patient, ensure_ascii=False, indent=2)
            out.write("\n    " + body.replace("\n", "\n    "))
        else:
            out.write(json.dumps(patient, ensure_ascii=False, separators=(",", ":")))
    out.write(("\n  ]\n}\n" if not first else "]\n}\n") if indent else "]}\n")


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
