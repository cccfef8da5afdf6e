from __future__ import annotations

from pathlib import Path

import pytest

from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.query import (
    DateRange,
    StudyQuery,
    find_studies,
    parse_date_range,
    wildcard_to_glob,
)
from dicom_archive.archive.store import Archive
from dicom_archive.errors import InvalidQuery
from tests.factory import charset_file, new_uid, write_instance

NAMES = ["DOE", "DOE^JOHN", "DOERING^ANNA", "SMITH", "SMYTH", "SMOOTH", "JOHN^DOE", "Müller^Jörg"]


@pytest.fixture
def filled(archive: Archive, tmp_path: Path) -> Archive:
    files = []
    for number, name in enumerate(NAMES):
        files.append(
            write_instance(
                tmp_path / f"{number}.dcm",
                PatientName=name,
                PatientID=f"ID{number:03d}",
                StudyInstanceUID=new_uid(),
                StudyDate=f"2024010{number + 1}",
                Modality="MR" if number % 2 else "CT",
            )
        )
    assert all(o.outcome.value == "imported" for o in import_paths(archive, files))
    return archive


def names(archive: Archive, **criteria: object) -> list[str]:
    return sorted(r.patient_name for r in find_studies(archive.index, StudyQuery(**criteria)))  # type: ignore[arg-type]


def test_prefix_wildcard_matches_case_insensitively(filled: Archive) -> None:
    assert names(filled, patient_name="DOE*") == ["DOE", "DOERING^ANNA", "DOE^JOHN"]
    assert names(filled, patient_name="doe*") == ["DOE", "DOERING^ANNA", "DOE^JOHN"]


def test_question_mark_matches_exactly_one_character(filled: Archive) -> None:
    assert names(filled, patient_name="SM?TH") == ["SMITH", "SMYTH"]


def test_infix_and_exact_matching(filled: Archive) -> None:
    assert names(filled, patient_name="*JOHN*") == ["DOE^JOHN", "JOHN^DOE"]
    assert names(filled, patient_name="doe") == ["DOE"]
    assert names(filled, patient_name="müller*") == ["Müller^Jörg"]


def test_patient_id_wildcards(filled: Archive) -> None:
    assert len(names(filled, patient_id="id00?")) == 8
    assert names(filled, patient_id="ID003") == ["SMITH"]


def test_filters_combine_with_and(filled: Archive) -> None:
    assert names(filled, patient_name="DOE*", modality="mr") == ["DOE^JOHN"]
    assert names(filled, patient_name="S*", study_date=parse_date_range("20240104-20240105")) == [
        "SMITH",
        "SMYTH",
    ]


def test_date_ranges(filled: Archive) -> None:
    assert len(names(filled, study_date=parse_date_range("20240107-"))) == 2
    assert len(names(filled, study_date=parse_date_range("-20240102"))) == 2
    assert names(filled, study_date=parse_date_range("20240101")) == ["DOE"]


def test_study_uid_and_no_match(filled: Archive) -> None:
    [one] = list(find_studies(filled.index, StudyQuery(patient_name="SMITH")))
    [same] = list(find_studies(filled.index, StudyQuery(study_uid=one.study_instance_uid)))
    assert same == one
    assert one.series_count == 1 and one.instance_count == 1 and one.modalities == ("MR",)
    assert names(filled, patient_name="NOBODY*") == []


@pytest.mark.parametrize("bad", ["2024", "20241301", "2024-01-01", "20240105-20240101", "-", "abc"])
def test_bad_dates_are_usage_errors(bad: str) -> None:
    with pytest.raises(InvalidQuery):
        parse_date_range(bad)


def test_date_range_parsing() -> None:
    assert parse_date_range("20240101-20240131") == DateRange("20240101", "20240131")
    assert parse_date_range("20240101-") == DateRange("20240101", None)
    assert parse_date_range("-20240131") == DateRange(None, "20240131")


def test_brackets_are_literal() -> None:
    assert wildcard_to_glob("A[1]*") == "a[[]1[]]*"


def test_prefix_query_is_served_by_the_index(filled: Archive) -> None:
    plan = filled.index.connection.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM patients WHERE name_fold GLOB ?", ("doe*",)
    ).fetchall()
    assert any("patients_name_fold" in str(row) for row in plan), plan


def test_charset_names_are_found_by_wildcard(archive: Archive) -> None:
    """Japanese, Greek, Russian and Arabic names come out right and can be searched."""
    files = [charset_file(n) for n in ("chrH31.dcm", "chrGreek.dcm", "chrRuss.dcm", "chrArab.dcm")]
    assert all(o.outcome.value == "imported" for o in import_paths(archive, files))
    assert names(archive, patient_name="*山田*") == ["Yamada^Tarou=山田^太郎=やまだ^たろう"]
    assert names(archive, patient_name="διον*") == ["Διονυσιος"]
    assert names(archive, patient_name="люк*") == ["Люкceмбypг"]
    assert names(archive, patient_name="قباني*") == ["قباني^لنزار"]


def plan(archive: Archive, query: StudyQuery) -> str:
    from dicom_archive.archive.query import build_where

    where, params = build_where(query)
    join = "CROSS JOIN" if query.patient_name or query.patient_id else "JOIN"
    rows = archive.index.connection.execute(
        f"EXPLAIN QUERY PLAN SELECT st.id FROM patients p {join} studies st "
        f"ON st.patient_pk = p.id WHERE {where}",
        params,
    ).fetchall()
    return " | ".join(str(row[3]) for row in rows)


def test_query_plans_start_from_the_narrowest_filter(filled: Archive) -> None:
    """An infix name scans the small patients table, never every study; a date range
    with a modality walks the date index and probes series for the modality."""
    infix = plan(filled, StudyQuery(patient_name="*JOHN*"))
    assert infix.startswith("SCAN p") and "SCAN st" not in infix, infix
    dated = plan(filled, StudyQuery(modality="CT", study_date=parse_date_range("20240101-")))
    assert "studies_date" in dated and "series_modality" in dated, dated


def test_stats_are_served_by_a_covering_index(archive: Archive) -> None:
    rows = archive.index.connection.execute(
        "EXPLAIN QUERY PLAN SELECT modality, SUM(instance_count), COUNT(*), "
        "COUNT(DISTINCT study_pk), SUM(total_bytes) FROM series GROUP BY modality"
    ).fetchall()
    assert "COVERING INDEX series_stats" in " ".join(str(r[3]) for r in rows)


def test_an_older_index_is_migrated_on_open(archive: Archive) -> None:
    """An empty index of schema 2 gains every later migration when opened."""
    import sqlite3

    from dicom_archive.archive.index import MIGRATIONS, SCHEMA_VERSION
    from dicom_archive.archive.store import open_archive

    path = archive.paths.index
    archive.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    old = sqlite3.connect(path, isolation_level=None)
    for version in (1, 2):
        for statement in MIGRATIONS[version].split(";"):
            if statement.strip():
                old.execute(statement)
    old.execute("PRAGMA user_version = 2")
    old.close()
    with open_archive(archive.root) as reopened:
        assert reopened.index.schema_version() == SCHEMA_VERSION
        names = {r[0] for r in reopened.index.connection.execute("SELECT name FROM sqlite_master")}
        assert "series_stats" in names
