"""What the reliability tests share: running the real CLI and proving what is on disk."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "dicom_archive"]
KILLED = -signal.SIGKILL


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    max_rss_kb: int = 0


def cli(
    *argv: str | Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    wrapper: Sequence[str] = (),
) -> Run:
    """Run ``dicom-archive ARGV`` in a new process, as a user would (``wrapper`` is
    a command prefix such as ``setpriv ...``)."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run(
        [*wrapper, *CLI, *map(str, argv)],
        env=full_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(result.returncode, result.stdout, result.stderr)


#: Runs the CLI and reports this process's own peak RSS. Not ``wait4``'s
#: ``ru_maxrss``: Linux carries the forking parent's resident size into the child's
#: figure, so a test holding big buffers would be charged to the CLI.
_MEASURED = """
import sys
from dicom_archive.cli import main
try:
    code = main(sys.argv[1:])
finally:
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    sys.stderr.write(f"\\nPEAK_RSS_KB {peak}\\n")
sys.exit(code)
"""


def cli_measured(*argv: str | Path, timeout: float = 600) -> Run:
    """Like ``cli``, and the CLI process's peak resident memory (VmHWM)."""
    result = subprocess.run(
        [sys.executable, "-c", _MEASURED, *map(str, argv)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    stderr, _, peak = result.stderr.rpartition("\nPEAK_RSS_KB ")
    return Run(result.returncode, result.stdout, stderr, int(peak.strip() or 0))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_hashes(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file under ``folder``."""
    return {
        str(p.relative_to(folder)): sha256_of(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def tree_listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of everything under ``folder`` (no content read)."""
    found = {}
    for current, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(current) / name
            info = path.lstat()
            found[str(path.relative_to(folder))] = (info.st_size, info.st_mtime_ns)
    return found


def index_rows(archive: Path) -> dict[str, tuple[str, int, str]]:
    """SOP Instance UID -> (file path, size, SHA-256), read straight from the index."""
    connection = sqlite3.connect(archive / "archive.db")
    try:
        return {
            row[0]: (row[1], row[2], row[3])
            for row in connection.execute(
                "SELECT sop_instance_uid, file_path, file_size, sha256 FROM instances"
            )
        }
    finally:
        connection.close()


def assert_exactly_once(archive: Path, sources: Sequence[Path]) -> None:
    """Each source's bytes are archived exactly once, byte-identical, and indexed."""
    rows = index_rows(archive)
    by_hash: dict[str, list[str]] = {}
    for _sop, (path, size, sha) in rows.items():
        on_disk = archive / path
        assert on_disk.is_file(), f"indexed file missing: {path}"
        assert on_disk.stat().st_size == size
        assert sha256_of(on_disk) == sha, f"archived bytes differ from the index: {path}"
        by_hash.setdefault(sha, []).append(path)
    data_files = [p for p in (archive / "data").rglob("*") if p.is_file()]
    assert len(data_files) == len(rows), "files under data/ and index rows disagree"
    for source in sources:
        copies = by_hash.get(sha256_of(source), [])
        assert len(copies) == 1, f"{source} archived {len(copies)} times"


def unprivileged() -> tuple[str, ...]:
    """Command prefix that makes root obey file permissions (setpriv drops the
    capabilities that let it ignore them); skips the test where that is impossible."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be denied")
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")
