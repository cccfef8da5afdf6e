"""Disk full, permission denied, another filesystem, a locked index: each gives a
clear error, keeps the source, leaves index and disk in agreement, and the same
import succeeds once the cause is gone."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_archive.archive import index as index_module
from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.records import Outcome
from dicom_archive.archive.store import init_archive, open_archive
from tests.factory import StudySpec, write_instance, write_studies
from tests.reliability.helpers import (
    CLI,
    assert_exactly_once,
    cli,
    index_rows,
    tree_hashes,
    unprivileged,
)


def check_clean(archive: Path) -> None:
    result = cli("check", "-a", archive, "--verify-files", "-f", "json")
    assert json.loads(result.stdout)["findings"] == [], result.stdout


def big_instance(path: Path, size_bytes: int) -> Path:
    """A valid instance of about ``size_bytes`` (native 16-bit pixels)."""
    columns = 2048
    rows = max(1, size_bytes // (columns * 2))
    return write_instance(path, rows=rows, columns=columns, PixelData=bytes(rows * columns * 2))


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB filesystem (tmpfs), so ENOSPC comes from the kernel."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def grow(mount_point: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True)


@pytest.mark.parametrize("big", [3_000_000, 70_000_000], ids=["read-whole", "streamed"])
def test_disk_full_during_the_copy_keeps_the_source_and_resumes(
    small_fs: Path, tmp_path: Path, big: int
) -> None:
    """ENOSPC while copying: that file fails with "disk full", its temporary copy is
    gone, the others are archived, and after the disk grows the same import finishes."""
    sources = tmp_path / "in"
    small = write_studies(sources / "small", StudySpec(series_per_study=1, instances_per_series=4))
    large = big_instance(sources / "large.dcm", big)
    archive = small_fs / "archive"
    assert cli("init", "-p", archive).returncode == 0
    before = tree_hashes(sources)

    first = cli("import", sources, "-a", archive, "--recursive")
    assert first.returncode == 1
    assert "large.dcm: disk full (source kept; try again)" in first.stderr
    assert first.stdout.startswith("4 imported")
    assert tree_hashes(sources) == before
    assert list((archive / "tmp").iterdir()) == []
    check_clean(archive)

    grow(small_fs, "200m")
    second = cli("import", sources, "-a", archive, "--recursive", "--skip-duplicates")
    assert second.returncode == 0, second.stderr
    assert_exactly_once(archive, [*small, large])
    check_clean(archive)


def test_disk_full_during_the_index_commit_fails_cleanly_and_resumes(tmp_path: Path) -> None:
    """SQLITE_FULL at the commit: each file of the batch fails with a clear reason, no
    row, no archived file, no temporary is left, sources are kept; with room again the
    same import succeeds.

    ``max_page_count`` caps the index at its current size, so SQLite itself fails
    with SQLITE_FULL ("database or disk is full"), exactly as on a full disk.
    """
    # One full batch: more rows than the index's free pages can hold.
    sources = write_studies(tmp_path / "in", StudySpec(series_per_study=2, instances_per_series=32))
    before = tree_hashes(tmp_path / "in")
    init_archive(tmp_path / "archive").close()
    archive = open_archive(tmp_path / "archive")
    pages = archive.index.connection.execute("PRAGMA page_count").fetchone()[0]
    archive.index.connection.execute(f"PRAGMA max_page_count = {pages}")
    try:
        outcomes = list(import_paths(archive, sources))
    finally:
        archive.close()
    assert [o.outcome for o in outcomes] == [Outcome.FAILED] * len(sources)
    assert all("full" in o.reason for o in outcomes), outcomes[0].reason
    assert index_rows(tmp_path / "archive") == {}
    assert not [p for p in (tmp_path / "archive" / "data").rglob("*") if p.is_file()]
    assert list((tmp_path / "archive" / "tmp").iterdir()) == []
    assert tree_hashes(tmp_path / "in") == before
    assert cli("import", tmp_path / "in", "-a", tmp_path / "archive", "--recursive").returncode == 0
    assert_exactly_once(tmp_path / "archive", sources)
    check_clean(tmp_path / "archive")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder of its own, outside pytest's tree, whose modes the test controls."""
    folder = Path(tempfile.mkdtemp(prefix="dicom-archive-perm-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_permission_denied_on_the_archive_keeps_sources_and_resumes(shared_tmp: Path) -> None:
    """data/ not writable: every file fails with "permission denied", nothing is left
    behind; once the permission is fixed the same import succeeds."""
    sources = write_studies(
        shared_tmp / "in", StudySpec(series_per_study=1, instances_per_series=3)
    )
    archive = shared_tmp / "archive"
    assert cli("init", "-p", archive).returncode == 0
    before = tree_hashes(shared_tmp / "in")
    (archive / "data").chmod(0o555)

    denied = cli("import", shared_tmp / "in", "-a", archive, "--recursive", wrapper=unprivileged())
    assert denied.returncode == 1
    assert denied.stderr.count("permission denied (source kept; try again)") == 3, denied.stderr
    assert tree_hashes(shared_tmp / "in") == before
    assert index_rows(archive) == {}
    assert list((archive / "tmp").iterdir()) == []

    (archive / "data").chmod(0o755)
    allowed = cli("import", shared_tmp / "in", "-a", archive, "--recursive", wrapper=unprivileged())
    assert allowed.returncode == 0, allowed.stderr
    assert_exactly_once(archive, sources)
    check_clean(archive)


def test_incoming_on_another_filesystem_is_copied_never_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sources on /dev/shm, archive on disk: archived byte-identical, sources untouched,
    and no rename or move is ever attempted across the two."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem (/dev/shm) here")
    incoming = Path(tempfile.mkdtemp(dir=shm, prefix="dicom-archive-"))
    try:
        sources = write_studies(incoming, StudySpec(series_per_study=2, instances_per_series=4))
        before = tree_hashes(incoming)
        assert cli("init", "-p", tmp_path / "a").returncode == 0
        result = cli("import", incoming, "-a", tmp_path / "a", "--recursive")
        assert result.returncode == 0, result.stderr
        assert tree_hashes(incoming) == before
        assert_exactly_once(tmp_path / "a", sources)

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"a move was attempted: {args}")

        monkeypatch.setattr(os, "rename", refuse)
        monkeypatch.setattr(shutil, "move", refuse)
        with init_archive(tmp_path / "b") as archive:
            outcomes = list(import_paths(archive, sources))
        assert {o.outcome for o in outcomes} == {Outcome.IMPORTED}
        assert tree_hashes(incoming) == before
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


def _hold_write_lock(archive: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(archive / "archive.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_index_locked_past_the_timeout_fails_cleanly_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the write lock longer than the busy timeout: each file
    fails with a clear "locked" reason, nothing is archived half-way, and the same
    import succeeds once the lock is gone."""
    monkeypatch.setattr(index_module, "BUSY_TIMEOUT_MS", 300)
    sources = write_studies(tmp_path / "in", StudySpec(series_per_study=1, instances_per_series=4))
    init_archive(tmp_path / "archive").close()
    holder = _hold_write_lock(tmp_path / "archive")
    try:
        with open_archive(tmp_path / "archive") as archive:
            outcomes = list(import_paths(archive, sources))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [o.outcome for o in outcomes] == [Outcome.FAILED] * 4
    assert all("locked" in o.reason for o in outcomes), outcomes[0].reason
    assert not [p for p in (tmp_path / "archive" / "data").rglob("*") if p.is_file()]
    with open_archive(tmp_path / "archive") as archive:
        assert {o.outcome for o in import_paths(archive, sources)} == {Outcome.IMPORTED}
    assert_exactly_once(tmp_path / "archive", sources)


def test_cli_import_waits_for_a_lock_held_briefly(tmp_path: Path) -> None:
    """A lock released within the busy timeout costs only the wait."""
    sources = write_studies(tmp_path / "in", StudySpec(series_per_study=1, instances_per_series=4))
    cli("init", "-p", tmp_path / "archive")
    holder = _hold_write_lock(tmp_path / "archive")
    started = time.monotonic()
    process = subprocess.Popen(
        [*CLI, "import", str(tmp_path / "in"), "-a", str(tmp_path / "archive"), "--recursive"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)
    holder.execute("ROLLBACK")
    holder.close()
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert time.monotonic() - started >= 2
    assert out.startswith("4 imported")
    assert_exactly_once(tmp_path / "archive", sources)
