"""The daemon's state as kept in the index: read by ``archive.daemonstate``, where the
web face (which never imports the daemon) reads it too; the names stay here for the
daemon and the CLI."""

from __future__ import annotations

from dicom_archive.archive.daemonstate import (
    CheckInfo,
    DaemonStatus,
    ErrorInfo,
    RunInfo,
    read_status,
)

__all__ = ["CheckInfo", "DaemonStatus", "ErrorInfo", "RunInfo", "read_status"]
