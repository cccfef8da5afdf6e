"""Retention rules: by study date or import date, per modality; protected studies and
patients never taken; applied through the trash; config errors name the key."""

from __future__ import annotations

import calendar
import json
import time
from pathlib import Path

import pytest

from dicom_archive.archive import trash
from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.retention import (
    RetentionRule,
    RetentionSettings,
    apply_retention,
    due_studies,
    lifecycle_summary,
    parse_retention,
    protect,
    record_settings,
)
from dicom_archive.archive.store import Archive
from dicom_archive.cli import main
from dicom_archive.errors import ConfigError
from tests.factory import new_uid, write_instance

NOW = calendar.timegm(time.strptime("2025-01-01", "%Y-%m-%d"))


@pytest.fixture
def studies(archive: Archive, tmp_path: Path) -> dict[str, str]:
    """Study UID per name: dates and modalities chosen around the rules below."""
    made = {}
    for name, date, modality, patient in (
        ("old_ct", "20100101", "CT", "P1"),
        ("old_mr", "20100101", "MR", "P1"),
        ("new_ct", "20241201", "CT", "P2"),
        ("no_date", "", "CT", "P2"),
        ("old_protected_patient", "20000101", "CT", "KEEP"),
    ):
        uid = new_uid()
        write_instance(
            tmp_path / "in" / f"{name}.dcm",
            StudyInstanceUID=uid,
            StudyDate=date or None,
            Modality=modality,
            PatientID=patient,
        )
        made[name] = uid
    list(import_paths(archive, sorted((tmp_path / "in").glob("*.dcm"))))
    return made


def _due(archive: Archive, settings: RetentionSettings) -> set[str]:
    return {d.study_instance_uid for d in due_studies(archive, settings, now=NOW)}


def test_study_date_rule_per_modality(archive: Archive, studies: dict[str, str]) -> None:
    ct = RetentionSettings(
        rules=(RetentionRule(365, "study_date", ("CT",)),), protect_patients=("KEEP",)
    )
    assert _due(archive, ct) == {studies["old_ct"]}
    every = RetentionSettings(rules=(RetentionRule(365),))
    assert _due(archive, every) == {
        studies["old_ct"],
        studies["old_mr"],
        studies["old_protected_patient"],
    }  # never the study without a date


def test_import_date_rule(archive: Archive, studies: dict[str, str]) -> None:
    rule = RetentionSettings(rules=(RetentionRule(1, "import_date"),))
    assert _due(archive, rule) == set()  # imported just now
    later = time.time() + 2 * 86400
    assert {d.study_instance_uid for d in due_studies(archive, rule, now=later)} == set(
        studies.values()
    )


def test_protected_in_the_index_are_never_due(archive: Archive, studies: dict[str, str]) -> None:
    protect(archive, "study", studies["old_ct"], reason="trial")
    protect(archive, "patient", "KEEP")
    assert _due(archive, RetentionSettings(rules=(RetentionRule(365),))) == {studies["old_mr"]}


def test_apply_goes_through_the_trash_one_entry_per_study(
    archive: Archive, studies: dict[str, str]
) -> None:
    settings = RetentionSettings(rules=(RetentionRule(365),), protect_studies=(studies["old_mr"],))
    result = apply_retention(archive, settings, now=NOW)
    assert {s.study_instance_uid for s in result.studies} == {
        studies["old_ct"],
        studies["old_protected_patient"],
    }
    found = trash.entries(archive)
    assert [e.origin for e in found] == ["retention", "retention"]
    assert all("retention: all studies older than 365 days" in e.reason for e in found)
    trash.restore(archive, found[0].id)  # each can be restored alone
    assert len(trash.entries(archive)) == 1


def test_stats_shows_what_is_scheduled(
    archive: Archive, studies: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    record_settings(archive, RetentionSettings(rules=(RetentionRule(365, modalities=("MR",)),)))
    summary = lifecycle_summary(archive)
    assert (summary.due_studies, summary.due_instances) == (1, 1)
    assert main(["stats", "-a", str(archive.root), "-f", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["retention"]["dueStudies"] == 1 and document["trash"]["instances"] == 0
    assert main(["stats", "-a", str(archive.root)]) == 0
    assert "Retention:   1 studies, 1 instances" in capsys.readouterr().out


def test_cli_dry_run_lists_and_changes_nothing(
    archive: Archive,
    studies: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "daemon.toml"
    config.write_text(
        '[retention]\nprotect_patients = ["KEEP"]\n'
        '[[retention.rule]]\nolder_than_days = 365\nby = "study_date"\nmodality = ["mr"]\n'
    )
    root = str(archive.root)
    assert main(["retention", "-a", root, "-c", str(config), "--dry-run", "-f", "json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["studyInstanceUID"] == studies["old_mr"]
    assert trash.entries(archive) == []
    assert main(["retention", "-a", root, "-c", str(config)]) == 1  # no tty, no --yes
    assert main(["retention", "-a", root, "-c", str(config), "--yes"]) == 0
    assert "Moved 1 studies, 1 instances" in capsys.readouterr().out
    assert main(["retention", "-a", root]) == 2  # no config, no rules recorded
    assert "no retention rules" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"rule": [{"older_than_days": -1}]}, "retention.rule[1].older_than_days"),
        ({"rule": [{"older_than_days": 5, "by": "birthday"}]}, "retention.rule[1].by"),
        ({"rule": [{"days": 5}]}, "retention.rule[1].days"),
        ({"protect_studies": "1.2.3", "keep": 1}, "retention.keep"),
        ({"rule": [{"older_than_days": 5, "modality": [1]}]}, "retention.rule[1].modality"),
    ],
)
def test_config_errors_name_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_retention(table, "daemon.toml")


def test_daemon_config_reads_trash_and_retention_tables(tmp_path: Path) -> None:
    from dicom_archive.daemon.config import load_config

    path = tmp_path / "daemon.toml"
    base = 'archive = "a"\nincoming = "i"\nrejected = "r"\n'
    path.write_text(
        base + "[trash]\nempty_after_days = 7\n[retention]\ninterval_hours = 2\n"
        '[[retention.rule]]\nolder_than_days = 30\nby = "import_date"\n'
    )
    config = load_config(path)
    assert config.trash.empty_after == 7 * 86400
    assert config.retention.interval == 7200
    assert config.retention.rules == (RetentionRule(30, "import_date"),)
    assert config.summary()["retention"]["rules"][0]["by"] == "import_date"
    path.write_text(base + "[trash]\nempty_after = 7\n")
    with pytest.raises(ConfigError, match=r"trash\.empty_after: unknown key"):
        load_config(path)
