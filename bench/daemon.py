"""Daemon throughput, latency and memory (written last: the daemon is being built)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from bench.util import Report, cli


def daemon_available() -> str:
    """Empty when the daemon can be benchmarked, else the reason it cannot."""
    if importlib.util.find_spec("dicom_archive.daemon.service") is None:
        return "dicom_archive.daemon is not built yet (no dicom_archive.daemon.service)"
    if cli("daemon", "--help").returncode != 0:
        return "the CLI has no `daemon` command yet"
    return ""


def daemon_section(report: Report, work: Path, files: int) -> None:
    reason = daemon_available()
    if reason:
        for name in ("throughput", "latency p50/p99 at 200 files/s", "peak RSS"):
            report.skip("daemon", name, reason)
        return
    report.skip("daemon", "throughput", "daemon benchmark not written yet")
