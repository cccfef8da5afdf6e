"""dicom-archive audit: show the audit log (deletes, restores, repairs, exports...)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dicom_archive.archive.audit import AuditEntry, read_audit
from dicom_archive.archive.store import open_archive
from dicom_archive.cli.common import add_archive_option, render_table
from dicom_archive.errors import UsageError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="show who deleted, restored, repaired or exported what, when and why",
        description="The archive's append-only audit log (ARCHIVE/audit.jsonl): one entry "
        "per delete, restore, trash empty, retention run, protect/unprotect, repair, "
        "rebuild and de-identified export, with the OS user, host, process, time (UTC), "
        "selection, count and reason.",
    )
    add_archive_option(parser)
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help="only entries at or after WHEN (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS, UTC)",
    )
    parser.add_argument(
        "--action", action="append", metavar="NAME", help="only this action (repeatable)"
    )
    parser.add_argument(
        "--format", "-f", choices=("table", "json"), default="table", help="table or json lines"
    )
    parser.set_defaults(run=run)


def _since(value: str | None) -> str:
    if value is None:
        return ""
    import datetime

    for pattern in ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"):
        try:
            moment = datetime.datetime.strptime(value, pattern)
        except ValueError:
            continue
        return moment.strftime("%Y-%m-%dT%H:%M:%S")
    raise UsageError(f"--since {value!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS (UTC)")


def select_entries(
    entries: list[AuditEntry], since: str, actions: list[str] | None
) -> list[AuditEntry]:
    # ISO times of one format compare as strings; "at" has the seconds first.
    return [e for e in entries if e.at[:19] >= since and (not actions or e.action in set(actions))]


def run(args: argparse.Namespace) -> int:
    since = _since(args.since)
    with open_archive(args.archive) as archive:
        entries = select_entries(list(read_audit(archive.root)), since, args.action)
    if args.format == "json":
        for entry in entries:
            print(json.dumps(entry.to_json(), ensure_ascii=False))
        return 0
    if not entries:
        print("No audit entries.")
        return 0
    rows = [
        (
            entry.at[:19] + "Z",
            entry.action,
            entry.user,
            f"{entry.host}:{entry.pid}",
            entry.selection,
            entry.count,
            entry.reason or "",
        )
        for entry in entries
    ]
    print(
        render_table(("When (UTC)", "Action", "User", "Host:pid", "Selection", "N", "Reason"), rows)
    )
    return 0
