"""Lost events: an inotify queue overflow and a dead watcher thread still leave every
file imported exactly once (the folder is the truth: rescan, restart)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_archive.daemon.watcher import OVERFLOW_RESCAN_GAP
from tests.integration.daemon_harness import DaemonProcess
from tests.reliability.daemon_helpers import (
    Feeder,
    assert_archived_exactly_once,
    drop_all,
    events,
    make_corpus,
    wait_all_archived,
)

MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(tmp_path)
    yield process
    process.close()


def start_with_small_inotify_queue(daemon: DaemonProcess, size: int) -> None:
    """The kernel reads max_queued_events when an inotify instance is created: lower it
    only while the daemon starts its observer, and restore it at once."""
    try:
        original = MAX_QUEUED.read_text().strip()
        MAX_QUEUED.write_text(str(size))
    except OSError as exc:
        pytest.skip(f"cannot lower {MAX_QUEUED} here ({exc.strerror})")
    try:
        daemon.start()
    finally:
        MAX_QUEUED.write_text(original)


def test_inotify_overflow_is_detected_and_the_rescan_imports_everything(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A burst of 3,000 files into a 32-event inotify queue, with the periodic rescan
    off: the overflow is seen, a full scan runs, every file is archived once."""
    staging = tmp_path / "staging"
    hashes = make_corpus(staging, 3000)
    daemon.write_config(rescan_interval=0)
    start_with_small_inotify_queue(daemon, 32)
    started = time.monotonic()
    drop_all(staging, daemon.incoming, list(hashes))
    wait_all_archived(daemon, len(hashes), timeout=90)
    elapsed = time.monotonic() - started
    assert daemon.stop() == 0
    overflow = [e for e in events(daemon, "watchdog") if "overflow" in e.get("message", "")]
    assert overflow, "no overflow was reported: the burst did not exceed the queue"
    scans = len(events(daemon, "scanned incoming"))
    assert scans >= 2, "no rescan after the overflow"
    # Rescans are spaced, not back to back for every overflow (the queue keeps
    # overflowing while sources are removed): they must not starve the worker.
    assert scans <= 3 + elapsed / OVERFLOW_RESCAN_GAP, (scans, elapsed)
    print(
        f"overflow: {len(hashes)} files in {elapsed:.1f} s, {len(overflow)} overflow "
        f"warnings logged, {scans} full scans"
    )
    assert len(events(daemon, "imported")) == len(hashes)
    assert not events(daemon, "duplicate")
    assert_archived_exactly_once(daemon.archive, set(hashes.values()))


def test_a_dead_watcher_thread_exits_and_the_restart_imports_everything(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """Files keep arriving while the observer thread dies (the daemon sees it and exits
    non-zero), while it is down, and after it is restarted: all archived, none twice."""
    staging = tmp_path / "staging"
    hashes = make_corpus(staging, 1500)
    feeder = Feeder(staging, daemon.incoming, hashes, rate=500)
    try:
        daemon.start(env={"DICOM_ARCHIVE_DAEMON_FAULT": "watcher-dies"})
        feeder.start()
        assert daemon.proc is not None
        while len(feeder.snapshot()) < 300:
            feeder.join(0.05)
        (daemon.incoming / "KILL-WATCHER").write_bytes(b"x")
        assert daemon.proc.wait(15) == 1
        daemon.proc = None
        assert any("unhealthy" in str(e.get("event")) for e in daemon.log_events())
        arrived_while_down = len(feeder.snapshot())
        daemon.start()  # as systemd's Restart=on-failure would
        feeder.finish()
        wait_all_archived(daemon, len(hashes), timeout=90)
        assert daemon.stop() == 0
    finally:
        feeder.abort()
    assert 300 <= arrived_while_down < len(hashes)
    assert len(events(daemon, "imported")) == len(hashes)
    assert [p.name for p in daemon.rejected_files()] == ["KILL-WATCHER"]
    assert_archived_exactly_once(daemon.archive, set(hashes.values()))
