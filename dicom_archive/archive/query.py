"""Study-level queries: C-FIND style wildcards and date ranges, served by the index.

A case-insensitive wildcard (``*`` any run, ``?`` exactly one) becomes a ``GLOB``
on a folded, indexed column; with a literal prefix (``DOE*``) SQLite answers it
from the index instead of scanning.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dicom_archive.archive.dates import normalise_date
from dicom_archive.archive.index import SHOWN_STUDY_DATE, Index, fold
from dicom_archive.errors import InvalidQuery

_GLOB_SPECIALS = re.compile(r"([\[\]])")
_CHUNK = 500


def has_wildcard(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


def wildcard_to_glob(pattern: str) -> str:
    """A folded GLOB pattern matching what ``pattern`` means, case-insensitively.

    Only ``*`` and ``?`` are wildcards; ``[`` and ``]`` are matched literally.
    """
    return _GLOB_SPECIALS.sub(r"[\1]", fold(pattern))


@dataclass(frozen=True, slots=True)
class DateRange:
    """Inclusive ``YYYYMMDD`` bounds; None is open."""

    start: str | None
    end: str | None

    def matches(self, value: str) -> bool:
        if not value:
            return False
        return (self.start is None or value >= self.start) and (
            self.end is None or value <= self.end
        )


def _valid_date(text: str, whole: str) -> str:
    day = normalise_date(text)
    if not day:
        raise InvalidQuery(
            f"invalid study date {whole!r}: use YYYYMMDD (or YYYY.MM.DD), or a range A-B, A- or -B"
        )
    return day


def parse_date_range(text: str) -> DateRange:
    """``YYYYMMDD`` (or the legacy ``YYYY.MM.DD``), or a DICOM range ``A-B``, ``A-``, ``-B``
    (inclusive)."""
    value = text.strip()
    if "-" not in value:
        day = _valid_date(value, text)
        return DateRange(day, day)
    if value.count("-") != 1 or value == "-":
        raise InvalidQuery(f"invalid study date range {text!r}: use A-B, A- or -B")
    start, end = value.split("-")
    range_ = DateRange(
        _valid_date(start, text) if start else None, _valid_date(end, text) if end else None
    )
    if range_.start and range_.end and range_.start > range_.end:
        raise InvalidQuery(f"invalid study date range {text!r}: the start is after the end")
    return range_


@dataclass(frozen=True, slots=True)
class StudyQuery:
    patient_name: str | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    modality: str | None = None
    study_date: DateRange | None = None


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    series_instance_uid: str
    series_number: int | None
    modality: str
    description: str
    body_part: str
    instance_count: int
    total_bytes: int

    def as_json(self) -> dict[str, Any]:
        return {
            "seriesInstanceUID": self.series_instance_uid,
            "seriesNumber": self.series_number,
            "modality": self.modality,
            "seriesDescription": self.description,
            "bodyPart": self.body_part,
            "instanceCount": self.instance_count,
            "totalBytes": self.total_bytes,
        }


@dataclass(frozen=True, slots=True)
class StudyResult:
    patient_name: str
    patient_id: str
    study_date: str
    study_time: str
    study_instance_uid: str
    description: str
    accession_number: str
    modalities: tuple[str, ...]
    series_count: int
    instance_count: int
    total_bytes: int
    series: tuple[SeriesSummary, ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        return {
            "patientName": self.patient_name,
            "patientID": self.patient_id,
            "studyDate": self.study_date,
            "studyTime": self.study_time,
            "studyInstanceUID": self.study_instance_uid,
            "studyDescription": self.description,
            "accessionNumber": self.accession_number,
            "modalities": list(self.modalities),
            "seriesCount": self.series_count,
            "instanceCount": self.instance_count,
            "totalBytes": self.total_bytes,
            "series": [s.as_json() for s in self.series],
        }


def _text_condition(column: str, value: str) -> tuple[str, str]:
    if has_wildcard(value):
        return f"{column} GLOB ?", wildcard_to_glob(value)
    return f"{column} = ?", fold(value)


def build_where(query: StudyQuery) -> tuple[str, list[str]]:
    """The SQL condition on ``studies st JOIN patients p`` and its parameters."""
    clauses: list[str] = []
    params: list[str] = []
    if query.patient_name:
        clause, param = _text_condition("p.name_fold", query.patient_name)
        clauses.append(clause)
        params.append(param)
    if query.patient_id:
        clause, param = _text_condition("p.patient_id_fold", query.patient_id)
        clauses.append(clause)
        params.append(param)
    if query.study_uid:
        clauses.append("st.study_instance_uid = ?")
        params.append(query.study_uid)
    if query.modality:
        if query.study_date or query.patient_name or query.patient_id or query.study_uid:
            # Another filter narrows the studies first: probe each for the modality.
            clauses.append(
                "EXISTS (SELECT 1 FROM series se WHERE se.modality_fold = ? "
                "AND se.study_pk = st.id)"
            )
        else:
            clauses.append("st.id IN (SELECT study_pk FROM series WHERE modality_fold = ?)")
        params.append(fold(query.modality))
    if query.study_date:
        clauses.append("st.study_date != ''")
        if query.study_date.start:
            clauses.append("st.study_date >= ?")
            params.append(query.study_date.start)
        if query.study_date.end:
            clauses.append("st.study_date <= ?")
            params.append(query.study_date.end)
    return (" AND ".join(clauses) or "1"), params


def find_studies(index: Index, query: StudyQuery) -> Iterator[StudyResult]:
    """One result per matching study, ordered by date, patient and UID."""
    where, params = build_where(query)
    # With a patient filter, walk the (few) patients first: left to itself SQLite may
    # walk every study in date order and look up its patient (113 ms for *BRAIN* at
    # 1,000,000 instances, 5 ms this way). CROSS JOIN fixes the loop order.
    join = "CROSS JOIN" if query.patient_name or query.patient_id else "JOIN"
    cursor = index.connection.execute(
        f"SELECT st.id, p.patient_name, p.patient_id, {SHOWN_STUDY_DATE}, st.study_time, "
        "st.study_instance_uid, st.description, st.accession_number "
        f"FROM patients p {join} studies st ON st.patient_pk = p.id "
        f"WHERE {where} ORDER BY st.study_date, p.patient_name, st.study_instance_uid",
        params,
    )
    while rows := cursor.fetchmany(_CHUNK):
        series_by_study = _series_for(index, [row[0] for row in rows])
        for row in rows:
            series = series_by_study.get(row[0], [])
            modalities = tuple(sorted({s.modality for s in series if s.modality}))
            yield StudyResult(
                patient_name=row[1],
                patient_id=row[2],
                study_date=row[3],
                study_time=row[4],
                study_instance_uid=row[5],
                description=row[6],
                accession_number=row[7],
                modalities=modalities,
                series_count=len(series),
                instance_count=sum(s.instance_count for s in series),
                total_bytes=sum(s.total_bytes for s in series),
                series=tuple(series),
            )


def _series_for(index: Index, study_pks: Sequence[int]) -> dict[int, list[SeriesSummary]]:
    marks = ",".join("?" * len(study_pks))
    rows_by_study: dict[int, list[tuple[Any, ...]]] = {}
    # Sorted here, per study: an ORDER BY would sort every series of the chunk at once.
    for row in index.connection.execute(
        "SELECT study_pk, series_instance_uid, series_number, modality, description, "
        f"body_part, instance_count, total_bytes, id FROM series WHERE study_pk IN ({marks})",
        list(study_pks),
    ):
        rows_by_study.setdefault(row[0], []).append(row)
    return {
        pk: [SeriesSummary(*row[1:8]) for row in sorted(rows, key=_series_order)]
        for pk, rows in rows_by_study.items()
    }


def _series_order(row: tuple[Any, ...]) -> tuple[bool, int, int]:
    """By series number (series without one last), then by arrival."""
    return (row[2] is None, row[2] or 0, row[8])
