"""The audit log: append-only, private, whole lines, readable back and from the CLI."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_archive.archive.audit import append_audit, audit_path, read_audit
from dicom_archive.archive.store import Archive
from dicom_archive.cli import main


def test_entry_says_who_what_when_why(archive: Archive) -> None:
    """One line per call with the OS user, host, pid, UTC time, selection, count, reason."""
    append_audit(
        archive.root,
        "delete",
        selection="study 1.2.3",
        count=4,
        reason="wrong patient",
        details={"trashId": 7},
    )
    (entry,) = list(read_audit(archive.root))
    assert entry.action == "delete" and entry.selection == "study 1.2.3" and entry.count == 4
    assert entry.reason == "wrong patient" and entry.details == {"trashId": 7}
    assert entry.user.startswith(pwd.getpwuid(os.getuid()).pw_name)
    assert entry.pid == os.getpid() and entry.host
    assert entry.at.endswith("Z") and entry.at[:2] == "20"


def test_log_is_private_and_only_grows(archive: Archive) -> None:
    """Mode 0600 (widened modes are narrowed again); earlier bytes are never rewritten."""
    append_audit(archive.root, "delete", selection="a", count=1)
    path = audit_path(archive.root)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_bytes()
    os.chmod(path, 0o644)
    append_audit(archive.root, "restore", selection="b", count=1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(first)
    assert [e.action for e in read_audit(archive.root)] == ["delete", "restore"]


def test_torn_line_is_skipped_and_next_line_stays_whole(archive: Archive) -> None:
    """A line cut by a crash does not swallow the entry written after it."""
    append_audit(archive.root, "delete", selection="a", count=1)
    with open(audit_path(archive.root), "ab") as out:
        out.write(b'{"at": "2026-01-01T00:00:00Z", "action": "del')
    append_audit(archive.root, "restore", selection="b", count=2)
    assert [(e.action, e.count) for e in read_audit(archive.root)] == [
        ("delete", 1),
        ("restore", 2),
    ]


def test_concurrent_writers_never_interleave(archive: Archive, tmp_path: Path) -> None:
    """Four processes appending at once leave only whole lines, all of them."""
    code = (
        "import sys; from pathlib import Path\n"
        "from dicom_archive.archive.audit import append_audit\n"
        "for i in range(50): append_audit(Path(sys.argv[1]), 'repair', selection='x' * 3000, "
        "count=i, reason=sys.argv[2])\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(archive.root), f"w{n}"]) for n in range(4)
    ]
    assert all(p.wait(60) == 0 for p in procs)
    lines = audit_path(archive.root).read_bytes().splitlines()
    assert len(lines) == 200
    assert all(json.loads(line)["selection"] == "x" * 3000 for line in lines)


def test_cli_filters_by_action_and_since(
    archive: Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    append_audit(archive.root, "delete", selection="study 1", count=1, reason="dup\x1b[2J")
    append_audit(archive.root, "restore", selection="trash 1", count=1)
    assert main(["audit", "-a", str(archive.root), "--action", "restore", "-f", "json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["action"] for line in out] == ["restore"]
    assert main(["audit", "-a", str(archive.root)]) == 0
    table = capsys.readouterr().out
    assert "delete" in table and "restore" in table and "\x1b" not in table
    assert main(["audit", "-a", str(archive.root), "--since", "2999-01-01"]) == 0
    assert "No audit entries." in capsys.readouterr().out
    assert main(["audit", "-a", str(archive.root), "--since", "yesterday"]) == 2
    assert "--since 'yesterday'" in capsys.readouterr().err


def test_repair_and_rebuild_are_audited(archive: Archive, tmp_path: Path) -> None:
    """check --repair and rebuild each leave one line, after their change is made."""
    from dicom_archive.archive.importer import import_paths
    from dicom_archive.archive.integrity import check_archive
    from dicom_archive.archive.rebuild import rebuild_index
    from dicom_archive.archive.repair import apply_repair, plan_repair
    from tests.factory import StudySpec, write_studies

    list(import_paths(archive, write_studies(tmp_path / "in", StudySpec(patients=1))))
    sorted(archive.paths.data.rglob("*.dcm"))[0].unlink()
    apply_repair(archive, plan_repair(archive, check_archive(archive)))
    rebuild_index(archive.root, dry_run=True)  # a dry run changes nothing: no line
    archive.close()
    rebuild_index(archive.root)
    entries = list(read_audit(archive.root))
    assert [(e.action, e.count) for e in entries] == [("repair", 1), ("rebuild", 5)]
    assert entries[0].details["done"] == {"drop-row": 1}
