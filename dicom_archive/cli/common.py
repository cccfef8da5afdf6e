"""What the commands share: the archive option, tables, sizes and a progress bar."""

from __future__ import annotations

import argparse
import sys
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from dicom_archive.archive.stats import PatientNames
from dicom_archive.archive.store import Archive, open_archive
from dicom_archive.text import strip_control


def add_archive_option(
    parser: argparse.ArgumentParser,
    help_text: str = "the archive folder (made by: dicom-archive init --path ARCHIVE)",
) -> None:
    parser.add_argument(
        "--archive", "-a", required=True, type=Path, metavar="ARCHIVE", help=help_text
    )


def open_from_args(args: argparse.Namespace) -> Archive:
    return open_archive(args.archive)


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def safe(text: object) -> str:
    """A value from a file, fit for a terminal: control characters replaced."""
    return strip_control(str(text))


def display_width(text: str) -> int:
    """Columns a string takes on a terminal (CJK characters take two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[safe(c) for c in headers]] + [[safe(c) for c in row] for row in rows]
    widths = [max(display_width(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = (c + " " * (widths[i] - display_width(c)) for i, c in enumerate(row))
        return "  ".join(padded).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells[1:])
    return "\n".join(out)


class ProgressBar:
    """A one-line bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int, label: str, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() and total > 0
        self.total = total
        self.label = label
        self.done = 0
        self._last_draw = 0.0

    def advance(self, count: int = 1) -> None:
        self.done += count
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.1 and self.done < self.total:
            return
        self._last_draw = now
        width = 30
        filled = int(width * self.done / self.total)
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{' ' * (width - filled)}] {self.done}/{self.total}"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def print_several_names(findings: Sequence[PatientNames]) -> None:
    """Patient IDs whose studies state different names: shown, not counted as errors."""
    if not findings:
        return
    print(f"Patient IDs with different names: {len(findings)} (each study keeps its own)")
    for finding in findings:
        names = ", ".join(repr(name) for name in finding.names)
        print(safe(f"  {finding.patient_id}: {names}"))
