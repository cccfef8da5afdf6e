"""/metrics: parsed with prometheus_client's own parser, checked against the index
after real imports by a real daemon (watch folder and DICOM listener) and a real
``dicom-archive check``, scraped from a separate web server process."""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicom_archive.archive import latency
from dicom_archive.archive.store import Archive
from tests.factory import StudySpec, make_instance, write_dataset, write_studies
from tests.integration.daemon_harness import DaemonProcess, wait_until
from tests.web.ui_server import serve

ALLOWED_LABELS = {"outcome", "le", "scope", "kind"}


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    port = _free_port()
    process = DaemonProcess(tmp_path, dicom={"port": port, "peers": {"STORESCU": "127.0.0.1:0"}})
    process.dicom_port = port  # type: ignore[attr-defined]
    yield process
    process.close()


@pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed")
def test_metrics_match_the_archive_after_real_imports(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    daemon.start()
    # The watch folder: 6 new files, an identical copy, a non-DICOM file, a conflict.
    drops = tmp_path / "drops"
    files = write_studies(drops / "study", StudySpec(series_per_study=2, instances_per_series=3))
    shutil.copy(files[0], drops / "copy-of-first.dcm")
    (drops / "notes.txt").write_text("not DICOM\n")
    ds = make_instance()
    original = write_dataset(ds, drops / "conflict-a.dcm")
    ds.StudyDescription = "CHANGED"
    changed = write_dataset(ds, tmp_path / "conflict-b.dcm")
    for path in [*files, original, drops / "notes.txt"]:
        shutil.copy(path, daemon.incoming / path.name.replace(".dcm", f"-{path.parent.name}.dcm"))
    daemon.wait_until_count(7)
    wait_until(lambda: not daemon.incoming_files(), 30, "incoming emptied")
    # Then the duplicate and the conflict, once their originals are archived.
    shutil.copy(drops / "copy-of-first.dcm", daemon.incoming / "dup.dcm")
    shutil.copy(changed, daemon.incoming / "conflict-b.dcm")
    wait_until(lambda: not daemon.incoming_files(), 30, "incoming emptied again")

    # The DICOM listener: DCMTK's storescu sends 4 instances of another study.
    sent = write_studies(tmp_path / "sent", StudySpec(series_per_study=1, instances_per_series=4))
    subprocess.run(
        ["storescu", "-aet", "STORESCU", "-aec", "DICOM_ARCHIVE", "127.0.0.1",
         str(daemon.dicom_port), *map(str, sent)],  # type: ignore[attr-defined]
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    daemon.wait_until_count(11)

    with serve(daemon.archive) as base:

        def settled() -> dict | None:
            samples = scrape(base)
            # the daemon records counts per batch and the listener at its heartbeat (5 s)
            done = value(samples, "dicom_archive_daemon_files_total", outcome="conflict") == 1
            received = value(samples, "dicom_archive_dicom_received_instances_total") == 4
            idle = value(samples, "dicom_archive_daemon_queue_depth") == 0
            return samples if done and received and idle else None

        samples = wait_until(settled, 30, "counts and listener state recorded")
        with daemon.db() as db:
            instances, stored = db.execute(
                "SELECT COUNT(*), SUM(file_size) FROM instances"
            ).fetchone()
            studies = db.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
        assert instances == 11
        expected = {"imported": 7, "duplicate": 1, "conflict": 1, "rejected": 1, "failed": 0}
        for outcome, count in expected.items():
            assert value(samples, "dicom_archive_daemon_files_total", outcome=outcome) == count
        assert value(samples, "dicom_archive_index_instances") == instances
        assert value(samples, "dicom_archive_index_studies") == studies == 3
        assert value(samples, "dicom_archive_index_stored_bytes") == stored
        assert (
            value(samples, "dicom_archive_index_file_bytes")
            >= (daemon.archive / "archive.db").stat().st_size
        )
        assert value(samples, "dicom_archive_daemon_up") == 1
        assert value(samples, "dicom_archive_daemon_queue_depth") == 0
        assert value(samples, "dicom_archive_dicom_associations_total") >= 1
        # every file the watch folder settled has one latency observation
        assert value(samples, "dicom_archive_import_duration_seconds_count") == 10
        assert value(samples, "dicom_archive_import_duration_seconds_bucket", le="+Inf") == 10
        assert 0 < value(samples, "dicom_archive_import_duration_seconds_sum") < 60
        heartbeat = value(samples, "dicom_archive_daemon_heartbeat_time_seconds")
        assert abs(heartbeat - time.time()) < 120

        assert daemon.stop() == 0
        # A check after a file went missing: its time and findings
        with daemon.db() as db:
            victim = db.execute("SELECT file_path FROM instances LIMIT 1").fetchone()[0]
        (daemon.archive / victim).unlink()
        before = time.time()
        check = subprocess.run(
            [sys.executable, "-m", "dicom_archive", "check", "-a", str(daemon.archive)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert check.returncode == 1, check.stdout + check.stderr
        after = scrape(base)
        assert value(after, "dicom_archive_daemon_up") == 0
        assert value(after, "dicom_archive_daemon_queue_depth") == 0
        for outcome, count in expected.items():  # the totals outlive the run
            assert value(after, "dicom_archive_daemon_files_total", outcome=outcome) == count
        assert value(after, "dicom_archive_integrity_check_findings", scope="any") == 1
        assert value(after, "dicom_archive_integrity_check_findings_by_kind", kind="missing") == 1
        assert value(after, "dicom_archive_integrity_check_instances", scope="any") == 11
        finished = value(after, "dicom_archive_integrity_check_time_seconds", scope="any")
        assert before - 2 <= finished <= time.time() + 1
        assert ("dicom_archive_integrity_check_time_seconds", (("scope", "verify"),)) not in after


def test_latency_histogram_survives_a_rolled_back_record(archive: Archive) -> None:
    """Observations taken for a transaction that rolls back are given back, so the
    stored histogram neither loses nor double-counts them."""
    recorder = latency.LatencyRecorder()
    for seconds in (0.0004, 0.003, 0.003, 0.2, 99.0):
        recorder.observe(seconds)
    taken = recorder.take()
    with pytest.raises(sqlite3.OperationalError):
        with archive.index.write() as db:
            latency.store(db, taken)
            db.execute("SELECT * FROM no_such_table")
    recorder.restore(taken)
    recorder.observe(0.003)
    with archive.index.write() as db:
        latency.store(db, recorder.take())
    stored = latency.read(archive.index.connection)
    assert stored.count == 6
    assert round(stored.total_seconds, 4) == round(0.0004 + 0.003 * 3 + 0.2 + 99.0, 4)
    cumulative = dict(stored.cumulative())
    assert cumulative[0.001] == 1 and cumulative[0.005] == 4 and cumulative[0.25] == 5
    assert cumulative[30.0] == 5 and cumulative[float("inf")] == 6
    assert recorder.take().count == 0


def test_an_empty_archive_scrapes_with_zeros(archive: Archive) -> None:
    with serve(archive.root) as base:
        samples = scrape(base)
    assert value(samples, "dicom_archive_index_instances") == 0
    assert value(samples, "dicom_archive_daemon_up") == 0
    assert value(samples, "dicom_archive_import_duration_seconds_count") == 0
    assert value(samples, "dicom_archive_daemon_files_total", outcome="imported") == 0


def test_the_daemons_own_web_server_and_a_separate_one_agree(tmp_path: Path) -> None:
    """/metrics served inside the daemon ([web] table) and by another process on the
    same archive give the same figures: both read them from the index."""
    port = _free_port()
    daemon = DaemonProcess(tmp_path, web={"port": port})
    try:
        daemon.start()
        for path in write_studies(tmp_path / "drops", StudySpec(series_per_study=1)):
            shutil.copy(path, daemon.incoming / path.name)
        (daemon.incoming / "junk.dcm").write_bytes(b"junk")
        inside = f"http://127.0.0.1:{port}"

        def recorded() -> dict | None:
            samples = scrape(inside)
            done = value(samples, "dicom_archive_daemon_files_total", outcome="rejected") == 1
            idle = value(samples, "dicom_archive_daemon_queue_depth") == 0  # heartbeat: 5 s
            ready = done and idle and value(samples, "dicom_archive_index_instances") == 3
            return samples if ready else None

        wait_until(recorded, 30, "the daemon's counts")
        with serve(daemon.archive) as outside:
            ours, theirs = scrape(inside), scrape(outside)
        interesting = [
            key
            for key in ours
            if not key[0].startswith(
                ("dicom_archive_index_file_bytes", "dicom_archive_daemon_heartbeat")
            )
        ]
        assert {k: ours[k] for k in interesting} == {k: theirs[k] for k in interesting}
        assert value(theirs, "dicom_archive_daemon_files_total", outcome="imported") == 3
        assert value(theirs, "dicom_archive_import_duration_seconds_count") == 4
        assert value(theirs, "dicom_archive_daemon_up") == 1
        assert daemon.stop() == 0
    finally:
        daemon.close()
