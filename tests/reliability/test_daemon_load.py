"""The daemon under load: long readers, a CLI import into the same archive, and
100,000 files at once (memory). Long forms are ``@pytest.mark.slow`` (``make soak``).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.daemon_harness import DaemonProcess
from tests.reliability.daemon_helpers import (
    Feeder,
    FileSizeSampler,
    assert_archived_exactly_once,
    drop_all,
    events,
    make_corpus,
    peak_rss_kb,
    wait_all_archived,
)
from tests.reliability.helpers import CLI, REPO

#: Readers back to back starve SQLite's passive checkpoints; the worker truncates the
#: WAL past 8 MB (WAL_LIMIT_BYTES), so the peak is that plus what is written while
#: the checkpoint waits for the current reader: 16 MB leaves room for one batch more.
WAL_BOUND = 16 * 1024 * 1024


class LongReader(threading.Thread):
    """Holds read transactions of ``hold`` seconds back to back (a report, an export),
    checking that its snapshot never moves inside one."""

    def __init__(self, database: Path, hold: float) -> None:
        super().__init__(name="test-long-reader")
        self.database = database
        self.hold = hold
        self.transactions = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            connection = sqlite3.connect(self.database, isolation_level=None, timeout=30)
            try:
                while not self._halt.is_set():
                    connection.execute("BEGIN")
                    seen = connection.execute("SELECT count(*) FROM instances").fetchone()[0]
                    ends = time.monotonic() + self.hold
                    while time.monotonic() < ends and not self._halt.wait(0.2):
                        now = connection.execute("SELECT count(*) FROM instances").fetchone()[0]
                        assert now == seen, "a read transaction's snapshot moved"
                    connection.execute("COMMIT")
                    self.transactions += 1
            finally:
                connection.close()
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self._halt.set()
        self.join(30)
        if self.error is not None:
            raise self.error


def long_reader_while_importing(tmp_path: Path, files: int) -> None:
    staging = tmp_path / "staging"
    hashes = make_corpus(staging, files)
    daemon = DaemonProcess(tmp_path)
    sampler = FileSizeSampler(daemon.archive / "archive.db-wal")
    reader = LongReader(daemon.archive / "archive.db", hold=3.0)
    try:
        daemon.start()
        sampler.start()
        reader.start()
        started = time.monotonic()
        drop_all(staging, daemon.incoming, list(hashes))
        wait_all_archived(daemon, files, timeout=60 + files / 40)
        elapsed = time.monotonic() - started
        reader.finish()
        peak = sampler.stop()
        assert daemon.stop() == 0
    finally:
        reader.finish()
        sampler.stop()
        daemon.close()
    # (A heartbeat may skip a beat while the worker's checkpoint waits for a reader.)
    assert "database is locked" not in daemon.log_text()
    assert not events(daemon, "import failed, will retry")
    assert not events(daemon, "cannot record counts")
    assert reader.transactions >= 1
    print(
        f"long reader: {files} files in {elapsed:.1f} s, {reader.transactions} read "
        f"transactions of 3 s, WAL peak {peak / 1e6:.2f} MB"
    )
    assert 0 < peak <= WAL_BOUND, peak
    assert_archived_exactly_once(daemon.archive, set(hashes.values()))


def test_a_long_reader_never_blocks_the_daemon_and_the_wal_stays_bounded(
    tmp_path: Path,
) -> None:
    """2,000 files imported while a reader holds 3 s read transactions back to back:
    no "database is locked", no failed file, the reader's snapshot stable, the WAL's
    peak within WAL_BOUND."""
    long_reader_while_importing(tmp_path, 2000)


@pytest.mark.slow
def test_soak_a_long_reader_during_ten_thousand_files(tmp_path: Path) -> None:
    long_reader_while_importing(tmp_path, 10_000)


def test_cli_import_into_the_archive_the_daemon_fills(tmp_path: Path) -> None:
    """The daemon imports a stream of 1,000 files while ``dicom-archive import`` adds
    1,000 others and 300 that also arrive in incoming: both succeed, each file is
    archived once (the overlap counted once, as a duplicate by whoever came second)."""
    staging = tmp_path / "staging"
    stream = make_corpus(staging, 1000, prefix="d")
    by_cli = tmp_path / "by-cli"
    own = make_corpus(by_cli, 1000, prefix="c")
    shared = make_corpus(tmp_path / "shared", 300, prefix="s")
    for name in shared:
        shutil.copy(tmp_path / "shared" / name, by_cli / name)
        shutil.copy(tmp_path / "shared" / name, staging / name)
    daemon = DaemonProcess(tmp_path)
    feeder = Feeder(staging, daemon.incoming, {**shared, **stream}, rate=400)
    try:
        daemon.start()
        feeder.start()
        result = subprocess.run(
            [*CLI, "import", str(by_cli), "-a", str(daemon.archive), "--skip-duplicates"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        feeder.finish()
        assert result.returncode == 0, result.stderr
        assert "locked" not in result.stderr and " 0 conflicts" in result.stdout
        wait_all_archived(daemon, 2300, timeout=120)
        assert daemon.stop() == 0
    finally:
        feeder.abort()
        daemon.close()
    assert "database is locked" not in daemon.log_text()
    imported_by_cli = int(result.stdout.split(" imported")[0])
    imported_by_daemon = len(events(daemon, "imported"))
    assert imported_by_cli + imported_by_daemon == 2300
    assert len(events(daemon, "duplicate")) == 1300 - imported_by_daemon
    print(f"cli import during the daemon: cli {imported_by_cli}, daemon {imported_by_daemon}")
    assert_archived_exactly_once(
        daemon.archive, {*stream.values(), *own.values(), *shared.values()}
    )


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_soak_a_hundred_thousand_files_at_once_in_bounded_memory(tmp_path: Path) -> None:
    """100,000 small files land in incoming at once: all archived once, and the daemon's
    peak RSS (VmHWM) stays at or under 150 MB (SOAK_QUEUED_FILES to change the count)."""
    files = int(os.environ.get("SOAK_QUEUED_FILES", "100000"))
    staging = tmp_path / "staging"
    hashes = make_corpus(staging, files)
    daemon = DaemonProcess(tmp_path, log_level="info")
    try:
        daemon.start()
        assert daemon.proc is not None
        started = time.monotonic()
        drop_all(staging, daemon.incoming, list(hashes), folders=40)
        wait_all_archived(daemon, files, timeout=3000)
        elapsed = time.monotonic() - started
        peak_kb = peak_rss_kb(daemon.proc.pid)
        assert daemon.stop() == 0
    finally:
        daemon.close()
    print(
        f"{files} files at once: {elapsed:.0f} s ({files / elapsed:.0f} files/s), "
        f"daemon peak RSS {peak_kb / 1024:.1f} MB"
    )
    assert peak_kb <= 150 * 1024, f"peak RSS {peak_kb / 1024:.1f} MB"
    assert_archived_exactly_once(daemon.archive, set(hashes.values()))
