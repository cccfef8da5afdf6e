"""Sending archived instances to a peer (C-STORE SCU), bytes as stored."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity

from dicom_archive.archive.matching import StoredFile
from dicom_archive.errors import ArchiveError
from dicom_archive.network.server import tune_connection
from dicom_archive.network.settings import Peer

log = structlog.get_logger("dicom_archive.network")
_MAX_CONTEXTS = 128


class SendError(ArchiveError):
    """The peer could not be reached or refused the association."""


@dataclass(slots=True)
class SendSummary:
    sent: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes_sent: int = 0
    seconds: float = 0.0


def send_instances(
    archive_root: Path,
    files: Sequence[StoredFile],
    peer: Peer,
    *,
    ae_title: str,
    on_progress: Callable[[int], None] = lambda _done: None,
    tls: ssl.SSLContext | None = None,
) -> SendSummary:
    """C-STORE each file's stored bytes to ``peer``: one association per 128 (SOP Class,
    transfer syntax) pairs, each file in the syntax it was archived in."""
    if peer.port == 0:
        raise SendError(f"peer {peer.ae_title} has no port: set it as AE=HOST:PORT")
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True  # no decode, no re-encode
    summary = SendSummary()
    started = time.perf_counter()
    pairs = sorted({(f.sop_class_uid, f.transfer_syntax_uid) for f in files})
    for first in range(0, len(pairs), _MAX_CONTEXTS):
        group = set(pairs[first : first + _MAX_CONTEXTS])
        chunk = [f for f in files if (f.sop_class_uid, f.transfer_syntax_uid) in group]
        _send_chunk(archive_root, chunk, sorted(group), peer, ae_title, summary, on_progress, tls)
    summary.seconds = time.perf_counter() - started
    return summary


def _send_chunk(
    archive_root: Path,
    files: Sequence[StoredFile],
    pairs: Sequence[tuple[str, str]],
    peer: Peer,
    ae_title: str,
    summary: SendSummary,
    on_progress: Callable[[int], None],
    tls: ssl.SSLContext | None,
) -> None:
    ae = ApplicationEntity(ae_title=ae_title)
    for sop_class, syntax in pairs:
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.ae_title,
        tls_args=(tls, peer.host) if tls is not None else None,
        evt_handlers=[(evt.EVT_CONN_OPEN, tune_connection)],
    )
    if not assoc.is_established:
        raise SendError(
            f"{peer.ae_title} at {peer.host}:{peer.port} refused or did not answer the association"
        )
    try:
        for stored in files:
            path = archive_root / stored.file_path
            status = assoc.send_c_store(path)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code == 0x0000 or 0xB000 <= code <= 0xBFFF:
                summary.sent += 1
                summary.bytes_sent += path.stat().st_size
            else:
                why = "no answer" if code < 0 else f"status 0x{code:04X}"
                summary.failed.append((stored.sop_instance_uid, why))
                log.warning("send_failed", sop=stored.sop_instance_uid, peer=peer.ae_title,
                            reason=why)  # fmt: skip
            on_progress(summary.sent + len(summary.failed))
            if not assoc.is_established:
                raise SendError(f"{peer.ae_title} dropped the association")
    finally:
        if assoc.is_established:
            assoc.release()
