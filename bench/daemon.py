"""Daemon throughput, latency and memory, measured from outside like a sender would.

The daemon runs as ``dicom-archive daemon --config FILE`` with a short settle
time. Files are hard-linked from the corpus into a staging folder on the same
filesystem and renamed into incoming (a drop is one atomic rename, as a careful
sender does). A reader polls the index every 10 ms for new rows, so each file's
"indexed" time is known to within one poll.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from bench.corpus import CorpusInfo, CorpusSpec, iter_files
from bench.sections import cli_import
from bench.util import CLI, Report, Result, cli, median, percentile, remove

SETTLE_S = 1.0
POLL_S = 0.01
LATENCY_RATE = 200.0  # files/s


def daemon_available() -> str:
    """Empty when the daemon can be benchmarked, else the reason it cannot."""
    if importlib.util.find_spec("dicom_archive.daemon.service") is None:
        return "dicom_archive.daemon is not built yet (no dicom_archive.daemon.service)"
    if cli("daemon", "--help").returncode != 0:
        return "the CLI has no `daemon` command yet"
    return ""


class _Daemon:
    def __init__(self, work: Path, label: str) -> None:
        self.root = work / f"daemon-{label}"
        remove(self.root)
        self.archive = self.root / "archive"
        self.incoming = self.root / "incoming"
        self.rejected = self.root / "rejected"
        self.staging = self.root / "staging"
        for folder in (self.incoming, self.rejected, self.staging):
            folder.mkdir(parents=True)
        cli("init", "-p", str(self.archive))
        config = self.root / "daemon.toml"
        config.write_text(
            f'archive = "{self.archive}"\n'
            f'incoming = "{self.incoming}"\n'
            f'rejected = "{self.rejected}"\n'
            f'settle_time = "{SETTLE_S}s"\n'
            "queue_limit = 200000\n"
            'log_format = "json"\n'
        )
        self.process = subprocess.Popen(
            [CLI, "daemon", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.db: sqlite3.Connection | None = None

    def connect(self) -> sqlite3.Connection:
        if self.db is None:
            uri = f"file:{self.archive / 'archive.db'}?mode=ro"
            self.db = sqlite3.connect(uri, uri=True, timeout=30)
        return self.db

    def count(self) -> int:
        row = self.connect().execute("SELECT COUNT(*) FROM instances").fetchone()
        return int(row[0])

    def peak_rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def stage(self, files: list[Path]) -> list[Path]:
        staged = []
        for n, path in enumerate(files):
            target = self.staging / f"{n:07d}.dcm"
            os.link(path, target)
            staged.append(target)
        return staged

    def drop(self, staged: Path) -> None:
        os.rename(staged, self.incoming / staged.name)

    def wait_ready(self, probe: Path, timeout: float = 60) -> None:
        """Drop one file and wait for its row: then the daemon watches and imports."""
        self.drop(self.stage([probe])[0])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.process.returncode}")
            try:
                if self.count() >= 1:
                    return
            except sqlite3.OperationalError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the daemon did not import a probe file in time")

    def stop(self) -> None:
        if self.db is not None:
            self.db.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        remove(self.root)


def _throughput(work: Path, corpus: CorpusInfo, label: str) -> tuple[float, float]:
    """(files/s from first drop to last row, minus the settle time; daemon peak RSS MB)."""
    files = sorted(corpus.root.rglob("*.dcm"))
    daemon = _Daemon(work, label)
    try:
        daemon.wait_ready(files[0])
        staged = daemon.stage(files[1:])
        expected = len(files)
        started = time.perf_counter()
        for path in staged:
            daemon.drop(path)
        while daemon.count() < expected:
            if daemon.process.poll() is not None:
                raise RuntimeError(f"the daemon exited with {daemon.process.returncode}")
            time.sleep(POLL_S)
        seconds = time.perf_counter() - started - SETTLE_S
        return len(staged) / seconds, daemon.peak_rss_mb()
    finally:
        daemon.stop()


def _latency(work: Path, spec: CorpusSpec, corpus: CorpusInfo, count: int) -> list[float]:
    """Seconds from drop to indexed, minus the settle time, at LATENCY_RATE files/s."""
    pairs = list(iter_files(spec, corpus.root))[: count + 1]
    daemon = _Daemon(work, "latency")
    try:
        daemon.wait_ready(pairs[0][0])
        staged = daemon.stage([path for path, _ in pairs[1:]])
        sops = [header.sop_instance_uid for _, header in pairs[1:]]
        dropped: dict[str, float] = {}
        seen: dict[str, float] = {}

        def dropper() -> None:
            start = time.perf_counter()
            for n, (path, sop) in enumerate(zip(staged, sops, strict=True)):
                due = start + n / LATENCY_RATE
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                dropped[sop] = time.perf_counter()
                daemon.drop(path)

        thread = threading.Thread(target=dropper)
        thread.start()
        db = daemon.connect()
        last_id = 0
        deadline = time.perf_counter() + count / LATENCY_RATE + 120
        while len(seen) < len(sops) and time.perf_counter() < deadline:
            rows = db.execute(
                "SELECT id, sop_instance_uid FROM instances WHERE id > ? ORDER BY id", (last_id,)
            ).fetchall()
            now = time.perf_counter()
            for row_id, sop in rows:
                last_id = max(last_id, row_id)
                seen.setdefault(sop, now)
            time.sleep(POLL_S)
        thread.join()
        return [seen[s] - dropped[s] - SETTLE_S for s in sops if s in seen and s in dropped]
    finally:
        daemon.stop()


def daemon_section(
    report: Report,
    work: Path,
    corpora: dict[str, CorpusInfo],
    specs: dict[str, CorpusSpec],
    cp_rates: dict[str, float],
    reps: int,
    latency_files: int,
    memory_corpus: CorpusInfo | None,
) -> None:
    reason = daemon_available()
    if reason:
        for name in ("throughput", "latency p50/p99 at 200 files/s", "peak RSS"):
            report.skip("daemon", name, reason)
        return
    for label, corpus in corpora.items():
        # Alternated with CLI imports of the same files, so that both sides of the
        # ratio see the same load (a CLI rate from minutes earlier swung it 0.67-1.23).
        rates: list[float] = []
        rss_seen: list[float] = []
        cli_seconds: list[float] = []
        try:
            for _ in range(reps):
                cli_seconds.append(cli_import(corpus.root, work / "archive-vs-daemon", work))
                rate, rss = _throughput(work, corpus, label)
                rates.append(rate)
                rss_seen.append(rss)
        except RuntimeError as exc:
            report.skip("daemon", f"throughput {label}", str(exc))
            continue
        rate, rss = median(rates), max(rss_seen)
        cli_rate = corpus.files / median(cli_seconds)
        if label == "64x64":
            report.add(
                Result(
                    "daemon",
                    "throughput 64x64, absolute (settle time excluded)",
                    rate,
                    "files/s",
                    1500.0,
                    "target",
                    goal=1.0,
                    target="≥ 1,500 files/s",
                    note=f"({corpus.files:,} files dropped at once)",
                )
            )
        elif label in cp_rates:
            report.add(
                Result(
                    "daemon",
                    f"throughput {label} (settle time excluded)",
                    rate,
                    "files/s",
                    cp_rates[label],
                    "cp -r + sync",
                    goal=0.70,
                    target="≥ 0.70 × cp -r + sync",
                )
            )
        report.add(
            Result(
                "daemon",
                f"throughput {label} vs CLI import",
                rate,
                "files/s",
                cli_rate,
                "CLI import, alternated",
                goal=0.90,
                target="≥ 0.90 × CLI import",
                note=f"(medians of {reps})",
            )
        )
        report.add(Result("memory", f"daemon peak RSS, {corpus.files:,} files {label}", rss, "MB"))
    try:
        latencies = _latency(work, specs["64x64"], corpora["64x64"], latency_files)
    except RuntimeError as exc:
        report.skip("daemon", "latency", str(exc))
    else:
        if latencies:
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            report.add(
                Result(
                    "daemon",
                    f"latency p99 at {LATENCY_RATE:.0f} files/s, minus settle ({SETTLE_S:g} s)",
                    p99,
                    "s",
                    1.0,
                    "limit",
                    goal=1.0,
                    higher_is_better=False,
                    target="p99 ≤ settle + 1 s",
                    note=f"(p50 {p50:.3f} s, {len(latencies)} files, median "
                    f"{median(latencies):.3f} s)",
                )
            )
    if memory_corpus is not None:
        try:
            _, rss = _throughput(work, memory_corpus, "memory")
        except RuntimeError as exc:
            report.skip("memory", "daemon peak RSS", str(exc))
        else:
            report.add(
                Result(
                    "memory",
                    f"daemon peak RSS with {memory_corpus.files:,} files queued",
                    rss,
                    "MB",
                    150.0,
                    "limit",
                    goal=1.0,
                    higher_is_better=False,
                    target="≤ 150 MB",
                )
            )
