"""dicom-archive send: C-STORE a study, series or patient to a DICOM peer."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dicom_archive.cli.common import ProgressBar, add_archive_option, human_bytes, safe
from dicom_archive.cli.listen_cmd import settings_from_args
from dicom_archive.errors import EXIT_OK, EXIT_PROBLEMS, UsageError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "send",
        help="send a study, series or patient to a DICOM peer (C-STORE)",
        description="C-STORE the selected instances to a peer, each as archived (same "
        "bytes, same transfer syntax), with progress and a summary. The peer comes from "
        "--peer AE=HOST:PORT or the [dicom.peers] table of --config. Exit 0 when all "
        "were stored, 1 when any failed.",
    )
    add_archive_option(parser)
    parser.add_argument("--to", required=True, metavar="AE", help="the peer's AE title")
    select = parser.add_mutually_exclusive_group(required=True)
    select.add_argument("--study-uid", help="a Study Instance UID")
    select.add_argument("--series-uid", help="a Series Instance UID")
    select.add_argument("--patient-id", help="a Patient ID (every study of it)")
    parser.add_argument(
        "--config", "-c", type=Path, metavar="FILE", help="a TOML file with a [dicom] table"
    )
    parser.add_argument("--ae-title", help="our AE title (default DICOM_ARCHIVE)")
    parser.add_argument("--peer", action="append", default=[], metavar="AE=HOST:PORT",
                        help="a peer; repeatable")  # fmt: skip
    parser.set_defaults(run=run, bind=None, port=None, store_from_anyone=False)


def run(args: argparse.Namespace) -> int:
    from dicom_archive.archive.matching import FindRequest, Level, retrieve_targets
    from dicom_archive.archive.store import open_archive
    from dicom_archive.network.sending import send_instances

    settings = settings_from_args(args)
    peer = settings.peer(args.to)
    if peer is None:
        raise UsageError(f"unknown peer {args.to!r}: give --peer {args.to}=HOST:PORT")
    if args.study_uid:
        request = FindRequest(Level.STUDY, {"StudyInstanceUID": args.study_uid}, ())
    elif args.series_uid:
        request = FindRequest(Level.SERIES, {"SeriesInstanceUID": args.series_uid}, ())
    else:
        request = FindRequest(Level.PATIENT, {"PatientID": args.patient_id}, ())
    with open_archive(args.archive) as archive:
        files = retrieve_targets(archive.index, request)
    if not files:
        print("Nothing matches the selection.")
        return EXIT_PROBLEMS
    progress = ProgressBar(len(files), f"sending to {args.to}")
    last = 0

    def advance(done: int) -> None:
        nonlocal last
        progress.advance(done - last)
        last = done

    try:
        summary = send_instances(
            Path(args.archive),
            files,
            peer,
            ae_title=settings.ae_title,
            on_progress=advance,
            tls=settings.client_ssl_context(),
        )
    finally:
        progress.close()
    for sop, why in summary.failed:
        print(safe(f"failed     {sop}: {why}"))
    print(
        f"{summary.sent} sent, {len(summary.failed)} failed, "
        f"{human_bytes(summary.bytes_sent)} in {summary.seconds:.1f} s"
    )
    return EXIT_OK if not summary.failed else EXIT_PROBLEMS
