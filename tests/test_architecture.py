"""The folders show the architecture: the store knows nothing of daemons or terminals."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dicom_archive"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _offenders(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {
        str(path.relative_to(PACKAGE)): sorted(
            m for m in imported_modules(path) if m.startswith(forbidden)
        )
        for path in (PACKAGE / folder).rglob("*.py")
    }
    return {k: v for k, v in found.items() if v}


def test_archive_imports_neither_daemon_nor_cli() -> None:
    faces = ("dicom_archive.daemon", "dicom_archive.cli", "dicom_archive.network")
    assert _offenders("archive", (*faces, "dicom_archive.web")) == {}


def test_the_network_face_uses_the_archive_and_never_the_daemon_or_cli() -> None:
    assert _offenders("network", ("dicom_archive.daemon", "dicom_archive.cli")) == {}


def test_the_web_face_uses_the_archive_and_never_the_daemon_or_cli() -> None:
    assert _offenders("web", ("dicom_archive.daemon", "dicom_archive.cli")) == {}


def test_archive_never_prints() -> None:
    printing = [
        str(path.relative_to(PACKAGE))
        for path in (PACKAGE / "archive").rglob("*.py")
        if any(
            isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("print", "input")
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        )
    ]
    assert printing == []


def test_daemon_does_not_import_the_cli() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in (PACKAGE / "daemon").rglob("*.py")
        if any(m.startswith("dicom_archive.cli") for m in imported_modules(path))
    ]
    assert offenders == []
