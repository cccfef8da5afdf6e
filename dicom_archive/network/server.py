"""The DICOM listener: C-ECHO, C-STORE into the archive, C-FIND from its index.

Built on pynetdicom's association server. Each association runs in its own
thread; C-STORE handlers hand received files to the one ``StoreCommitter`` and
answer only after the outcome is durable; C-FIND handlers open their own read
connection to the index. Every association and every refusal is a log event.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog
from pydicom.dataset import Dataset
from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.presentation import AllStoragePresentationContexts, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from dicom_archive.archive.matching import (
    RESPONSE_CHARSET,
    FindRequest,
    Level,
    StoredFile,
    find,
    retrieve_targets,
)
from dicom_archive.archive.records import Outcome
from dicom_archive.archive.store import open_archive
from dicom_archive.errors import ArchiveError, InvalidQuery
from dicom_archive.network.settings import DicomSettings
from dicom_archive.network.storing import StoreCommitter
from dicom_archive.text import strip_control

log = structlog.get_logger("dicom_archive.network")

# Every transfer syntax is accepted as sent and archived as received: never
# transcoded. Where a sender offers several, the first of ours it offers wins:
# explicit VRs before implicit (DCMTK's storescp +xe orders them so too), so a file
# offered in its own explicit encoding is sent in it.
_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent)
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
]

#: C-STORE statuses (PS3.4 B.2.3): FAILED is transient, so "out of resources" tells
#: the sender to try again; what we refuse is "cannot understand".
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CONFLICT = 0xC001
STATUS_REJECTED = 0xC002
STATUS_NOT_AUTHORISED = 0x0124
STATUS_FIND_BAD_IDENTIFIER = 0xC000
STATUS_FIND_OUT_OF_RESOURCES = 0xA700
STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
STATUS_MOVE_DESTINATION_UNKNOWN = 0xA801
STATUS_RETRIEVE_BAD_IDENTIFIER = 0xC000
#: The most presentation contexts one association may propose (PS3.8 9.3.2.2).
_MAX_CONTEXTS = 128

_FIND_MODELS = (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)
_RETRIEVE_MODELS = (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)


#: How long pynetdicom's transport thread sleeps when it found nothing to do (its
#: default is 1 ms). It polls, so each PDU can wait a whole sleep before it is read:
#: a pynetdicom SCP that does nothing received 183 instances/s from storescu with
#: the default, 314/s at 0.1 ms. An idle association then costs about 15% of a core
#: instead of 8% (measured); associations are short-lived and bounded in number.
TRANSPORT_POLL_S = 0.0002


def tune_connection(event: Any) -> None:
    """TCP_NODELAY on every association's socket, and a shorter transport poll.

    A DIMSE message goes out in several small writes, and Nagle's algorithm meeting
    the peer's delayed ACK made each C-STORE wait ~40 ms (pynetdicom to pynetdicom:
    19 -> 74 instances/s)."""
    dul = event.assoc.dul
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hasattr(dul, "_run_loop_delay"):  # pynetdicom 3.x's name for it
        dul._run_loop_delay = TRANSPORT_POLL_S


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        # Error Comment is LO: 64 characters of the default repertoire.
        status.ErrorComment = strip_control(comment).encode("ascii", "replace").decode()[:64]
    return status


class DicomServer:
    """A listener on one address for one archive; ``start`` returns once it listens."""

    def __init__(self, archive_root: Path, settings: DicomSettings) -> None:
        self.archive_root = archive_root
        self.settings = settings
        self.committer = StoreCommitter(archive_root, senders=self._open_associations)
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()
        self.associations = 0
        self.received = 0

    def _open_associations(self) -> int:
        server = self._server
        return len(server.active_associations) if server is not None else 1

    @property
    def port(self) -> int:
        """The port listened on (the real one when the settings asked for 0)."""
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        # Received data sets go to a temporary file, not memory: a 2 GB instance
        # or fifty senders at once stay in flat memory.
        pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
        self.committer.start()
        ae = ApplicationEntity(ae_title=self.settings.ae_title)
        ae.maximum_associations = self.settings.max_associations
        ae.maximum_pdu_size = self.settings.max_pdu
        ae.network_timeout = self.settings.idle_timeout
        # Also the ARTIM timer: a connection that never completes an association (garbage,
        # a port scan) holds one of max_associations until then.
        ae.acse_timeout = min(10.0, self.settings.idle_timeout)
        ae.dimse_timeout = self.settings.idle_timeout
        ae.require_called_aet = self.settings.check_called_ae
        if self.settings.peers and not self.settings.store_from_anyone:
            # Unknown callers never get an association at all (the address of a known
            # one is checked per request).
            ae.require_calling_aet = [p.ae_title for p in self.settings.peers]
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            # scp_role: C-GET's requestor asks to be the storage SCP on our association.
            ae.add_supported_context(
                context.abstract_syntax, _TRANSFER_SYNTAXES, scp_role=True, scu_role=False
            )
        for model in (*_FIND_MODELS, *_RETRIEVE_MODELS):
            ae.add_supported_context(model, _TRANSFER_SYNTAXES[:4])
        self._ae = ae
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, tune_connection),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        try:
            self._server = ae.start_server(
                (self.settings.bind, self.settings.port),
                block=False,
                evt_handlers=handlers,
                ssl_context=self.settings.ssl_context(),
            )
        except OSError:
            self.committer.stop()
            raise
        log.info(
            "dicom_listening",
            ae_title=self.settings.ae_title,
            bind=self.settings.bind,
            port=self.port,
            tls=self.settings.tls_certificate is not None,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.committer.stop()
        log.info("dicom_stopped", associations=self.associations, received=self.received)

    def status(self) -> dict[str, Any]:
        """What `status` shows of the listener."""
        return {
            "aeTitle": self.settings.ae_title,
            "bind": self.settings.bind,
            "port": self.port if self._server is not None else self.settings.port,
            "associations": self.associations,
            "active": len(self._server.active_associations) if self._server else 0,
            "received": self.received,
        }

    def __enter__(self) -> DicomServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- who is calling -------------------------------------------------------

    @staticmethod
    def _caller(event: Any) -> tuple[str, str]:
        requestor = event.assoc.requestor
        return strip_control(str(requestor.ae_title).strip()), str(requestor.address)

    def _allowed(self, event: Any, *, storing: bool) -> bool:
        ae_title, address = self._caller(event)
        if self.settings.allows(ae_title, address, storing=storing):
            return True
        log.warning("dicom_refused", calling_ae=ae_title, address=address, storing=storing)
        return False

    def _on_accepted(self, event: Any) -> None:
        with self._lock:
            self.associations += 1
        ae_title, address = self._caller(event)
        log.info("association_accepted", calling_ae=ae_title, address=address)

    def _on_rejected(self, event: Any) -> None:
        ae_title, address = self._caller(event)
        log.warning("association_rejected", calling_ae=ae_title, address=address)

    def _on_ended(self, event: Any) -> None:
        ae_title, address = self._caller(event)
        log.info("association_released", calling_ae=ae_title, address=address)

    def _on_aborted(self, event: Any) -> None:
        ae_title, address = self._caller(event)
        log.warning("association_aborted", calling_ae=ae_title, address=address)

    # -- services -------------------------------------------------------------

    def _on_echo(self, event: Any) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: Any) -> Dataset:
        if not self._allowed(event, storing=True):
            return _status(STATUS_NOT_AUTHORISED, "calling AE title or address not allowed")
        ae_title, address = self._caller(event)
        outcome = self.committer.store(Path(event.dataset_path))
        sop = strip_control(outcome.sop_instance_uid)
        fields = {"sop": sop, "calling_ae": ae_title, "address": address, "ms": outcome.ms}
        match outcome.outcome:
            case Outcome.IMPORTED | Outcome.DUPLICATE:
                with self._lock:
                    self.received += 1
                log.info("stored", outcome=outcome.outcome.value, path=outcome.archived_path,
                         **fields)  # fmt: skip
                return _status(STATUS_SUCCESS)
            case Outcome.CONFLICT:
                log.warning("store_conflict", reason=outcome.reason, **fields)
                return _status(STATUS_CONFLICT, "SOP Instance UID archived with other bytes")
            case Outcome.REJECTED:
                log.warning("store_rejected", reason=outcome.reason, **fields)
                return _status(STATUS_REJECTED, _short_reason(outcome.reason))
            case _:
                log.warning("store_failed", reason=outcome.reason, **fields)
                return _status(STATUS_OUT_OF_RESOURCES, _short_reason(outcome.reason))

    def _on_find(self, event: Any) -> Any:
        if not self._allowed(event, storing=False):
            yield _status(STATUS_NOT_AUTHORISED, "calling AE title or address not allowed"), None
            return
        identifier: Dataset = event.identifier
        try:
            request = _find_request(identifier)
        except InvalidQuery as exc:
            log.warning("find_refused", reason=str(exc))
            yield _status(STATUS_FIND_BAD_IDENTIFIER, str(exc)), None
            return
        ae_title, address = self._caller(event)
        log.info("find", level=request.level.name, calling_ae=ae_title, address=address,
                 keys=sorted(request.criteria))  # fmt: skip
        try:
            with open_archive(self.archive_root) as archive:
                for match in find(archive.index, request, lambda: bool(event.is_cancelled)):
                    yield STATUS_PENDING, _response(identifier, request, match, self.settings)
                if event.is_cancelled:
                    yield STATUS_CANCEL, None
        except InvalidQuery as exc:
            yield _status(STATUS_FIND_BAD_IDENTIFIER, str(exc)), None
        except ArchiveError as exc:
            log.warning("find_failed", reason=str(exc))
            yield _status(STATUS_FIND_OUT_OF_RESOURCES, str(exc)), None

    # -- retrieve ------------------------------------------------------------------

    def _targets(self, event: Any, service: str) -> tuple[list[StoredFile] | None, Any]:
        """The files a retrieve names, or None and the failure status to answer."""
        if not self._allowed(event, storing=False):
            return None, _status(STATUS_NOT_AUTHORISED, "calling AE title or address not allowed")
        try:
            request = _find_request(event.identifier)
            with open_archive(self.archive_root) as archive:
                targets = retrieve_targets(archive.index, request)
        except InvalidQuery as exc:
            log.warning(f"{service}_refused", reason=str(exc))
            return None, _status(STATUS_RETRIEVE_BAD_IDENTIFIER, str(exc))
        except ArchiveError as exc:
            log.warning(f"{service}_failed", reason=str(exc))
            return None, _status(STATUS_OUT_OF_RESOURCES, str(exc))
        ae_title, address = self._caller(event)
        log.info(service, level=request.level.name, calling_ae=ae_title, address=address,
                 instances=len(targets))  # fmt: skip
        return targets, None

    def _send_each(self, event: Any, targets: list[StoredFile]) -> Iterator[Any]:
        # pynetdicom's retrieve service sends decoded data sets only: each file is read
        # whole and re-encoded by pydicom in its stored transfer syntax (values and
        # encapsulated pixel data unchanged). `send` sends the stored bytes themselves.
        from pydicom import dcmread

        for target in targets:
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            try:
                dataset = dcmread(self.archive_root / target.file_path)
            except (OSError, ValueError) as exc:
                log.warning("retrieve_unreadable", path=target.file_path, reason=str(exc))
                failed = Dataset()
                failed.FailedSOPInstanceUIDList = [target.sop_instance_uid]
                yield STATUS_OUT_OF_RESOURCES, failed
                return
            yield STATUS_PENDING, dataset

    def _on_get(self, event: Any) -> Iterator[Any]:
        targets, failure = self._targets(event, "get")
        if targets is None:
            yield 1
            yield failure, None
            return
        yield len(targets)
        yield from self._send_each(event, targets)

    def _on_move(self, event: Any) -> Iterator[Any]:
        destination = strip_control(str(event.move_destination).strip())
        peer = self.settings.peer(destination)
        if peer is None or peer.port == 0:
            log.warning("move_destination_unknown", destination=destination)
            yield None, None  # pynetdicom answers 0xA801 (Move Destination unknown)
            return
        targets, failure = self._targets(event, "move")
        if targets is None:
            # pynetdicom reads the first yield as the destination whatever it is; an
            # error raised here is answered with its "unable to process" status 0xC514.
            _quiet_refusals.refusing.on = True
            raise _RetrieveRefused(str(failure.get("ErrorComment", "refused")))
        # One context per stored (SOP Class, transfer syntax): the bytes go as stored.
        pairs = sorted({(t.sop_class_uid, t.transfer_syntax_uid) for t in targets})
        contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in pairs]
        options: dict[str, Any] = {
            "contexts": contexts[:_MAX_CONTEXTS],
            "ae_title": destination,
            "evt_handlers": [(evt.EVT_CONN_OPEN, tune_connection)],
        }
        tls = self.settings.client_ssl_context()
        if tls is not None:
            options["tls_args"] = (tls, peer.host)
        yield peer.host, peer.port, options
        yield len(targets)
        yield from self._send_each(event, targets)


class _RetrieveRefused(Exception):
    """A C-MOVE that cannot start (logged already); pynetdicom answers 0xC514."""


class _QuietRefusals(logging.Filter):
    """Drops pynetdicom's traceback for a C-MOVE this server refuses on purpose.

    pynetdicom logs any exception from a move handler as a bug: an error line telling
    the handler how to yield, then the traceback. For a refusal (a bad identifier, a
    caller not allowed) our own one-line warning has said why already. The two records
    come one after the other on the handler's thread, which flags them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refusing = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(self.refusing, "on", False):
            return True
        if record.exc_info and isinstance(record.exc_info[1], _RetrieveRefused):
            self.refusing.on = False
        return False


_quiet_refusals = _QuietRefusals()
logging.getLogger("pynetdicom.service_class").addFilter(_quiet_refusals)


def _short_reason(reason: str) -> str:
    # "path: why" -> "why": the sender knows what it sent.
    return reason.split(": ", 1)[-1]


def _text_of(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _find_request(identifier: Dataset) -> FindRequest:
    level_text = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    try:
        level = Level[level_text]
    except KeyError:
        raise InvalidQuery(f"unknown Query/Retrieve Level {level_text!r}") from None
    criteria: dict[str, str] = {}
    keys: list[str] = []
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        keys.append(keyword)
        if element.VR != "SQ":
            criteria[keyword] = _text_of(element.value)
    return FindRequest(level, criteria, tuple(keys))


def _response(
    identifier: Dataset, request: FindRequest, match: dict[str, Any], settings: DicomSettings
) -> Dataset:
    response = Dataset()
    response.SpecificCharacterSet = RESPONSE_CHARSET
    response.QueryRetrieveLevel = request.level.name
    response.RetrieveAETitle = settings.ae_title
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        # Every key asked for is answered, empty when the archive does not keep it.
        value = match.get(keyword)
        if element.VR == "SQ":
            setattr(response, keyword, [])
        else:
            setattr(response, keyword, value)
    for keyword, value in match.items():
        if keyword not in response:
            setattr(response, keyword, value)
    return response
