"""When archive_index.json is rewritten, and that a reader always finds it whole.

The rule (README, "archive_index.json"): an import rewrites it only when that is
expected to cost at most a tenth of the import (or 50 ms); otherwise the previous
document stays, complete and valid, and is reported stale until `snapshot` or the
daemon rewrites it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_archive.archive import snapshot
from dicom_archive.archive.store import open_archive
from dicom_archive.cli import main
from tests.factory import StudySpec, write_studies


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def file_count(archive: Path) -> int:
    """The snapshot as a tool reads it: it must always parse as a whole document."""
    return int(json.loads((archive / "archive_index.json").read_text("utf-8"))["fileCount"])


@pytest.fixture
def archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "archive"
    assert run(capsys, "init", "-p", str(path))[0] == 0
    return path


def test_a_cheap_snapshot_is_rewritten_by_the_import(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A small archive: the import leaves the snapshot current and records its cost."""
    write_studies(tmp_path / "in", StudySpec(patients=2, studies_per_patient=1))
    code, _, err = run(capsys, "import", str(tmp_path / "in"), "-a", str(archive), "--recursive")
    assert code == 0 and "stale" not in err
    assert file_count(archive) == 12
    with open_archive(archive) as opened:
        state = snapshot.snapshot_state(opened.paths, opened.index)
        assert state.current is True and state.instances == 12 and state.seconds is not None
    code, out, _ = run(capsys, "stats", "-a", str(archive))
    assert "Snapshot:    archive_index.json current" in out


def test_an_expensive_snapshot_is_left_stale_whole_and_said_so(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Expected cost above the import's budget: the previous document stays complete
    and valid, the import, `stats`, `status` and `snapshot --check` say it is stale,
    and `snapshot` (or the daemon's refresh) makes it current again."""
    write_studies(tmp_path / "a", StudySpec(patients=1, studies_per_patient=1))
    write_studies(tmp_path / "b", StudySpec(patients=1, studies_per_patient=1))
    assert run(capsys, "import", str(tmp_path / "a"), "-a", str(archive), "--recursive")[0] == 0
    assert file_count(archive) == 6
    # As if each instance cost a second to write out: never cheap.
    monkeypatch.setattr(snapshot, "CHEAP_SECONDS", 0.0)
    with open_archive(archive) as opened, opened.index.write() as db:
        db.execute("UPDATE meta SET value = '6' WHERE key = 'snapshot_seconds'")

    code, _, err = run(capsys, "import", str(tmp_path / "b"), "-a", str(archive), "--recursive")
    assert code == 0 and "archive_index.json left stale" in err
    assert "dicom-archive snapshot -a" in err
    assert file_count(archive) == 6, "the previous, complete document stays"
    _, out, _ = run(capsys, "stats", "-a", str(archive))
    assert "Snapshot:    archive_index.json stale" in out
    _, out, _ = run(capsys, "stats", "-a", str(archive), "-f", "json")
    assert json.loads(out)["snapshot"]["current"] is False
    _, out, _ = run(capsys, "status", "-a", str(archive))
    assert "Snapshot:     archive_index.json stale" in out
    assert run(capsys, "snapshot", "-a", str(archive), "--check")[0] == 1

    code, out, _ = run(capsys, "snapshot", "-a", str(archive))
    assert code == 0 and "12 instances" in out
    assert file_count(archive) == 12
    assert run(capsys, "snapshot", "-a", str(archive), "--check")[0] == 0


def test_the_daemon_refreshes_a_snapshot_the_cli_left_stale(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The scheduler rewrites a stale snapshot even when the index did not change
    since the daemon started, and leaves a current one alone."""
    from dicom_archive.daemon.scheduler import Scheduler

    write_studies(tmp_path / "a", StudySpec(patients=1, studies_per_patient=1))
    monkeypatch.setattr(snapshot, "CHEAP_SECONDS", 0.0)
    monkeypatch.setattr(snapshot, "CHEAP_SHARE", 0.0)
    assert run(capsys, "import", str(tmp_path / "a"), "-a", str(archive), "--recursive")[0] == 0
    assert file_count(archive) == 0
    scheduler = Scheduler.__new__(Scheduler)  # only refresh_snapshot is exercised
    with open_archive(archive) as opened:
        assert scheduler.refresh_snapshot(opened) is True
        assert file_count(archive) == 6
        assert scheduler.refresh_snapshot(opened) is False


def test_the_expected_cost_scales_with_the_last_rewrite(archive: Path) -> None:
    """The estimate is the last rewrite's cost per instance times the instances now."""
    with open_archive(archive) as opened, opened.index.write() as db:
        db.execute("UPDATE meta SET value = '2.0' WHERE key = 'snapshot_seconds'")
        db.execute("UPDATE meta SET value = '1000' WHERE key = 'snapshot_instances'")
    with open_archive(archive) as opened:
        assert snapshot.expected_cost(opened.index) == 0.0  # no instances yet
        assert snapshot.refresh_if_cheap(opened.paths, opened.index, 0.0) is True
