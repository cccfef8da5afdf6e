"""The daemon as users run it: a subprocess watching real folders."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factory import StudySpec, make_instance, write_dataset, write_instance, write_studies
from tests.integration.daemon_harness import DaemonProcess, wait_until


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(tmp_path)
    yield process
    process.close()


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_archive", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_every_way_of_arriving_is_archived_exactly_once(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """One by one, a copied study tree, mv, a hard link, write-then-rename, odd names."""
    outside = tmp_path / "outside"
    outside.mkdir()
    daemon.start()
    expected = 0
    for i in range(3):
        write_instance(daemon.incoming / f"single{i}.dcm")
        expected += 1
        time.sleep(0.05)
    tree = write_studies(outside / "study", StudySpec(series_per_study=2, instances_per_series=4))
    shutil.copytree(outside / "study", daemon.incoming / "study")
    expected += len(tree)
    write_instance(outside / "moved.dcm")
    subprocess.run(
        ["mv", str(outside / "moved.dcm"), str(daemon.incoming / "moved.dcm")], check=True
    )
    write_instance(outside / "linked.dcm")
    os.link(outside / "linked.dcm", daemon.incoming / "linked.dcm")
    write_instance(daemon.incoming / "renamed.dcm.part")
    os.rename(daemon.incoming / "renamed.dcm.part", daemon.incoming / "renamed.dcm")
    for name in ("with space.dcm", "new\nline.dcm", "Müller-Jörg-ü.dcm"):
        write_instance(daemon.incoming / name)
    expected += 6
    daemon.wait_archived(expected)
    assert (outside / "linked.dcm").exists()  # a hard link's other name is not ours
    assert len(set(daemon.sop_uids())) == expected
    wait_until(lambda: not daemon.incoming_entries(), 10, "emptied study folders removed")
    assert not daemon.rejected_files()
    assert daemon.stop() == 0
    events = [e for e in daemon.log_events() if e.get("event") == "imported"]
    assert len(events) == expected
    assert all({"path", "sop_instance_uid", "ms"} <= e.keys() for e in events)
    assert any("new?line" in e["path"] for e in events)  # control characters stripped


def test_a_burst_of_two_thousand_files(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Thousands at once: all archived once, incoming emptied."""
    staging = tmp_path / "staging"
    count = 2000
    for i in range(count):
        write_instance(staging / f"{i:05d}.dcm", rows=4, columns=4)
    daemon.start()
    started = time.monotonic()
    for path in staging.iterdir():
        os.rename(path, daemon.incoming / path.name)
    daemon.wait_archived(count, timeout=120)
    elapsed = time.monotonic() - started
    assert daemon.stop() == 0
    print(f"burst of {count}: {elapsed:.1f} s")


def test_files_dropped_while_stopped_are_imported_at_start(daemon: DaemonProcess) -> None:
    write_studies(daemon.incoming / "offline", StudySpec(instances_per_series=3))
    daemon.start()
    daemon.wait_archived(6)
    assert daemon.stop() == 0


def test_slow_writer_is_not_imported_early(daemon: DaemonProcess, tmp_path: Path) -> None:
    """A file written in place over ~3 s is taken only once it has settled."""
    daemon.write_config(settle_time="1s")
    source = write_instance(tmp_path / "big.dcm", rows=64, columns=64)
    data = source.read_bytes()
    daemon.start()
    target = daemon.incoming / "slow.dcm"
    with open(target, "wb") as out:
        for start in range(0, len(data), len(data) // 8):
            out.write(data[start : start + len(data) // 8])
            out.flush()
            time.sleep(0.35)
            assert daemon.instance_count() == 0
            assert not daemon.rejected_files()
    daemon.wait_archived(1)
    assert daemon.stop() == 0


def test_killed_writer_is_quarantined_after_max_age_never_imported(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A sender killed half-way leaves a truncated file (closed all the same): it is
    kept, retried, then moved to rejected with a reason once max_age has passed."""
    source = write_instance(tmp_path / "whole.dcm", rows=64, columns=64)
    daemon.start()
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "data = open(sys.argv[1], 'rb').read()\n"
            "out = open(sys.argv[2], 'wb')\n"
            "out.write(data[: len(data) // 2]); out.flush()\n"
            "time.sleep(60)\n",
            str(source),
            str(daemon.incoming / "cut.dcm"),
        ]
    )
    wait_until(lambda: (daemon.incoming / "cut.dcm").exists(), 10, "the writer started")
    time.sleep(0.3)
    writer.kill()
    writer.wait()
    started = time.monotonic()
    wait_until(lambda: daemon.rejected_files(), 30, "the truncated file quarantined")
    assert time.monotonic() - started >= 2.0  # max_age is 3 s from the last change
    assert daemon.instance_count() == 0
    [rejected] = daemon.rejected_files()
    assert rejected.name == "cut.dcm"
    reason = daemon.reason_of(rejected)
    assert "still incomplete" in reason and "truncated" in reason
    assert rejected.stat().st_size == source.stat().st_size // 2
    assert daemon.stop() == 0


def test_bad_files_are_set_aside_with_reasons(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Non-DICOM, conflicting duplicate, symlink: rejected with a reason; identical
    duplicate: removed and counted; a FIFO is skipped and blocks nothing."""
    daemon.write_config(max_age="1s")
    daemon.start()
    original = make_instance()
    write_dataset(original, daemon.incoming / "first.dcm")
    daemon.wait_archived(1)

    (daemon.incoming / "sub").mkdir()
    (daemon.incoming / "sub" / "notes.txt").write_text("not DICOM")
    shutil.copy(daemon.root / "archive" / daemon.archived_path_of(0), daemon.incoming / "same.dcm")
    changed = make_instance(SOPInstanceUID=original.SOPInstanceUID, PatientID="OTHER\x1b[2J")
    write_dataset(changed, daemon.incoming / "conflict.dcm")
    target = tmp_path / "target.dcm"
    write_instance(target)
    os.symlink(target, daemon.incoming / "link.dcm")
    os.mkfifo(daemon.incoming / "pipe")
    write_instance(daemon.incoming / "after-fifo.dcm")
    wait_until(
        lambda: len(daemon.rejected_files()) == 3 and daemon.instance_count() == 2,
        30,
        "three rejected, one more imported",
    )
    wait_until(
        lambda: [p.name for p in daemon.incoming_files()] == ["pipe"], 10, "incoming emptied"
    )
    rejected = {p.relative_to(daemon.rejected).as_posix(): p for p in daemon.rejected_files()}
    assert set(rejected) == {"sub/notes.txt", "conflict.dcm", "link.dcm"}
    assert "not a DICOM file" in daemon.reason_of(rejected["sub/notes.txt"])
    conflict = daemon.reason_of(rejected["conflict.dcm"])
    assert "different bytes" in conflict
    # What differs: the one-line summary, then one attribute a line.
    assert "\ndiffers: PatientID ('PAT-001' vs 'OTHER\\x1b[2J'), StudyInstanceUID (" in conflict
    assert "\ndifferences:\n  PatientID (0010,0020): 'PAT-001' vs 'OTHER\\x1b[2J'\n" in conflict
    assert "\x1b" not in conflict
    assert "symbolic link" in daemon.reason_of(rejected["link.dcm"])
    assert rejected["link.dcm"].is_symlink() and target.exists()
    result = cli("status", "--archive", daemon.archive, "--format", "json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["running"] is True
    since = status["lastRun"]["sinceStart"]
    assert since == {
        "imported": 2,
        "duplicates": 1,
        "conflicts": 1,
        "rejected": 2,
        "failed": 0,
    }, since
    assert status["errors"]
    [error] = [e for e in status["errors"] if e["kind"] == "conflict"]
    assert "; differs: PatientID ('PAT-001' vs 'OTHER\\x1b[2J')" in error["message"]
    assert daemon.stop() == 0
    text = cli("status", "--archive", daemon.archive)
    assert text.returncode == 1 and "not running" in text.stdout


def test_truncated_dicom_is_rejected_after_max_age(daemon: DaemonProcess, tmp_path: Path) -> None:
    daemon.write_config(max_age="1s")
    whole = write_instance(tmp_path / "whole.dcm", rows=32, columns=32).read_bytes()
    (daemon.incoming / "short.dcm").write_bytes(whole[: len(whole) - 100])
    daemon.start()
    wait_until(lambda: daemon.rejected_files(), 20, "truncated file rejected")
    assert "truncated" in daemon.reason_of(daemon.rejected_files()[0])
    assert daemon.instance_count() == 0
    assert daemon.stop() == 0


def test_sigkill_during_a_burst_loses_nothing_and_duplicates_nothing(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """Killed right after removing some source mid-batch; the restart finishes the job."""
    count = 300
    for i in range(count):
        write_instance(daemon.incoming / f"f{i:04d}.dcm", rows=4, columns=4)
    daemon.start(
        env={"DICOM_ARCHIVE_CRASH_AT": "source-removed", "DICOM_ARCHIVE_CRASH_AFTER": "100"}
    )
    assert daemon.proc is not None
    assert daemon.proc.wait(60) == -signal.SIGKILL
    # Killed mid-way through the sources: the importer may have committed the whole
    # burst by then (it runs ahead of the removals), but sources are still in incoming,
    # and the restart must neither lose nor archive any of them twice.
    assert daemon.instance_count() > 0
    assert 0 < len(list(daemon.incoming.glob("f*.dcm"))) < count
    daemon.start()
    daemon.wait_archived(count)
    assert len(set(daemon.sop_uids())) == count
    assert daemon.stop() == 0
    check = cli("check", "--archive", daemon.archive)
    assert check.returncode == 0, check.stdout + check.stderr


def test_sigterm_exits_cleanly_and_sighup_reloads(daemon: DaemonProcess) -> None:
    daemon.write_config(ignore=[".*", "*.part", "*.hold"])
    daemon.start()
    write_instance(daemon.incoming / "later.hold")
    write_instance(daemon.incoming / "now.dcm")
    daemon.wait_until_count(1)
    time.sleep(0.5)
    assert (daemon.incoming / "later.hold").exists()
    daemon.write_config(ignore=[".*", "*.part"])
    daemon.send(signal.SIGHUP)
    daemon.wait_archived(2)
    assert any(e.get("event") == "configuration reloaded" for e in daemon.log_events())
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert daemon.seen("STOPPING=1")


def test_notify_protocol_and_watchdog_stops_when_the_watcher_dies(
    daemon: DaemonProcess,
) -> None:
    daemon.start(env={"DICOM_ARCHIVE_DAEMON_FAULT": "watcher-dies"})
    wait_until(lambda: daemon.seen("WATCHDOG=1"), 10, "WATCHDOG=1")
    assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in daemon.receive())
    (daemon.incoming / "KILL-WATCHER").write_bytes(b"x")
    assert daemon.proc is not None
    code = daemon.proc.wait(15)
    assert code != 0
    messages = daemon.receive()
    after = messages[max(i for i, m in enumerate(messages) if "WATCHDOG=1" in m) + 1 :]
    assert after and all("WATCHDOG=1" not in m for m in after)
    assert any("unhealthy" in str(e.get("event")) for e in daemon.log_events())
    daemon.proc = None


def test_a_second_daemon_on_the_same_archive_refuses(daemon: DaemonProcess) -> None:
    daemon.start()
    second = cli("daemon", "--config", daemon.config_path, timeout=30)
    assert second.returncode != 0
    assert "already running" in second.stderr
    assert "Traceback" not in second.stderr
    assert daemon.stop() == 0


def test_cli_reads_while_the_daemon_imports(daemon: DaemonProcess, tmp_path: Path) -> None:
    """query, export and stats work while a burst is being imported."""
    write_studies(tmp_path / "seed", StudySpec(instances_per_series=2))
    seed_study = None
    daemon.start()
    for n, path in enumerate(sorted((tmp_path / "seed").rglob("*.dcm"))):
        os.rename(path, daemon.incoming / f"seed{n}.dcm")
    daemon.wait_archived(4)
    for i in range(400):
        write_instance(daemon.incoming / f"b{i}.dcm", rows=4, columns=4)
    for _ in range(3):
        stats = cli("stats", "--archive", daemon.archive, "--format", "json")
        assert stats.returncode == 0, stats.stderr
        query = cli("query", "--archive", daemon.archive, "--format", "json")
        assert query.returncode == 0, query.stderr
        studies = json.loads(query.stdout)
        seed_study = studies[0]
    assert seed_study is not None
    uid = seed_study.get("studyInstanceUID") or seed_study.get("study_instance_uid")
    export = cli(
        "export", "--archive", daemon.archive, "--output", tmp_path / "out", "--study-uid", uid
    )
    assert export.returncode == 0, export.stderr
    daemon.wait_archived(404)
    assert daemon.stop() == 0


def test_daemon_runs_from_flags_without_a_config_file(tmp_path: Path) -> None:
    from dicom_archive.archive.store import init_archive

    init_archive(tmp_path / "a").close()
    write_instance(tmp_path / "in" / "x.dcm")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dicom_archive",
            "daemon",
            "--archive",
            str(tmp_path / "a"),
            "--incoming",
            str(tmp_path / "in"),
            "--rejected",
            str(tmp_path / "rej"),
            "--log-format",
            "json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: not list((tmp_path / "in").iterdir()), 30, "x.dcm imported")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0


def test_polling_observer_and_move_to_processed(daemon: DaemonProcess) -> None:
    """The network-mount mode (polling) archives files; after_import = "move" keeps
    the sources in the processed folder under their relative path."""
    processed = daemon.root / "processed"
    daemon.write_config(
        polling=True, poll_interval="0.3s", after_import="move", processed=str(processed)
    )
    daemon.start()
    write_instance(daemon.incoming / "study" / "a.dcm")
    write_instance(daemon.incoming / "b.dcm")
    daemon.wait_archived(2)
    assert (processed / "study" / "a.dcm").is_file() and (processed / "b.dcm").is_file()
    assert any(e.get("observer") == "polling" for e in daemon.log_events())
    assert daemon.stop() == 0
