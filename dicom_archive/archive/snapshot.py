"""``archive_index.json``: the whole index in the documented JSON shape.

Written for tools that read the original format. Streamed study by study, so
memory stays flat however large the archive; replaced atomically (temporary file,
fsync, rename, fsync of the folder), so a reader never sees half a file.

When it is written (see README, "archive_index.json"): a full rewrite grows with
the archive (about 8 s at 1,000,000 instances), so a command that changed a few
files rewrites it only when that is cheap next to its own work
(``refresh_if_cheap``); otherwise the previous document stays in place, complete
and valid but *stale*, until ``dicom-archive snapshot`` or the daemon rewrites it.
Each rewrite records in the index's meta table which state of the index it shows
and what it cost, so staleness and the next cost are known without reading it.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dicom_archive.archive.index import SHOWN_STUDY_DATE, Index
from dicom_archive.archive.layout import ArchivePaths

SNAPSHOT_VERSION = "1.0"
#: A command may rewrite the snapshot when that is expected to cost at most this
#: share of its own running time ...
CHEAP_SHARE = 0.10
#: ... or at most this long, whatever it did.
CHEAP_SECONDS = 0.05
#: The expected cost per instance before any rewrite was timed (measured: about
#: 8 s at 1,000,000 instances).
DEFAULT_SECONDS_PER_INSTANCE = 10e-6

# meta keys kept by write_snapshot
_META_OF = "snapshot_of"
_META_SECONDS = "snapshot_seconds"
_META_INSTANCES = "snapshot_instances"
_META_WRITTEN = "snapshot_written_at"
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


def index_version(index: Index) -> str:
    """What changes whenever the index's content does (``modified_at`` alone has 1 s
    steps, so the instance count and the newest instance id go with it)."""
    row = index.connection.execute("SELECT MAX(id) FROM instances").fetchone()
    return f"{index.meta('modified_at')}|{index.instance_count()}|{row[0]}"


@dataclass(frozen=True, slots=True)
class SnapshotState:
    """Whether ``archive_index.json`` shows the index as it is now."""

    #: True: in step; False: stale (an older, complete document); None: unknown
    #: (written by a version that did not record it, or never written).
    current: bool | None
    written_at: str | None
    instances: int | None
    seconds: float | None

    def as_json(self) -> dict[str, object]:
        return {
            "current": self.current,
            "writtenAt": self.written_at,
            "instances": self.instances,
            "seconds": self.seconds,
        }

    def describe(self) -> str:
        if self.current:
            return f"current (written {self.written_at})"
        if self.current is None:
            return "unknown (run: dicom-archive snapshot)"
        return (
            f"stale (written {self.written_at} with {self.instances} instances; "
            "run: dicom-archive snapshot)"
        )


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def snapshot_state(paths: ArchivePaths, index: Index) -> SnapshotState:
    with index.read():
        of = index.meta(_META_OF)
        current = (of == index_version(index)) if of is not None else None
        instances = _float(index.meta(_META_INSTANCES))
        state = SnapshotState(
            current=current if paths.snapshot.is_file() else False if of else None,
            written_at=index.meta(_META_WRITTEN),
            instances=None if instances is None else int(instances),
            seconds=_float(index.meta(_META_SECONDS)),
        )
    return state


def expected_cost(index: Index) -> float:
    """Seconds a rewrite is expected to take now: the last one's cost per instance
    (at least the default's floor), times the instances now."""
    seconds = _float(index.meta(_META_SECONDS))
    instances = _float(index.meta(_META_INSTANCES))
    per_instance = (
        seconds / instances if seconds is not None and instances else DEFAULT_SECONDS_PER_INSTANCE
    )
    return per_instance * index.instance_count()


def refresh_if_cheap(paths: ArchivePaths, index: Index, work_seconds: float) -> bool:
    """After a change that took ``work_seconds``: rewrite the snapshot if that is
    expected to cost at most ``CHEAP_SHARE`` of it or ``CHEAP_SECONDS``; otherwise
    leave the previous (complete, valid, stale) document. True when rewritten."""
    if expected_cost(index) > max(CHEAP_SECONDS, CHEAP_SHARE * work_seconds):
        return False
    write_snapshot(paths, index)
    return True


def write_snapshot(paths: ArchivePaths, index: Index) -> Path:
    """Rewrite ``archive_index.json`` atomically from one consistent read of the index,
    then note in the index which state it shows and what it cost."""
    target = paths.snapshot
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    started = time.perf_counter()
    try:
        with index.read(), open(temporary, "w", encoding="utf-8") as out:
            version = index_version(index)
            instances = index.instance_count()
            write_json_document(index, out)
            out.flush()
            os.fsync(out.fileno())
        seconds = time.perf_counter() - started
        # The rename and its record under one write lock: with two writers at once,
        # the document left in place and the version recorded are the same one's.
        with index.write() as connection:
            os.replace(temporary, target)
            _fsync_folder(paths.root)  # before the record claims it
            connection.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                [
                    (_META_OF, version),
                    (_META_SECONDS, f"{seconds:.6f}"),
                    (_META_INSTANCES, str(instances)),
                    (_META_WRITTEN, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
                ],
            )
    finally:
        if temporary.exists():
            temporary.unlink()
    return target


def _fsync_folder(folder: Path) -> None:
    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
