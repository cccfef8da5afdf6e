"""The daemon applies retention through the trash and empties the trash after its
delay; protected studies are never touched; every step is audited."""

from __future__ import annotations

from pathlib import Path

from dicom_archive.archive.audit import read_audit
from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.store import init_archive
from tests.factory import StudySpec, write_studies
from tests.integration.daemon_harness import DaemonProcess, wait_until
from tests.reliability.helpers import cli, index_rows


def test_daemon_retention_then_trash_emptying(tmp_path: Path) -> None:
    sources = write_studies(tmp_path / "in", StudySpec(patients=3))
    with init_archive(tmp_path / "d" / "archive") as archive:
        list(import_paths(archive, sources))
        studies = [
            r[0]
            for r in archive.index.connection.execute(
                "SELECT study_instance_uid FROM studies ORDER BY id"
            )
        ]
    keep = studies[1]
    daemon = DaemonProcess(
        tmp_path / "d",
        trash={"empty_after_days": 2 / 86400},  # two seconds
        retention={
            "interval_hours": 1,
            "protect_studies": [keep],
            "rule": [{"older_than_days": 30, "by": "study_date", "modality": ["CT"]}],
        },
    )
    try:
        daemon.start()

        def actions() -> list[str]:
            return [e.action for e in read_audit(daemon.archive)]

        wait_until(lambda: "trash-empty" in actions(), 30, "retention, then the trash emptied")
        assert daemon.stop() == 0
    finally:
        daemon.close()
    assert actions()[:2] == ["retention", "trash-empty"]
    rows = index_rows(daemon.archive)
    assert len(rows) == 6 and all(keep in path for path, _, _ in rows.values())
    assert not list((daemon.archive / "trash").rglob("*.dcm"))
    assert cli("check", "-a", daemon.archive, "--verify-files").returncode == 0
    retention = next(e for e in read_audit(daemon.archive) if e.action == "retention")
    assert retention.count == 12 and sorted(retention.details["studies"]) == sorted(
        s for s in studies if s != keep
    )
