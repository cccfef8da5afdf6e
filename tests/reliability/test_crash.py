"""SIGKILL at every step of the import transaction loses, duplicates and corrupts nothing.

Each test runs the real ``dicom-archive import`` in a new process with
``DICOM_ARCHIVE_CRASH_AT`` set, so the process kills itself (SIGKILL: no cleanup,
no ``finally``) at that step of a batch; then it runs the same import again and
proves every input is archived exactly once, byte-identical, and the index and
the disk agree.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from dicom_archive.archive.faults import ENV_AFTER, ENV_POINT
from dicom_archive.archive.importer import DEFAULT_BATCH_SIZE
from tests.factory import StudySpec, write_studies
from tests.reliability.helpers import (
    KILLED,
    assert_exactly_once,
    cli,
    index_rows,
    sha256_of,
    tree_hashes,
)

#: The CLI's steps (``source-removed`` belongs to the daemon).
POINTS = ("temp-written", "temp-synced", "linked", "index-committed")
#: Two and a half of the importer's batches, so a crash can hit the first or a later one.
SPEC = StudySpec(
    patients=(DEFAULT_BATCH_SIZE * 5 // 2) // 30 + 1, series_per_study=2, instances_per_series=15
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("crash-sources")
    write_studies(folder, SPEC)
    return folder


def _source_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm"))


def assert_index_points_at_whole_files(archive: Path) -> None:
    """After a crash: no row names a missing or partial file."""
    for path, size, sha in index_rows(archive).values():
        on_disk = archive / path
        assert on_disk.is_file(), f"row for a missing file: {path}"
        assert on_disk.stat().st_size == size and sha256_of(on_disk) == sha, path


def check_findings(archive: Path) -> list[dict[str, str]]:
    result = cli("check", "-a", archive, "--verify-files", "-f", "json")
    findings: list[dict[str, str]] = json.loads(result.stdout)["findings"]
    return findings


def crash_then_recover(sources: Path, archive: Path, point: str, after: int) -> None:
    before = tree_hashes(sources)
    crashed = cli(
        "import",
        sources,
        "-a",
        archive,
        "--recursive",
        env={ENV_POINT: point, ENV_AFTER: str(after)},
    )
    assert crashed.returncode == KILLED, (point, after, crashed.stderr)
    assert tree_hashes(sources) == before, "a source changed"
    assert_index_points_at_whole_files(archive)

    again = cli("import", sources, "-a", archive, "--recursive", "--skip-duplicates")
    assert again.returncode == 0, again.stderr
    assert tree_hashes(sources) == before
    assert_exactly_once(archive, _source_files(sources))
    # Temporary copies of the killed process are the only thing a restart leaves.
    leftovers = check_findings(archive)
    assert {f["kind"] for f in leftovers} <= {"temporary"}, leftovers
    repaired = cli("check", "-a", archive, "--repair", "--yes")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert check_findings(archive) == []


@pytest.mark.parametrize("after", [0, 1], ids=["first-batch", "second-batch"])
@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_each_import_step_loses_nothing(
    sources: Path, tmp_path: Path, point: str, after: int
) -> None:
    """Killed at any step of the first or a later batch, a re-run archives every input
    exactly once, byte-identical, and check --verify-files is clean."""
    archive = tmp_path / "archive"
    assert cli("init", "-p", archive).returncode == 0
    crash_then_recover(sources, archive, point, after)


def test_reimport_after_a_crash_leaves_check_clean_without_repair(
    sources: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    cli("init", "-p", archive)
    crashed = cli("import", sources, "-a", archive, "--recursive", env={ENV_POINT: "temp-synced"})
    assert crashed.returncode == KILLED
    cli("import", sources, "-a", archive, "--recursive", "--skip-duplicates")
    assert check_findings(archive) == []


def test_crash_before_any_commit_leaves_an_index_that_says_nothing_happened(
    sources: Path, tmp_path: Path
) -> None:
    """Killed after linking but before the commit: files without rows, never rows
    without files; a re-import adopts the linked files instead of conflicting."""
    archive = tmp_path / "archive"
    cli("init", "-p", archive)
    crashed = cli("import", sources, "-a", archive, "--recursive", env={ENV_POINT: "linked"})
    assert crashed.returncode == KILLED
    assert index_rows(archive) == {}
    assert list((archive / "data").rglob("*.dcm"))
    again = cli("import", sources, "-a", archive, "--recursive")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(
        f"{len(_source_files(sources))} imported, 0 duplicates, 0 conflicts"
    )


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_soak_repeated_random_crashes(tmp_path: Path, seed: int) -> None:
    """Long form: 600 files, killed again and again at random steps and batches,
    then one clean run: still exactly once, byte-identical, check clean."""
    rng = random.Random(seed)
    sources = tmp_path / "in"
    write_studies(sources, StudySpec(patients=10, series_per_study=3, instances_per_series=20))
    archive = tmp_path / "archive"
    cli("init", "-p", archive)
    before = tree_hashes(sources)
    kills = 0
    for _ in range(8):
        point = rng.choice(POINTS)
        # within the batches that still have work, so each round can be killed
        after = rng.randrange(0, -(-600 // DEFAULT_BATCH_SIZE))
        run = cli(
            "import",
            sources,
            "-a",
            archive,
            "--recursive",
            "--skip-duplicates",
            env={ENV_POINT: point, ENV_AFTER: str(after)},
        )
        assert run.returncode in (KILLED, 0), run.stderr
        kills += run.returncode == KILLED
        assert_index_points_at_whole_files(archive)
    assert kills >= 1
    final = cli("import", sources, "-a", archive, "--recursive", "--skip-duplicates")
    assert final.returncode == 0, final.stderr
    assert tree_hashes(sources) == before
    assert_exactly_once(archive, _source_files(sources))
    assert cli("check", "-a", archive, "--repair", "--yes").returncode == 0
    assert check_findings(archive) == []


@pytest.mark.slow
@pytest.mark.parametrize("after", range(-(-600 // DEFAULT_BATCH_SIZE)))
@pytest.mark.parametrize("point", POINTS)
def test_soak_every_step_of_every_batch(tmp_path: Path, point: str, after: int) -> None:
    """Long form: 600 files, killed at each step of each batch."""
    sources = tmp_path / "in"
    write_studies(sources, StudySpec(patients=10, series_per_study=3, instances_per_series=20))
    archive = tmp_path / "archive"
    cli("init", "-p", archive)
    crash_then_recover(sources, archive, point, after)
