"""SIGKILL during delete, restore and trash empty loses nothing and leaves no row
naming a missing file; the next command finishes the step and check is clean.

Each run is the real ``dicom-archive`` in a new process, killed either by itself at a
named step (``DICOM_ARCHIVE_CRASH_AT``: every step of each operation, and part-way
through the moves) or by the test at a random instant. After every kill, *before*
anything reopens the archive, the index is read straight from SQLite:

* every row's file is at its path with its size;
* every file the archive held is in ``data/`` or ``trash/`` exactly once.

Then any command (here ``check --verify-files``) finishes the interrupted step and
reports a clean archive, and a final restore brings back every byte.
The long form is marked slow (``SOAK_KILLS=200 pytest -m slow tests/reliability/
test_trash_kills.py``).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from dicom_archive.archive.faults import ENV_AFTER, ENV_POINT
from tests.factory import StudySpec, write_studies
from tests.reliability.helpers import CLI, KILLED, REPO, cli, index_rows, sha256_of

SPEC = StudySpec(patients=3, series_per_study=2, instances_per_series=40)
VICTIM = "PAT00001"  # 80 instances


#: For the random kills: 600 instances of the victim, so a delete's moves take about as
#: long as the interpreter's start-up and a random instant often lands inside them.
BIG = StudySpec(patients=2, series_per_study=4, instances_per_series=150)


def _make(tmp_path: Path, spec: StudySpec) -> tuple[Path, Counter[str]]:
    sources = tmp_path / "in"
    write_studies(sources, spec)
    root = tmp_path / "archive"
    assert cli("init", "-p", root).returncode == 0
    assert cli("import", sources, "-a", root, "--recursive").returncode == 0
    return root, _contents(root)


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, Counter[str]]:
    return _make(tmp_path, SPEC)


@pytest.fixture
def big(tmp_path: Path) -> tuple[Path, Counter[str]]:
    return _make(tmp_path, BIG)


def _interrupted(root: Path) -> bool:
    """Whether a trash entry was left part-way (read without recovering it)."""
    import sqlite3

    connection = sqlite3.connect(root / "archive.db")
    try:
        row = connection.execute(
            "SELECT COUNT(*) FROM trash_entries WHERE state != 'trashed'"
        ).fetchone()
        return bool(row[0])
    finally:
        connection.close()


def _contents(root: Path) -> Counter[str]:
    """SHA-256 of every DICOM file in data/ and trash/, with how many copies."""
    files = [*(root / "data").rglob("*.dcm"), *(root / "trash").rglob("*.dcm")]
    return Counter(sha256_of(p) for p in files)


def assert_consistent_at_rest(root: Path, original: Counter[str]) -> None:
    """Straight after a kill: no row names a missing file; every file exactly once."""
    for path, size, _sha in index_rows(root).values():
        on_disk = root / path
        assert on_disk.is_file(), f"row for a missing file: {path}"
        assert on_disk.stat().st_size == size, path
    assert _contents(root) == original, "a file was lost or duplicated"


def assert_recovered(root: Path, original: Counter[str]) -> None:
    result = cli("check", "-a", root, "--verify-files")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _contents(root) == original
    listing = cli("trash", "list", "-a", root, "-f", "json")
    assert listing.returncode == 0
    assert '"state": "moving"' not in listing.stdout
    assert '"state": "restoring"' not in listing.stdout


def restore_all(root: Path) -> None:
    import json

    for entry in json.loads(cli("trash", "list", "-a", root, "-f", "json").stdout):
        assert cli("trash", "restore", "-a", root, str(entry["id"])).returncode == 0


def _delete(root: Path, env: dict[str, str] | None = None) -> int:
    argv = ("delete", "-a", root, "--patient-id", VICTIM, "--yes", "--reason", "kill test")
    return cli(*argv, env=env).returncode


@pytest.mark.parametrize(
    ("point", "after"),
    [
        ("trash-journaled", 0),
        ("trash-manifest", 0),
        ("trash-moved-one", 0),
        ("trash-moved-one", 41),
        ("trash-moved", 0),
    ],
)
def test_kill_at_each_step_of_a_delete(
    archive: tuple[Path, Counter[str]], point: str, after: int
) -> None:
    root, original = archive
    rows_before = index_rows(root)
    assert _delete(root, {ENV_POINT: point, ENV_AFTER: str(after)}) == KILLED
    assert_consistent_at_rest(root, original)
    assert_recovered(root, original)
    # Rolled forward: the whole patient is in the trash, the rest untouched.
    rows = index_rows(root)
    assert len(rows) == len(rows_before) - 80
    assert all(rows_before[sop] == row for sop, row in rows.items())
    restore_all(root)
    assert index_rows(root) == rows_before


@pytest.mark.parametrize(
    ("point", "after"),
    [
        ("restore-marked", 0),
        ("restore-moved-one", 0),
        ("restore-moved-one", 50),
        ("restore-moved", 0),
    ],
)
def test_kill_at_each_step_of_a_restore(
    archive: tuple[Path, Counter[str]], point: str, after: int
) -> None:
    root, original = archive
    rows_before = index_rows(root)
    assert _delete(root) == 0
    killed = cli("trash", "restore", "-a", root, "1", env={ENV_POINT: point, ENV_AFTER: str(after)})
    assert killed.returncode == KILLED
    assert_consistent_at_rest(root, original)
    assert_recovered(root, original)
    assert index_rows(root) == rows_before  # rolled forward: all back
    assert not list((root / "trash").rglob("*.dcm"))


def test_kill_while_emptying_removes_only_the_trash(archive: tuple[Path, Counter[str]]) -> None:
    root, original = archive
    rows_before = index_rows(root)
    assert _delete(root) == 0
    killed = cli(
        "trash",
        "empty",
        "-a",
        root,
        "--yes",
        env={ENV_POINT: "empty-unlinked-one", ENV_AFTER: "30"},
    )
    assert killed.returncode == KILLED
    assert index_rows(root) == {
        s: r for s, r in rows_before.items() if f"/{VICTIM}/" not in f"/{r[0]}"
    }
    assert cli("check", "-a", root, "--verify-files").returncode == 0
    assert not list((root / "trash").rglob("*.dcm"))
    kept = _contents(root)
    assert sum(kept.values()) == sum(original.values()) - 80
    assert cli("trash", "list", "-a", root).stdout.strip() == "The trash is empty."


def _random_kills(root: Path, original: Counter[str], rounds: int, seed: int) -> None:
    """Alternate delete and restore, each SIGKILLed at a random instant of its run."""
    rng = random.Random(seed)
    started = time.perf_counter()
    assert _delete(root) == 0
    restore_all(root)
    span = (time.perf_counter() - started) / 2  # one command's whole run
    kills = mid_step = 0
    for _ in range(rounds):
        listing = cli("trash", "list", "-a", root).stdout
        argv = (
            ["delete", "-a", str(root), "--patient-id", VICTIM, "--yes"]
            if "The trash is empty." in listing
            else ["trash", "restore", "-a", str(root), listing.splitlines()[2].split()[0]]
        )
        process = subprocess.Popen(
            [*CLI, *argv], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # Mostly after the start-up, where the work is; sometimes before or after it.
        time.sleep(rng.uniform(span * 0.2, span * 1.1))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
        assert_consistent_at_rest(root, original)
        mid_step += _interrupted(root)
    print(f"{rounds} rounds: {kills} killed, {mid_step} inside a delete or restore")
    assert kills, "no round reached its kill"
    assert mid_step, "no kill landed inside a delete or restore: the test proves nothing"
    assert_recovered(root, original)
    restore_all(root)
    assert_recovered(root, original)
    assert cli("trash", "list", "-a", root).stdout.strip() == "The trash is empty."


def test_random_kills_during_delete_and_restore(big: tuple[Path, Counter[str]]) -> None:
    root, original = big
    _random_kills(root, original, rounds=8, seed=11)


@pytest.mark.slow
def test_random_kills_soak(big: tuple[Path, Counter[str]]) -> None:
    root, original = big
    _random_kills(root, original, rounds=int(os.environ.get("SOAK_KILLS", "60")), seed=23)
