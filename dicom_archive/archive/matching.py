"""C-FIND and QIDO-RS matching from the index: an identifier in, one match per result out.

PS3.4 C.2.2.2 matching on the index's columns, never on files: single value,
wildcard (``*``, ``?``; case-insensitive on every text attribute, as the CLI's
queries are), list of UIDs, date and time ranges, universal (empty). Levels
PATIENT / STUDY / SERIES / IMAGE for the Patient Root and Study Root models.
Keys of the levels above the query level narrow the search (Orthanc and DCMTK
accept relational queries the same way); keys below it are returned empty.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dicom_archive.archive.index import Index, fold
from dicom_archive.archive.query import has_wildcard, parse_date_range, wildcard_to_glob
from dicom_archive.errors import InvalidQuery

RESPONSE_CHARSET = "ISO_IR 192"  # the index holds decoded text: answer in UTF-8


class Level(enum.IntEnum):
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3


class Kind(enum.Enum):
    TEXT = "text"  # folded, case-insensitive single value or wildcard
    UID = "uid"  # exact, or a backslash-separated list
    DATE = "date"  # YYYYMMDD or a range
    TIME = "time"  # HHMMSS prefix or a range
    INTEGER = "integer"
    MODALITIES = "modalities"  # ModalitiesInStudy: any series of the study
    COMPUTED = "computed"  # counts: returned, never matched


@dataclass(frozen=True, slots=True)
class Attribute:
    keyword: str
    level: Level
    kind: Kind
    #: SQL giving the value to return.
    value: str
    #: SQL compared with a folded value (TEXT); defaults to dicom_fold(value).
    folded: str = ""


_FIRST_STUDY = "(SELECT {column} FROM studies s1 WHERE s1.patient_pk = p.id ORDER BY s1.id LIMIT 1)"
_PATIENT_SERIES = (
    "(SELECT {agg} FROM studies s1 JOIN series x ON x.study_pk = s1.id WHERE s1.patient_pk = p.id)"
)

_ATTRIBUTES = [
    Attribute("PatientName", Level.PATIENT, Kind.TEXT, "p.patient_name", "p.name_fold"),
    Attribute("PatientID", Level.PATIENT, Kind.TEXT, "p.patient_id", "p.patient_id_fold"),
    Attribute("PatientBirthDate", Level.PATIENT, Kind.DATE, "st.patient_birth_date"),
    Attribute("PatientSex", Level.PATIENT, Kind.TEXT, "st.patient_sex"),
    Attribute(
        "NumberOfPatientRelatedStudies",
        Level.PATIENT,
        Kind.COMPUTED,
        "(SELECT COUNT(*) FROM studies s1 WHERE s1.patient_pk = p.id)",
    ),
    Attribute(
        "NumberOfPatientRelatedSeries",
        Level.PATIENT,
        Kind.COMPUTED,
        _PATIENT_SERIES.format(agg="COUNT(*)"),
    ),
    Attribute(
        "NumberOfPatientRelatedInstances",
        Level.PATIENT,
        Kind.COMPUTED,
        _PATIENT_SERIES.format(agg="COALESCE(SUM(x.instance_count), 0)"),
    ),
    Attribute("StudyInstanceUID", Level.STUDY, Kind.UID, "st.study_instance_uid"),
    Attribute("StudyDate", Level.STUDY, Kind.DATE, "st.study_date"),
    Attribute("StudyTime", Level.STUDY, Kind.TIME, "st.study_time"),
    Attribute("AccessionNumber", Level.STUDY, Kind.TEXT, "st.accession_number"),
    Attribute("StudyID", Level.STUDY, Kind.TEXT, "st.study_id"),
    Attribute("StudyDescription", Level.STUDY, Kind.TEXT, "st.description"),
    Attribute("ReferringPhysicianName", Level.STUDY, Kind.TEXT, "st.referring_physician"),
    Attribute(
        "ModalitiesInStudy",
        Level.STUDY,
        Kind.MODALITIES,
        "(SELECT group_concat(DISTINCT x.modality) FROM series x "
        "WHERE x.study_pk = st.id AND x.modality != '')",
    ),
    Attribute(
        "NumberOfStudyRelatedSeries",
        Level.STUDY,
        Kind.COMPUTED,
        "(SELECT COUNT(*) FROM series x WHERE x.study_pk = st.id)",
    ),
    Attribute(
        "NumberOfStudyRelatedInstances",
        Level.STUDY,
        Kind.COMPUTED,
        "(SELECT COALESCE(SUM(x.instance_count), 0) FROM series x WHERE x.study_pk = st.id)",
    ),
    Attribute("SeriesInstanceUID", Level.SERIES, Kind.UID, "se.series_instance_uid"),
    Attribute("Modality", Level.SERIES, Kind.TEXT, "se.modality", "se.modality_fold"),
    Attribute("SeriesNumber", Level.SERIES, Kind.INTEGER, "se.series_number"),
    Attribute("SeriesDescription", Level.SERIES, Kind.TEXT, "se.description"),
    Attribute("BodyPartExamined", Level.SERIES, Kind.TEXT, "se.body_part"),
    Attribute("NumberOfSeriesRelatedInstances", Level.SERIES, Kind.COMPUTED, "se.instance_count"),
    Attribute("SOPInstanceUID", Level.IMAGE, Kind.UID, "i.sop_instance_uid"),
    Attribute("SOPClassUID", Level.IMAGE, Kind.UID, "i.sop_class_uid"),
    Attribute("InstanceNumber", Level.IMAGE, Kind.INTEGER, "i.instance_number"),
]
ATTRIBUTES = {a.keyword: a for a in _ATTRIBUTES}
UNIQUE_KEYS = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}
_FROM = {
    Level.PATIENT: "patients p",
    Level.STUDY: "patients p JOIN studies st ON st.patient_pk = p.id",
    Level.SERIES: "patients p JOIN studies st ON st.patient_pk = p.id "
    "JOIN series se ON se.study_pk = st.id",
    Level.IMAGE: "patients p JOIN studies st ON st.patient_pk = p.id "
    "JOIN series se ON se.study_pk = st.id JOIN instances i ON i.series_pk = se.id",
}
_ORDER = {
    Level.PATIENT: "p.patient_name, p.patient_id, p.id",
    Level.STUDY: "st.study_date, st.study_time, st.id",
    Level.SERIES: "st.id, se.series_number IS NULL, se.series_number, se.id",
    Level.IMAGE: "se.id, i.instance_number IS NULL, i.instance_number, i.id",
}


@dataclass(frozen=True, slots=True)
class FindRequest:
    """What to match (keyword -> value as text) and what to return."""

    level: Level
    criteria: dict[str, str]
    #: Keywords asked for: returned with the archive's values (empty when unknown).
    return_keys: tuple[str, ...]


def _value_sql(attribute: Attribute, level: Level) -> str:
    """Patient birth date and sex live on studies; at PATIENT level take the first
    study's (each study keeps its own, see the README)."""
    if level is Level.PATIENT and attribute.value.startswith("st."):
        return _FIRST_STUDY.format(column=attribute.value[3:])
    return attribute.value


def _condition(attribute: Attribute, text: str, level: Level) -> tuple[str, list[Any]]:
    column = _value_sql(attribute, level)
    value = text.strip(" \x00")
    match attribute.kind:
        case Kind.UID:
            uids = [u.strip(" \x00") for u in value.split("\\") if u.strip(" \x00")]
            if len(uids) == 1:
                return f"{column} = ?", uids
            return f"{column} IN ({','.join('?' * len(uids))})", uids
        case Kind.TEXT:
            folded = attribute.folded or f"dicom_fold({column})"
            if value == "*":
                return "", []
            if has_wildcard(value):
                return f"{folded} GLOB ?", [wildcard_to_glob(value)]
            return f"{folded} = ?", [fold(value)]
        case Kind.DATE:
            try:
                span = parse_date_range(value)
            except InvalidQuery as exc:
                raise InvalidQuery(f"{attribute.keyword}: {exc}") from None
            clauses, params = [f"{column} != ''"], []
            if span.start:
                clauses.append(f"{column} >= ?")
                params.append(span.start)
            if span.end:
                clauses.append(f"{column} <= ?")
                params.append(span.end)
            return " AND ".join(clauses), params
        case Kind.TIME:
            return _time_condition(column, value)
        case Kind.INTEGER:
            try:
                return f"{column} = ?", [int(value)]
            except ValueError:
                raise InvalidQuery(f"{attribute.keyword}: {value!r} is not a number") from None
        case Kind.MODALITIES:
            wanted = [fold(m.strip()) for m in value.split("\\") if m.strip()]
            marks = ",".join("?" * len(wanted))
            return (
                "EXISTS (SELECT 1 FROM series x WHERE x.study_pk = st.id "
                f"AND x.modality_fold IN ({marks}))",
                list(wanted),
            )
        case Kind.COMPUTED:
            return "", []
    raise AssertionError(attribute.kind)


def _time_condition(column: str, value: str) -> tuple[str, list[Any]]:
    """TM values compare on their first six digits: ``10`` means 10:00:00-10:59:59."""

    def digits(part: str) -> str:
        cleaned = part.replace(":", "").split(".")[0]
        if not cleaned.isdigit() or len(cleaned) > 6:
            raise InvalidQuery(f"invalid time {value!r}: use HHMMSS or a range A-B")
        return cleaned

    hhmmss = f"substr(replace({column}, ':', ''), 1, 6)"
    if "-" not in value:
        start = digits(value)
        return f"{column} != '' AND {hhmmss} LIKE ?", [start + "%"]
    first, _, last = value.partition("-")
    clauses, params = [f"{column} != ''"], []
    if first:
        clauses.append(f"{hhmmss} >= ?")
        params.append(digits(first).ljust(6, "0"))
    if last:
        clauses.append(f"{hhmmss} <= ?")
        params.append(digits(last).ljust(6, "9"))
    return " AND ".join(clauses), params


def _register_fold(connection: sqlite3.Connection) -> None:
    connection.create_function("dicom_fold", 1, _fold_or_empty, deterministic=True)


def _fold_or_empty(value: object) -> str:
    return fold(value) if isinstance(value, str) else ""


def find(
    index: Index,
    request: FindRequest,
    cancelled: Callable[[], bool] = lambda: False,
    *,
    limit: int | None = None,
    offset: int = 0,
) -> Iterator[dict[str, Any]]:
    """Matches as keyword -> value (None for an empty value), in a stable order.

    ``limit`` and ``offset`` page through that order in SQL (QIDO-RS's paging).
    Raises ``InvalidQuery`` for a value that cannot be matched (a malformed date)."""
    level = request.level
    keys = [k for k in request.return_keys if k in ATTRIBUTES and ATTRIBUTES[k].level <= level]
    for above in range(level + 1):
        unique = UNIQUE_KEYS[Level(above)]
        if unique not in keys:
            keys.append(unique)
    clauses: list[str] = []
    params: list[Any] = []
    for keyword, value in request.criteria.items():
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None or attribute.level > level or not value.strip(" \x00"):
            continue  # unknown, below the level, or universal
        clause, values = _condition(attribute, value, level)
        if clause:
            clauses.append(clause)
            params.extend(values)
    columns = ", ".join(_value_sql(ATTRIBUTES[k], level) for k in keys)
    tables = _FROM[level]
    if any(
        k in ("PatientName", "PatientID") and v.strip(" \x00*") for k, v in request.criteria.items()
    ):
        # Walk the few matching patients first (as `query` does): left to itself SQLite
        # may walk every study in date order and look up each one's patient.
        tables = tables.replace("patients p JOIN", "patients p CROSS JOIN", 1)
    sql = (
        f"SELECT {columns} FROM {tables} WHERE {' AND '.join(clauses) or '1'} "
        f"ORDER BY {_ORDER[level]}"
    )
    if limit is not None or offset:
        sql += " LIMIT ? OFFSET ?"
        params.extend([-1 if limit is None else limit, offset])
    _register_fold(index.connection)
    with index.read() as db:
        cursor = db.execute(sql, params)
        while rows := cursor.fetchmany(200):
            for row in rows:
                if cancelled():
                    return
                yield {k: _returned(k, v) for k, v in zip(keys, row, strict=True)}


def _returned(keyword: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if keyword == "ModalitiesInStudy":
        return sorted(str(value).split(","))
    return value


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One archived instance to send as stored."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    file_path: str


def retrieve_targets(index: Index, request: FindRequest) -> list[StoredFile]:
    """The instances a C-GET or C-MOVE identifier names, in series and instance order.

    The unique key of the retrieve level must be given (a single UID or a list, PS3.4
    C.4.2.2.1), so an empty identifier never sends the whole archive."""
    unique = UNIQUE_KEYS[request.level]
    if not request.criteria.get(unique, "").strip(" \x00"):
        raise InvalidQuery(f"a {request.level.name} retrieve must name its {unique}")
    clauses: list[str] = []
    params: list[Any] = []
    for keyword, value in request.criteria.items():
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None or attribute.level > request.level or not value.strip(" \x00"):
            continue
        if attribute.kind not in (Kind.UID, Kind.TEXT) or keyword != UNIQUE_KEYS[attribute.level]:
            continue  # retrieves match on unique keys only
        clause, values = _condition(attribute, value, Level.IMAGE)
        clauses.append(clause)
        params.extend(values)
    sql = (
        "SELECT i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.file_path "
        f"FROM {_FROM[Level.IMAGE]} WHERE {' AND '.join(clauses)} ORDER BY {_ORDER[Level.IMAGE]}"
    )
    _register_fold(index.connection)
    with index.read() as db:
        return [StoredFile(*row) for row in db.execute(sql, params)]
