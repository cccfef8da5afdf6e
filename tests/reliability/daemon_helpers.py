"""What the daemon reliability tests share: a fast corpus, a feeder thread that drops
files into incoming while the daemon runs (and is killed), and the proofs.

The proofs read only the disk and the index, never the daemon's own account:

* ``assert_nothing_lost``: every file that vanished from incoming has its exact
  bytes archived and indexed (checked while the daemon is dead, so nothing moves);
* ``assert_archived_exactly_once``: every dropped file's bytes are archived once,
  the index and ``data/`` agree, and ``check --verify-files`` finds nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.factory import make_instance, write_dataset
from tests.integration.daemon_harness import DaemonProcess, wait_until
from tests.reliability.helpers import cli, index_rows, sha256_of

_SOP_MARK = b"777777.1000000000"
_SERIES_MARK = b"888888.1000000000"
_ROOT = "1.2.826.0.1.3680043.10.1071"
#: Files per series folder in a corpus.
SERIES_SIZE = 250


def _template() -> bytes:
    ds = make_instance(
        rows=4,
        columns=4,
        SOPInstanceUID=f"{_ROOT}.{_SOP_MARK.decode()}",
        SeriesInstanceUID=f"{_ROOT}.{_SERIES_MARK.decode()}",
    )
    buffer = Path(os.environ.get("TMPDIR", "/tmp")) / f"template-{os.getpid()}.dcm"
    try:
        write_dataset(ds, buffer)
        return buffer.read_bytes()
    finally:
        buffer.unlink(missing_ok=True)


def make_corpus(folder: Path, count: int, prefix: str = "f", start: int = 0) -> dict[str, str]:
    """``count`` small, valid, distinct instances in ``folder``: name -> SHA-256.

    One pydicom-written template with its UIDs patched (same length), so 100,000
    files take seconds, not minutes; a salt keeps corpora of different calls apart.
    """
    folder.mkdir(parents=True, exist_ok=True)
    template = _template()
    assert start + count < 10**6
    base = 10**9 + random.randrange(1000) * 10**6  # ten digits, no leading zero
    hashes: dict[str, str] = {}
    for n in range(start, start + count):
        data = template.replace(_SOP_MARK, b"777777.%d" % (base + n)).replace(
            _SERIES_MARK, b"888888.%d" % (base + n // SERIES_SIZE)
        )
        name = f"{prefix}{n:06d}.dcm"
        (folder / name).write_bytes(data)
        hashes[name] = hashlib.sha256(data).hexdigest()
    return hashes


class Feeder(threading.Thread):
    """Moves files from ``staging`` into incoming subfolders at ``rate`` files/s, the way
    a sender that writes elsewhere and renames does. ``dropped``: path in incoming ->
    SHA-256, recorded only once the file is there."""

    def __init__(
        self,
        staging: Path,
        incoming: Path,
        hashes: dict[str, str],
        rate: float,
        folders: int = 8,
    ) -> None:
        super().__init__(name="test-feeder")
        self.staging = staging
        self.incoming = incoming
        self.hashes = hashes
        self.rate = rate
        self.folders = folders
        self.dropped: dict[Path, str] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._feed()
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def _feed(self) -> None:
        started = time.monotonic()
        for n, name in enumerate(self.hashes):
            if self._halt.is_set():
                return
            ahead = started + n / self.rate - time.monotonic()
            if ahead > 0:
                self._halt.wait(ahead)
            target = self.incoming / f"sender{n % self.folders}" / name
            for _ in range(50):
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.rename(self.staging / name, target)
                    break
                except FileNotFoundError:
                    # The daemon removed the emptied folder between mkdir and rename.
                    if not (self.staging / name).exists():
                        raise
            else:
                raise AssertionError(f"could not drop {name}")
            with self._lock:
                self.dropped[target] = self.hashes[name]

    def snapshot(self) -> dict[Path, str]:
        with self._lock:
            return dict(self.dropped)

    def hurry(self) -> None:
        """Drop the rest at once."""
        self.rate = float("inf")

    def finish(self, timeout: float = 120) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the feeder did not finish"
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        self._halt.set()
        self.join(10)


def drop_all(staging: Path, incoming: Path, names: Sequence[str], folders: int = 8) -> None:
    """Rename every staged file into incoming at once (a burst)."""
    for n, name in enumerate(names):
        target = incoming / f"sender{n % folders}" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging / name, target)


def incoming_now(incoming: Path) -> set[Path]:
    """Files under incoming (os.walk: folders the daemon removes meanwhile are skipped)."""
    return {Path(top) / name for top, _, names in os.walk(incoming) for name in names}


class Proof:
    """Checks that remember what they already verified, so hundreds of kills stay cheap."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self._rows_ok: set[tuple[str, str]] = set()
        self._gone_ok: set[Path] = set()

    def rows_by_sha(self) -> dict[str, list[str]]:
        by_sha: dict[str, list[str]] = {}
        for path, size, sha in index_rows(self.archive).values():
            if (path, sha) not in self._rows_ok:
                on_disk = self.archive / path
                assert on_disk.is_file(), f"a row names a missing file: {path}"
                assert on_disk.stat().st_size == size, f"a row names a partial file: {path}"
                assert sha256_of(on_disk) == sha, f"archived bytes differ from the index: {path}"
                self._rows_ok.add((path, sha))
            by_sha.setdefault(sha, []).append(path)
        return by_sha

    def assert_nothing_lost(self, dropped: dict[Path, str], incoming: Path) -> int:
        """With the daemon dead: every dropped file no longer in incoming has its exact
        bytes archived and indexed, once. Returns how many have vanished so far."""
        present = incoming_now(incoming)
        by_sha = self.rows_by_sha()
        gone = 0
        for path, sha in dropped.items():
            if path in present:
                continue
            gone += 1
            if path in self._gone_ok:
                continue
            copies = by_sha.get(sha, [])
            assert len(copies) == 1, f"{path} left incoming with {len(copies)} archived copies"
            self._gone_ok.add(path)
        return gone


def assert_archived_exactly_once(archive: Path, hashes: Sequence[str] | set[str]) -> None:
    """Every expected SHA-256 archived once, byte-identical; nothing else; index and
    ``data/`` agree; ``check --verify-files`` is clean."""
    rows = index_rows(archive)
    by_sha: dict[str, list[str]] = {}
    for path, size, sha in rows.values():
        on_disk = archive / path
        assert on_disk.is_file() and on_disk.stat().st_size == size, path
        assert sha256_of(on_disk) == sha, f"archived bytes differ from the index: {path}"
        by_sha.setdefault(sha, []).append(path)
    expected = set(hashes)
    missing = expected - set(by_sha)
    assert not missing, f"{len(missing)} inputs never archived"
    twice = {sha: paths for sha, paths in by_sha.items() if len(paths) > 1}
    assert not twice, f"archived more than once: {twice}"
    assert set(by_sha) == expected, "the archive holds files nobody dropped"
    data_files = [p for p in (archive / "data").rglob("*") if p.is_file()]
    assert len(data_files) == len(rows), "files under data/ and index rows disagree"
    assert_check_clean(archive)


def check_findings(archive: Path) -> list[dict[str, Any]]:
    result = cli("check", "-a", archive, "--verify-files", "-f", "json", timeout=600)
    findings: list[dict[str, Any]] = json.loads(result.stdout)["findings"]
    return findings


def assert_check_clean(archive: Path) -> None:
    findings = check_findings(archive)
    assert findings == [], findings[:10]


def kill_daemon(daemon: DaemonProcess) -> int:
    """SIGKILL the daemon (no cleanup runs) and reap it."""
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)
    code = daemon.proc.wait(30)
    daemon.proc = None
    return code


def events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.log_events() if e.get("event") == name]


def wait_all_archived(daemon: DaemonProcess, count: int, timeout: float) -> None:
    wait_until(
        lambda: not incoming_now(daemon.incoming) and daemon.instance_count() >= count,
        timeout,
        f"{count} archived and incoming empty",
    )


def start_wrapped(
    daemon: DaemonProcess, wrapper: Sequence[str], env: dict[str, str] | None = None
) -> None:
    """Like ``DaemonProcess.start`` under a command prefix (e.g. ``setpriv ...``)."""
    environment = {
        **os.environ,
        "NOTIFY_SOCKET": str(daemon.notify_path),
        "WATCHDOG_USEC": "1000000",
        **(env or {}),
    }
    daemon.messages.clear()
    with open(daemon.log_path, "ab") as log:
        daemon.proc = subprocess.Popen(
            [
                *wrapper,
                sys.executable,
                "-m",
                "dicom_archive",
                "daemon",
                "--config",
                str(daemon.config_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    proc = daemon.proc
    wait_until(lambda: daemon.seen("READY=1") or proc.poll() is not None, 30, "READY")
    assert proc.poll() is None, daemon.log_text()[-3000:]


def peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class FileSizeSampler(threading.Thread):
    """Samples a file's size every ``interval`` s; ``peak`` is the largest seen."""

    def __init__(self, path: Path, interval: float = 0.02) -> None:
        super().__init__(name="test-size-sampler")
        self.path = path
        self.interval = interval
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.peak = max(self.peak, self.path.stat().st_size)
            except FileNotFoundError:
                pass

    def stop(self) -> int:
        self._halt.set()
        self.join(5)
        return self.peak


def random_pauses(rng: random.Random, low: float, high: float) -> Iterator[float]:
    while True:
        yield rng.uniform(low, high)
