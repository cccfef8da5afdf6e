"""dicom-archive unprotect: let retention and delete touch a study or patient again."""

from __future__ import annotations

from typing import Any

from dicom_archive.cli.retention_cmd import add_protect_parser


def add_parser(subparsers: Any) -> None:
    add_protect_parser(subparsers, "unprotect")
