"""dicom-archive status: is a daemon running on the archive, and how is it doing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dicom_archive.archive.snapshot import snapshot_state
from dicom_archive.archive.store import open_archive
from dicom_archive.cli.common import safe
from dicom_archive.daemon.config import load_config
from dicom_archive.daemon.runtime import Counts
from dicom_archive.daemon.status import CheckInfo, DaemonStatus, read_status
from dicom_archive.errors import EXIT_OK, EXIT_PROBLEMS


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show whether a daemon runs on an archive, its queue, counts and last check",
        description="Show whether a dicom-archive daemon is running on the archive (pid, "
        "since when, last heartbeat), its queue depth, files imported / duplicates / "
        "rejected / conflicts since it started and in total, the last integrity check "
        "and the most recent errors. Exit 0 when a daemon runs, 1 when none does.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--archive", "-a", type=Path, help="the archive folder")
    where.add_argument("--config", "-c", type=Path, metavar="FILE", help="the daemon's config")
    parser.add_argument("--errors", type=int, default=5, help="recent errors to show (default 5)")
    parser.add_argument(
        "--format", "-f", choices=("text", "json"), default="text", help="text (default) or json"
    )
    parser.set_defaults(run=run)


def _counts(counts: Counts) -> dict[str, int]:
    return counts.as_dict()


def _check(check: CheckInfo | None) -> dict[str, Any] | None:
    if check is None:
        return None
    return {
        "startedAt": check.started_at,
        "finishedAt": check.finished_at,
        "verified": check.verified,
        "instances": check.instances,
        "findings": check.findings,
        "clean": check.findings == 0,
        "counts": check.counts,
    }


def status_json(status: DaemonStatus) -> dict[str, Any]:
    run = status.run
    return {
        "running": status.running,
        "pid": run.pid if run and status.running else None,
        "lastRun": None
        if run is None
        else {
            "pid": run.pid,
            "hostname": run.hostname,
            "startedAt": run.started_at,
            "heartbeatAt": run.heartbeat_at,
            "heartbeatAgeSeconds": None
            if status.heartbeat_age is None
            else round(status.heartbeat_age, 1),
            "stoppedAt": run.stopped_at,
            "state": run.state,
            "incoming": run.incoming,
            "queueDepth": run.queue_depth,
            "sinceStart": _counts(run.counts),
        },
        "totals": _counts(status.totals),
        "lastCheck": _check(status.last_check),
        "lastVerification": _check(status.last_verify),
        "errors": [
            {"at": e.at, "kind": e.kind, "path": e.path, "message": e.message}
            for e in status.errors
        ],
        "dicom": status.dicom,
        "web": status.web,
    }


def _counts_line(counts: Counts) -> str:
    return (
        f"{counts.imported} imported, {counts.duplicates} duplicates, "
        f"{counts.rejected} rejected, {counts.conflicts} conflicts, {counts.failed} failed"
    )


def _check_line(check: CheckInfo | None) -> str:
    if check is None:
        return "never"
    result = "clean" if check.findings == 0 else f"{check.findings} problems"
    detail = ", ".join(f"{v} {k}" for k, v in sorted(check.counts.items()))
    return f"{check.finished_at}: {check.instances} instances, {result}" + (
        f" ({detail})" if detail else ""
    )


def render_text(archive: Path, status: DaemonStatus) -> str:
    run = status.run
    lines = [f"Archive:      {safe(archive)}"]
    if status.running and run is not None:
        age = "" if status.heartbeat_age is None else f" ({status.heartbeat_age:.0f} s ago)"
        lines += [
            f"Daemon:       running, pid {run.pid} on {safe(run.hostname)}",
            f"Since:        {run.started_at}",
            f"Heartbeat:    {run.heartbeat_at}{age}",
            f"Incoming:     {safe(run.incoming)}",
            f"Queue:        {run.queue_depth} files waiting",
            f"Since start:  {_counts_line(run.counts)}",
        ]
        if status.dicom:
            d = status.dicom
            lines.append(
                f"DICOM:        {safe(d.get('aeTitle'))} on {safe(d.get('bind'))}:{d.get('port')}"
                f", {d.get('active', 0)} associations open, {d.get('associations', 0)} since "
                f"start, {d.get('received', 0)} instances received"
            )
        if status.web:
            w = status.web
            lines.append(f"DICOMweb:     {safe(w.get('url'))} (auth {safe(w.get('auth'))})")
    elif run is not None:
        lines += [
            "Daemon:       not running",
            f"Last run:     pid {run.pid}, {run.started_at} to {run.stopped_at or '?'} "
            f"({run.state})",
            f"Last run did: {_counts_line(run.counts)}",
        ]
    else:
        lines.append("Daemon:       not running (never ran on this archive)")
    lines += [
        f"In total:     {_counts_line(status.totals)}",
        f"Last check:   {_check_line(status.last_check)}",
        f"Last verify:  {_check_line(status.last_verify)}",
    ]
    if status.errors:
        lines.append("Recent errors:")
        for error in status.errors:
            lines.append(f"  {error.at}  {error.kind:11} {safe(error.path)}: {safe(error.message)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    archive_path: Path = (
        args.archive if args.archive is not None else load_config(args.config).archive
    )
    with open_archive(archive_path) as archive:
        status = read_status(archive, errors=max(0, args.errors))
        snapshot = snapshot_state(archive.paths, archive.index)
    if args.format == "json":
        document = dict(status_json(status), snapshot=snapshot.as_json())
        print(json.dumps(document, ensure_ascii=False, indent=2))
    else:
        print(render_text(archive_path, status))
        print(f"Snapshot:     archive_index.json {snapshot.describe()}")
    return EXIT_OK if status.running else EXIT_PROBLEMS
