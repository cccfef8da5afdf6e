"""dicom-archive protect: keep a study or patient from retention and delete (no
selector: list what is protected)."""

from __future__ import annotations

from typing import Any

from dicom_archive.cli.retention_cmd import add_protect_parser


def add_parser(subparsers: Any) -> None:
    add_protect_parser(subparsers, "protect")
