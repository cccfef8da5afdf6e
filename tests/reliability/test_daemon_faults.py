"""The daemon running into a full disk, a permission it lacks, incoming on another
filesystem and a locked index: a clear error in its log, the source kept in
incoming, and the work resumes by itself once the cause is gone, with no restart."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicom_archive.archive.store import init_archive
from tests.factory import write_instance
from tests.integration.daemon_harness import DaemonProcess, wait_until
from tests.reliability.daemon_helpers import (
    assert_archived_exactly_once,
    drop_all,
    events,
    incoming_now,
    kill_daemon,
    make_corpus,
    start_wrapped,
    wait_all_archived,
)
from tests.reliability.helpers import KILLED, sha256_of, unprivileged


def mount_tmpfs(mount_point: Path, size: str) -> None:
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip()}")


def resize(mount_point: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True)


@pytest.fixture
def small_archive(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon whose archive is a real 2 MB tmpfs, so ENOSPC comes from the kernel."""
    mount_tmpfs(tmp_path / "archive", "2m")
    init_archive(tmp_path / "archive").close()
    daemon = DaemonProcess(tmp_path)
    try:
        yield daemon
    finally:
        daemon.close()
        subprocess.run(["umount", "-l", str(tmp_path / "archive")], check=False)


def failures(daemon: DaemonProcess, text: str) -> list[dict[str, Any]]:
    return [e for e in events(daemon, "import failed, will retry") if text in e.get("reason", "")]


def test_disk_full_during_the_copy_keeps_the_source_and_resumes_by_itself(
    small_archive: DaemonProcess, tmp_path: Path
) -> None:
    """ENOSPC while copying a 3 MB file into a 2 MB archive: "disk full" logged, the
    file stays in incoming untouched, no temporary is left, the small files go
    through; once the filesystem grows the daemon archives it without a restart."""
    daemon = small_archive
    staging = tmp_path / "staging"
    hashes = make_corpus(staging, 4)
    rows = 1500
    big = write_instance(
        staging / "large.dcm", rows=rows, columns=1024, PixelData=bytes(rows * 1024 * 2)
    )
    big_sha = sha256_of(big)
    daemon.start()
    drop_all(staging, daemon.incoming, [*hashes, "large.dcm"], folders=1)
    large = daemon.incoming / "sender0" / "large.dcm"
    wait_until(lambda: failures(daemon, "disk full"), 30, "disk full logged")
    wait_until(lambda: daemon.instance_count() == 4, 30, "the small files archived")
    assert failures(daemon, "disk full")[0]["path"] == str(large)
    assert sha256_of(large) == big_sha
    assert list((daemon.archive / "tmp").iterdir()) == []
    assert daemon.proc is not None and daemon.proc.poll() is None

    resize(daemon.archive, "64m")
    wait_all_archived(daemon, 5, timeout=30)
    assert daemon.stop() == 0
    assert_archived_exactly_once(daemon.archive, {*hashes.values(), big_sha})


def fill(mount_point: Path, leave_pages: int) -> Path:
    """Fill the filesystem, then free exactly ``leave_pages`` pages."""
    filler = mount_point / "filler"
    with open(filler, "wb") as out:
        chunk = b"\0" * 65536
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError:
            pass
    page = os.statvfs(mount_point).f_bsize
    os.truncate(filler, max(0, filler.stat().st_size - leave_pages * page))
    return filler


def test_disk_full_during_the_index_commit_keeps_the_sources_and_resumes(
    small_archive: DaemonProcess, tmp_path: Path
) -> None:
    """Room for a batch's copies but not for the index's write-ahead log: the commit
    fails with SQLITE_FULL, the batch's files are unlinked again, the sources stay,
    the daemon stays up (its own bookkeeping writes fail too); with room again the
    batch goes through."""
    daemon = small_archive
    staging = tmp_path / "staging"
    hashes = make_corpus(staging, 64)
    daemon.start()
    filler = fill(daemon.archive, leave_pages=64)
    drop_all(staging, daemon.incoming, list(hashes), folders=1)
    wait_until(lambda: failures(daemon, "full"), 30, "a full index logged")
    assert any("index" in e["reason"] for e in failures(daemon, "full")), failures(daemon, "")
    time.sleep(1.5)  # let heartbeats, counts and retries run into the full disk too
    committed = daemon.instance_count()  # a first small batch may fit the WAL's old pages
    assert committed < 64
    assert len(incoming_now(daemon.incoming)) == 64 - committed
    assert list((daemon.archive / "tmp").iterdir()) == []
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log_text()[-3000:]
    warnings = {e["event"] for e in daemon.log_events() if e.get("level") == "warning"}
    print("while the index was full:", committed, "committed; warnings:", sorted(warnings))

    filler.unlink()
    wait_all_archived(daemon, 64, timeout=30)
    assert daemon.stop() == 0
    assert_archived_exactly_once(daemon.archive, set(hashes.values()))


def test_permission_denied_on_the_archive_keeps_sources_and_resumes(tmp_path: Path) -> None:
    """data/ not writable by the daemon: "permission denied" logged for each file, the
    sources stay; once the permission is fixed the daemon archives them by itself."""
    staging = tmp_path / "staging"
    hashes = make_corpus(staging, 10)
    daemon = DaemonProcess(tmp_path)
    try:
        (daemon.archive / "data").chmod(0o555)
        start_wrapped(daemon, unprivileged())
        drop_all(staging, daemon.incoming, list(hashes), folders=2)
        wait_until(
            lambda: len({e["path"] for e in failures(daemon, "permission denied")}) == 10,
            30,
            "permission denied logged for every file",
        )
        assert daemon.instance_count() == 0
        assert len(incoming_now(daemon.incoming)) == 10
        assert list((daemon.archive / "tmp").iterdir()) == []
        (daemon.archive / "data").chmod(0o755)
        wait_all_archived(daemon, 10, timeout=30)
        assert daemon.stop() == 0
    finally:
        (daemon.archive / "data").chmod(0o755)
        daemon.close()
    assert_archived_exactly_once(daemon.archive, set(hashes.values()))


@pytest.fixture
def shm_incoming(tmp_path: Path) -> Iterator[Path]:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem (/dev/shm) here")
    folder = Path(tempfile.mkdtemp(dir=shm, prefix="dicom-archive-incoming-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_incoming_on_another_filesystem_with_kills(tmp_path: Path, shm_incoming: Path) -> None:
    """Incoming on /dev/shm, archive and processed on disk (after_import = move): every
    file is archived and kept in processed byte-identical, even with SIGKILLs during
    the cross-device copy-then-delete; no source vanishes without both copies."""
    staging = shm_incoming / "staging"
    incoming = shm_incoming / "incoming"
    incoming.mkdir()
    hashes = make_corpus(staging, 600)
    daemon = DaemonProcess(tmp_path)
    processed = tmp_path / "processed"
    daemon.incoming = incoming
    daemon.write_config(after_import="move", processed=str(processed))
    assert incoming.stat().st_dev != daemon.archive.stat().st_dev
    names = list(hashes)
    try:
        drop_all(staging, incoming, names)
        for delay in (0.3, 0.6, 0.9):
            daemon.start()
            time.sleep(delay)
            assert kill_daemon(daemon) == KILLED
            for n, name in enumerate(names):
                source = incoming / f"sender{n % 8}" / name
                if not source.exists():
                    kept = processed / f"sender{n % 8}" / name
                    assert kept.is_file() and sha256_of(kept) == hashes[name], name
        daemon.start()
        wait_all_archived(daemon, len(names), timeout=60)
        assert daemon.stop() == 0
    finally:
        daemon.close()
    assert_archived_exactly_once(daemon.archive, set(hashes.values()))
    kept = {
        p.name: sha256_of(p)
        for p in processed.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }
    for name, sha in hashes.items():
        assert kept.get(name) == sha, name


def test_index_locked_by_another_writer_delays_imports_then_they_resume(
    tmp_path: Path,
) -> None:
    """Another process holds the index's write lock for 4 s while files arrive: no
    file fails or leaves incoming meanwhile, the daemon stays healthy (WATCHDOG=1
    keeps coming), and everything is archived once the lock goes."""
    staging = tmp_path / "staging"
    hashes = make_corpus(staging, 200)
    daemon = DaemonProcess(tmp_path)
    try:
        daemon.start()
        holder = sqlite3.connect(daemon.archive / "archive.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        locked_at = time.monotonic()
        daemon.receive()
        daemon.messages.clear()
        try:
            drop_all(staging, daemon.incoming, list(hashes))
            time.sleep(4)
            assert daemon.instance_count() == 0
            assert len(incoming_now(daemon.incoming)) == 200
            pings = sum("WATCHDOG=1" in m for m in daemon.receive())
            held = time.monotonic() - locked_at
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert pings >= held - 1.5, f"{pings} watchdog pings in {held:.1f} s of lock"
        wait_all_archived(daemon, 200, timeout=60)
        assert daemon.stop() == 0
        assert not failures(daemon, "")
    finally:
        daemon.close()
    assert_archived_exactly_once(daemon.archive, set(hashes.values()))


@pytest.mark.slow
def test_index_locked_past_the_busy_timeout_fails_cleanly_and_resumes(tmp_path: Path) -> None:
    """The lock is held 40 s, past the 30 s busy timeout: "locked" is logged, the
    sources stay, the daemon stays up, and the files are archived after the lock."""
    staging = tmp_path / "staging"
    hashes = make_corpus(staging, 100)
    daemon = DaemonProcess(tmp_path)
    release = threading.Event()
    try:
        daemon.start()
        holder = sqlite3.connect(daemon.archive / "archive.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            drop_all(staging, daemon.incoming, list(hashes))
            wait_until(lambda: failures(daemon, "locked"), 60, "locked logged")
            assert daemon.instance_count() == 0
            assert len(incoming_now(daemon.incoming)) == 100
            assert daemon.proc is not None and daemon.proc.poll() is None
        finally:
            release.set()
            holder.execute("ROLLBACK")
            holder.close()
        wait_all_archived(daemon, 100, timeout=90)
        assert daemon.stop(signal.SIGTERM) == 0
    finally:
        daemon.close()
    assert_archived_exactly_once(daemon.archive, set(hashes.values()))
