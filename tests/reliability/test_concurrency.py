"""Concurrency at archive level: long readers never block imports, the WAL stays
bounded, and two imports into one archive archive each file exactly once."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from tests.factory import StudySpec, write_studies
from tests.reliability.helpers import CLI, REPO, assert_exactly_once, cli


def _wal_size(archive: Path) -> int:
    wal = archive / "archive.db-wal"
    return wal.stat().st_size if wal.exists() else 0


def test_a_long_reader_never_blocks_imports_and_the_wal_shrinks_when_it_ends(
    tmp_path: Path,
) -> None:
    """A reader holds a read transaction across each of six imports: no "database is
    locked", every import succeeds and the reader's snapshot never moves. While a
    reader pins a snapshot, SQLite cannot reset the WAL (it grows by what is written
    meanwhile); once the reader ends, the next import leaves at most its own pages."""
    archive = tmp_path / "archive"
    cli("init", "-p", archive)
    reader = sqlite3.connect(archive / "archive.db", isolation_level=None)
    sizes = []
    sources = []
    try:
        for round_ in range(6):
            folder = tmp_path / f"in{round_}"
            sources += write_studies(folder, StudySpec(patients=2, instances_per_series=40))
            reader.execute("BEGIN")
            seen = reader.execute("SELECT count(*) FROM instances").fetchone()[0]
            result = cli("import", folder, "-a", archive, "--recursive")
            assert reader.execute("SELECT count(*) FROM instances").fetchone()[0] == seen
            reader.execute("COMMIT")
            assert result.returncode == 0, result.stderr
            assert "locked" not in result.stderr
            sizes.append(_wal_size(archive))
    finally:
        reader.close()
    one_import = sizes[0]
    last = tmp_path / "last"
    sources += write_studies(last, StudySpec(patients=2, instances_per_series=40))
    assert cli("import", last, "-a", archive, "--recursive").returncode == 0
    after = _wal_size(archive)
    print("wal sizes while read:", sizes, "after the reader ended:", after)
    assert after <= one_import, (sizes, after)
    assert_exactly_once(archive, sources)


def test_two_cli_imports_at_once_archive_each_file_exactly_once(tmp_path: Path) -> None:
    """Two imports of overlapping folders into one archive, run at the same time:
    each file is archived once, the second sees duplicates, never conflicts or locks."""
    shared = write_studies(tmp_path / "shared", StudySpec(patients=3, instances_per_series=20))
    own_a = write_studies(tmp_path / "a", StudySpec(patients=1, instances_per_series=20))
    own_b = write_studies(tmp_path / "b", StudySpec(patients=1, instances_per_series=20))
    archive = tmp_path / "archive"
    cli("init", "-p", archive)
    processes = [
        subprocess.Popen(
            [
                *CLI,
                "import",
                str(tmp_path / "shared"),
                str(tmp_path / own),
                "-a",
                str(archive),
                "--recursive",
                "--skip-duplicates",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for own in ("a", "b")
    ]
    results = [p.communicate(timeout=120) for p in processes]
    for process, (out, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err
        assert "locked" not in err and "conflict" not in err
    imported = sum(int(out.split(" imported")[0]) for out, _ in results)
    assert imported == len(shared) + len(own_a) + len(own_b)
    assert_exactly_once(archive, shared + own_a + own_b)
    assert cli("check", "-a", archive, "--verify-files").returncode == 0
