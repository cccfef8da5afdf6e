"""Timing, child processes with their peak memory, and the results table."""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLI = str(BIN / "dicom-archive")


@dataclass(frozen=True, slots=True)
class Run:
    seconds: float
    max_rss_kb: int
    returncode: int


def run(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    stdout: int | None = subprocess.DEVNULL,
    check: bool = False,
) -> Run:
    """Run a command; its wall time and its own peak RSS (``wait4``, not the sum of children)."""
    started = time.perf_counter()
    process = subprocess.Popen(list(args), cwd=cwd, stdout=stdout, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if check and process.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(args)} exited with {process.returncode}")
    return Run(seconds, int(usage.ru_maxrss), process.returncode)


def shell(command: str, *, cwd: Path | None = None) -> Run:
    return run(["bash", "-c", command], cwd=cwd)


def cli(*args: str, cwd: Path | None = None) -> Run:
    return run([CLI, *args], cwd=cwd)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[position]


def repeat(times: int, body: Callable[[], float]) -> list[float]:
    return [body() for _ in range(times)]


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def drop_page_cache_of(path: Path) -> None:
    """Nothing: runs read warm files on both sides, so ratios compare like with like."""


# -- results -------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    """One line of the table: a measured figure against a baseline or a limit.

    ``higher_is_better`` says how ``ratio`` (measured / baseline) meets ``goal``:
    at least ``goal`` when higher is better, at most ``goal`` otherwise. With no
    goal the line is informational.
    """

    section: str
    name: str
    measured: float | None
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    goal: float | None = None
    higher_is_better: bool = True
    target: str = ""
    note: str = ""
    skipped: str = ""

    @property
    def ratio(self) -> float | None:
        if self.measured is None or not self.baseline:
            return None
        return self.measured / self.baseline

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "SKIP"
        if self.goal is None:
            return "info"
        ratio = self.ratio
        if ratio is None:
            return "n/a"
        ok = ratio >= self.goal if self.higher_is_better else ratio <= self.goal
        return "PASS" if ok else "MISS"

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["verdict"] = self.verdict
        return data


@dataclass(slots=True)
class Report:
    mode: str
    started: str
    results: list[Result] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    def add(self, result: Result) -> Result:
        self.results.append(result)
        print(format_row(result), flush=True)
        return result

    def skip(self, section: str, name: str, reason: str) -> None:
        self.add(Result(section, name, None, "", skipped=reason))


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def format_row(result: Result) -> str:
    if result.skipped:
        return f"  SKIP  {result.section} / {result.name}: {result.skipped}"
    ratio = "-" if result.ratio is None else f"{result.ratio:.2f}"
    base = _num(result.baseline, result.unit)
    label = f" ({result.baseline_label})" if result.baseline_label else ""
    return (
        f"  {result.verdict:<4}  {result.section} / {result.name}: "
        f"{_num(result.measured, result.unit)} vs {base}{label}  ratio {ratio}"
        f"{'  target ' + result.target if result.target else ''}"
    )


def markdown(report: Report) -> str:
    lines = [
        f"Mode: `{report.mode}`, started {report.started}.",
        "",
        "| Section | Figure | Measured | Baseline | Ratio | Target | Verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report.results:
        if r.skipped:
            lines.append(f"| {r.section} | {r.name} | - | - | - | {r.target} | SKIP: {r.skipped} |")
            continue
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        base = _num(r.baseline, r.unit) + (f" ({r.baseline_label})" if r.baseline_label else "")
        note = f" {r.note}" if r.note else ""
        lines.append(
            f"| {r.section} | {r.name}{note} | {_num(r.measured, r.unit)} | {base} | {ratio} "
            f"| {r.target} | {r.verdict} |"
        )
    return "\n".join(lines) + "\n"


def write_results(report: Report, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = report.started.replace(":", "").replace("-", "")
    json_path = folder / f"{stamp}-{report.mode}.json"
    md_path = folder / f"{stamp}-{report.mode}.md"
    payload = {
        "mode": report.mode,
        "started": report.started,
        "environment": report.environment,
        "results": [r.as_json() for r in report.results],
    }
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(markdown(report))
    (folder / f"latest-{report.mode}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (folder / f"latest-{report.mode}.md").write_text(markdown(report))
    return json_path, md_path
