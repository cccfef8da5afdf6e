"""Property-based tests (hypothesis) for the pure parts: path sanitising, wildcard
to SQL, date ranges."""

from __future__ import annotations

import datetime
import fnmatch
import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicom_archive.archive.index import Index, fold
from dicom_archive.archive.layout import (
    MAX_COMPONENT,
    ArchivePaths,
    patient_component,
    relative_instance_path,
    safe_component,
)
from dicom_archive.archive.query import (
    StudyQuery,
    build_where,
    parse_date_range,
    wildcard_to_glob,
)
from dicom_archive.archive.records import InstanceHeader
from dicom_archive.errors import InvalidQuery

# Fast in CI; HYPOTHESIS_MAX_EXAMPLES=5000 explores further by hand. Applied per
# test, so other modules' hypothesis settings are left alone.
FAST = settings(
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

_raw = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from("./\\\0"),
    max_size=300,
)
_ALLOWED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


@FAST
@given(_raw)
def test_a_safe_component_never_escapes(raw: str) -> None:
    part = safe_component(raw)
    assert part and set(part) <= _ALLOWED
    assert part not in (".", "..") and not part.startswith(".")
    assert len(part) <= MAX_COMPONENT
    assert safe_component(raw) == part  # stable


@FAST
@given(_raw, _raw)
def test_different_raw_values_never_share_a_component(a: str, b: str) -> None:
    if a != b:
        assert safe_component(a) != safe_component(b)
        if a.strip() and b.strip():
            assert patient_component(a) != patient_component(b)


@FAST
@given(st.lists(_raw, min_size=4, max_size=4))
def test_an_instance_path_stays_inside_the_archive(values: list[str]) -> None:
    patient, study, series, sop = values
    header = InstanceHeader(
        sop_instance_uid=sop or "1",
        sop_class_uid="1.2",
        study_instance_uid=study or "1",
        series_instance_uid=series or "1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        patient_id=patient,
    )
    relative = relative_instance_path(header)
    parts = relative.split("/")
    assert len(parts) == 5 and parts[0] == "data"
    root = Path("/srv/archive")
    ArchivePaths(root).absolute(relative)  # raises when outside


def test_safe_components_are_stable_across_releases() -> None:
    """Changing the mapping would orphan every archived file: pin a few."""
    assert safe_component("1.2.840.10008.1") == "1.2.840.10008.1"
    assert safe_component("../../x") == "_._.._x_9cdf6a50"
    assert safe_component("/etc/x") == "_etc_x_4074fa01"
    assert patient_component("  ") == "UNKNOWN"


_pattern_chars = st.sampled_from(list("aAbBß*?[]^!-.é"))
_text_chars = st.sampled_from(list("aAbBßsSé[]^!-.*?"))


@pytest.fixture(scope="module")
def db() -> sqlite3.Connection:
    return sqlite3.connect(":memory:")


@FAST
@given(pattern=st.text(_pattern_chars, max_size=8), text=st.text(_text_chars, max_size=8))
def test_wildcards_agree_with_fnmatch_on_folded_text(
    db: sqlite3.Connection, pattern: str, text: str
) -> None:
    """``*`` and ``?`` are the only wildcards; ``[`` and ``]`` are literal; case is ignored."""
    literal_brackets = fold(pattern).replace("[", "[[]")
    expected = fnmatch.fnmatchcase(fold(text), literal_brackets)
    (found,) = db.execute("SELECT ? GLOB ?", (fold(text), wildcard_to_glob(pattern))).fetchone()
    assert bool(found) == expected


def test_a_wildcard_with_a_literal_prefix_is_served_by_the_index(tmp_path: Path) -> None:
    index = Index.create(tmp_path / "archive.db")
    try:
        for field, expected_index in (
            ("patient_name", "patients_name_fold"),
            ("patient_id", "patients_id_fold"),
        ):
            where, params = build_where(StudyQuery(**{field: "DOE*"}))
            plan = index.connection.execute(
                "EXPLAIN QUERY PLAN SELECT st.id FROM studies st JOIN patients p "
                f"ON p.id = st.patient_pk WHERE {where}",
                params,
            ).fetchall()
            text = " ".join(str(row[-1]) for row in plan)
            assert f"INDEX {expected_index}" in text, text
    finally:
        index.close()


_dates = st.dates(min_value=datetime.date(1900, 1, 1), max_value=datetime.date(2099, 12, 31))


def _da(day: datetime.date) -> str:
    return day.strftime("%Y%m%d")


@FAST
@given(_dates, _dates, _dates)
def test_a_date_range_is_inclusive_and_matches_like_date_comparison(
    a: datetime.date, b: datetime.date, probe: datetime.date
) -> None:
    start, end = min(a, b), max(a, b)
    closed = parse_date_range(f"{_da(start)}-{_da(end)}")
    assert closed.matches(_da(probe)) == (start <= probe <= end)
    assert parse_date_range(f"{_da(start)}-").matches(_da(probe)) == (probe >= start)
    assert parse_date_range(f"-{_da(end)}").matches(_da(probe)) == (probe <= end)
    assert parse_date_range(_da(probe)).matches(_da(probe))
    if start < end:
        with pytest.raises(InvalidQuery):
            parse_date_range(f"{_da(end)}-{_da(start)}")


@FAST
@given(st.text(max_size=30))
def test_any_date_text_either_parses_or_is_a_usage_error(text: str) -> None:
    try:
        result = parse_date_range(text)
    except InvalidQuery:
        return
    for bound in (result.start, result.end):
        if bound is not None:
            datetime.datetime.strptime(bound, "%Y%m%d")
            assert len(bound) == 8
