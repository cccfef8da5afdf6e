"""sd_notify datagrams and the rules for names under incoming."""

from __future__ import annotations

import socket
from pathlib import Path

from dicom_archive.daemon.notify import Notifier
from dicom_archive.daemon.places import (
    free_destination,
    is_ignored,
    move_no_replace,
    write_reason,
)


def test_notifier_sends_datagrams_and_reads_the_watchdog_interval(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000"})
        assert notifier.watchdog_interval == 2.0
        assert notifier.send("READY=1", "STATUS=queue 0")
        assert server.recv(1024) == b"READY=1\nSTATUS=queue 0"
        notifier.close()


def test_notifier_never_blocks_on_a_full_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        results = [notifier.send("WATCHDOG=1") for _ in range(2000)]
        assert not all(results)  # some dropped, none blocked
        notifier.close()


def test_without_systemd_notifications_are_no_ops() -> None:
    assert not Notifier({}).send("READY=1")


def test_ignore_patterns_apply_to_every_component() -> None:
    patterns = (".*", "*.part")
    assert is_ignored(".x.dcm", patterns)
    assert is_ignored("study/x.dcm.part", patterns)
    assert is_ignored(".upload/study/x.dcm", patterns)
    assert not is_ignored("study/x.dcm", patterns)


def test_moves_never_overwrite(tmp_path: Path) -> None:
    (tmp_path / "rej").mkdir()
    (tmp_path / "rej" / "x.dcm").write_text("old")
    (tmp_path / "x.dcm").write_text("new")
    destination = free_destination(tmp_path / "rej", Path("x.dcm"))
    assert destination.name == "x.dcm.1"
    move_no_replace(tmp_path / "x.dcm", destination)
    assert (tmp_path / "rej" / "x.dcm").read_text() == "old"
    assert destination.read_text() == "new"


def test_a_conflict_reason_file_lists_what_differs(tmp_path: Path) -> None:
    """The summary on a ``differs:`` line, then one difference a line; nothing raw."""
    sidecar = write_reason(
        tmp_path / "x.dcm",
        outcome="conflict",
        reason="SOP Instance UID 1.2.3 already archived with different bytes at data/a.dcm",
        source=tmp_path / "in" / "x.dcm",
        sop_instance_uid="1.2.3",
        differs="differs: PatientName ('A' vs 'B'), +1 more",
        differences=[
            "PatientName (0010,0010): 'A' vs 'B'",
            "StudyDate (0008,0020): '1' vs '2\x1b'",
        ],
    )
    lines = sidecar.read_text().splitlines()
    assert lines[0] == "outcome: conflict"
    assert lines[-4:] == [
        "differs: PatientName ('A' vs 'B'), +1 more",
        "differences:",
        "  PatientName (0010,0010): 'A' vs 'B'",
        "  StudyDate (0008,0020): '1' vs '2?'",
    ]
