from __future__ import annotations

from pathlib import Path

import pytest

from dicom_archive.archive.layout import (
    MAX_COMPONENT,
    ArchivePaths,
    patient_component,
    relative_instance_path,
    safe_component,
)
from dicom_archive.archive.records import InstanceHeader


def header(**overrides: str) -> InstanceHeader:
    values = {
        "sop_instance_uid": "1.2.3.4",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.1",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "patient_id": "PAT1",
    }
    values.update(overrides)
    return InstanceHeader(**values)  # type: ignore[arg-type]


def test_clean_values_are_kept_as_they_are() -> None:
    assert safe_component("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    assert safe_component("PAT-01_a") == "PAT-01_a"


@pytest.mark.parametrize(
    "raw", ["..", ".", "", "../../etc", "/etc/passwd", "a/b", "a\x00b", ".hidden"]
)
def test_hostile_values_become_one_safe_component(raw: str) -> None:
    """Nothing a file says can name a parent folder, an absolute path or a hidden file."""
    component = safe_component(raw)
    assert component not in ("", ".", "..")
    assert "/" not in component and "\x00" not in component
    assert not component.startswith(".")
    assert len(component) <= MAX_COMPONENT


def test_sanitised_values_never_share_a_folder() -> None:
    """'a/b' and 'a_b' both sanitise to 'a_b'; the appended hash keeps them apart."""
    assert safe_component("a/b") != safe_component("a_b")
    assert safe_component("a/b") != safe_component("a?b")


def test_long_values_are_capped_and_still_distinct() -> None:
    first, second = "9" * 5000, "9" * 4999 + "8"
    assert len(safe_component(first)) == MAX_COMPONENT
    assert safe_component(first) != safe_component(second)


def test_empty_patient_id_is_unknown() -> None:
    assert patient_component("") == "UNKNOWN"
    assert patient_component("   ") == "UNKNOWN"


def test_a_patient_id_spelt_unknown_does_not_share_the_unknown_folder() -> None:
    assert patient_component("UNKNOWN").startswith("UNKNOWN_")
    assert patient_component("UNKNOWN") != patient_component("")


def test_hostile_patient_id_stays_inside_the_archive(tmp_path: Path) -> None:
    paths = ArchivePaths(tmp_path)
    relative = relative_instance_path(header(patient_id="../../etc", sop_instance_uid="../x"))
    assert relative.startswith("data/")
    resolved = (tmp_path / relative).resolve()
    assert resolved.is_relative_to(tmp_path.resolve())
    assert paths.absolute(relative) == tmp_path / relative


def test_index_paths_outside_the_archive_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ArchivePaths(tmp_path).absolute("../outside.dcm")
