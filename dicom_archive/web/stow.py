"""STOW-RS (PS3.18 10.5): multipart uploads into the archive through the one importer.

Each part is written to a spool file inside the archive's ``tmp/`` as it arrives (a
request of any size passes through bounded memory), then all parts of the request go
to the ``StoreCommitter`` together: the same importer as files and the DICOM listener,
so the same durability (an instance is listed as stored only once its file and index
row are durable), deduplication and conflict rules. Spool files are removed once the
request is answered; those of a killed server carry its pid and are cleared as stale.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicom_archive.archive.layout import TMP_SUFFIX
from dicom_archive.archive.records import Outcome
from dicom_archive.network.storing import StoreCommitter
from dicom_archive.web.common import (
    DICOM_JSON,
    HTTPProblem,
    archive_access,
    base_url,
    log,
    valid_uid,
)
from dicom_archive.web.multipart import (
    BodyTooLarge,
    MultipartError,
    PartSink,
    parse_media_type,
    read_parts,
)
from dicom_archive.web.wado import PREAMBLE, lacks_preamble

#: PS3.18 Table 10.5.3-3 / PS3.4 failure reasons.
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900  # also: the instance belongs to another study than the URL's
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110  # a conflicting duplicate: never overwritten
_FAILURES = {
    Outcome.CONFLICT: PROCESSING_FAILURE,
    Outcome.REJECTED: CANNOT_UNDERSTAND,
    Outcome.FAILED: OUT_OF_RESOURCES,
}


@dataclass(slots=True)
class _Part:
    path: Path
    content_type: str
    size: int = 0
    refused: str = ""
    handle: Any = field(default=None, repr=False)


class _SpoolSink(PartSink):
    """Writes a part to its spool file. A part that starts with its File Meta
    Information but no preamble (dicomweb-client sends them so) is stored with the
    128-byte preamble and ``DICM`` that make it a Part 10 file."""

    def __init__(self, part: _Part) -> None:
        self.part = part
        self._head = b""
        self._started = False

    def write(self, data: bytes) -> None:
        if not self._started:
            self._head += data
            if len(self._head) < 132:
                return
            data, self._head = self._start(self._head), b""
        if self.part.handle is not None:
            self.part.handle.write(data)
        self.part.size += len(data)

    def _start(self, head: bytes) -> bytes:
        self._started = True
        return PREAMBLE + head if lacks_preamble(head) else head

    def close(self) -> None:
        if not self._started and self._head:
            head, self._head = self._start(self._head), b""
            if self.part.handle is not None:
                self.part.handle.write(head)
            self.part.size += len(head)
        if self.part.handle is not None:
            self.part.handle.close()
            self.part.handle = None


def committer(request: Request) -> StoreCommitter:
    value: StoreCommitter = request.app.state.committer
    return value


async def stow(request: Request) -> Response:
    study = request.path_params.get("study")
    if study is not None:
        valid_uid(study)
    media = parse_media_type(request.headers.get("content-type", ""))
    if media.type != "multipart/related":
        raise HTTPProblem(415, 'expected Content-Type: multipart/related; type="application/dicom"')
    part_type = media.params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise HTTPProblem(
            415, f"parts of type {part_type!r} are not accepted; send application/dicom"
        )
    boundary = media.params.get("boundary", "")
    limit = request.app.state.settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"the request body exceeds {limit // (1024 * 1024)} MB")
    tmp = archive_access(request).root / "tmp"
    parts: list[_Part] = []

    def new_sink(headers: dict[str, str]) -> PartSink:
        content_type = headers.get("content-type", "application/dicom")
        part = _Part(tmp / f"{os.getpid()}-stow-{secrets.token_hex(8)}{TMP_SUFFIX}", content_type)
        if parse_media_type(content_type).type != "application/dicom":
            part.refused = f"a part of type {content_type[:60]!r}, not application/dicom"
        else:
            part.handle = open(part.path, "xb")  # noqa: SIM115 (closed by the sink)
        parts.append(part)
        return _SpoolSink(part)

    started = time.perf_counter()
    try:
        try:
            await read_parts(request.stream(), boundary, new_sink, max_bytes=limit)
        except MultipartError as exc:
            raise HTTPProblem(400, f"malformed multipart body: {exc}") from exc
        except BodyTooLarge as exc:
            raise HTTPProblem(413, str(exc), {"Connection": "close"}) from exc
        except ClientDisconnect:
            raise HTTPProblem(400, "the client went away before the body ended") from None
        if not parts:
            raise HTTPProblem(400, "the multipart body has no parts")
        received = time.perf_counter()
        response = await run_in_threadpool(_store, request, parts, study)
        log.info(
            "stow",
            parts=len(parts),
            bytes=sum(p.size for p in parts),
            receive_ms=round((received - started) * 1000, 1),
            store_ms=round((time.perf_counter() - received) * 1000, 1),
        )
        return response
    finally:
        for part in parts:
            if part.handle is not None:
                part.handle.close()
            try:
                os.unlink(part.path)
            except FileNotFoundError:
                pass


def _store(request: Request, parts: list[_Part], study: str | None) -> Response:
    from dicom_archive.archive.dicomfile import read_header
    from dicom_archive.errors import RejectedFile

    to_import: list[_Part] = []
    headers: dict[int, tuple[str, str, str]] = {}
    for index, part in enumerate(parts):
        if part.refused:
            continue
        if study is not None:
            # The URL names the study: an instance of another study is refused
            # before it reaches the archive.
            try:
                with open(part.path, "rb") as handle:
                    header = read_header(handle, part.size, f"part {index + 1}")
            except (RejectedFile, OSError) as exc:
                part.refused = str(exc)
                continue
            headers[index] = (
                header.sop_class_uid,
                header.sop_instance_uid,
                header.study_instance_uid,
            )
            if header.study_instance_uid != study:
                part.refused = (
                    f"its Study Instance UID {header.study_instance_uid} is not the "
                    f"study of the URL, {study}"
                )
                continue
        to_import.append(part)
    outcomes = committer(request).store_many([p.path for p in to_import]) if to_import else []
    by_path = {o.source: o for o in outcomes}
    archive = archive_access(request).get()
    stored_sops = [o.sop_instance_uid for o in outcomes if o.durable_in_archive]
    classes = _classes_and_studies(archive, stored_sops)
    root = base_url(request)
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    studies: set[str] = set()
    for index, part in enumerate(parts):
        outcome = by_path.get(part.path)
        known = headers.get(index, ("", "", ""))
        if outcome is not None and outcome.durable_in_archive:
            sop_class, study_uid, series_uid = classes.get(outcome.sop_instance_uid, ("", "", ""))
            studies.add(study_uid)
            url = f"{root}/studies/{study_uid}/series/{series_uid}/instances/"
            url += outcome.sop_instance_uid
            referenced.append(_reference(sop_class, outcome.sop_instance_uid, url=url))
            log.info("stow_stored", sop=outcome.sop_instance_uid, outcome=outcome.outcome.value)
            continue
        if outcome is not None:
            reason_code = _FAILURES.get(outcome.outcome, PROCESSING_FAILURE)
            reason = outcome.reason
            sop = outcome.sop_instance_uid or known[1]
        else:
            reason_code = DOES_NOT_MATCH if known[2] and study else CANNOT_UNDERSTAND
            reason = part.refused
            sop = known[1]
        log.warning("stow_refused", part=index + 1, reason=reason[:300])
        failed.append(_reference(known[0], sop, failure=reason_code))
    body: dict[str, Any] = {}
    if study is not None or len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{root}/studies/{study or studies.pop()}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    status = 200 if not failed else (202 if referenced else 409)
    return Response(json.dumps(body, ensure_ascii=False), status, media_type=DICOM_JSON)


def _reference(
    sop_class: str, sop_instance: str, *, url: str = "", failure: int | None = None
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
        "00081155": {"vr": "UI", "Value": [sop_instance]} if sop_instance else {"vr": "UI"},
    }
    if url:
        item["00081190"] = {"vr": "UR", "Value": [url]}
    if failure is not None:
        item["00081197"] = {"vr": "US", "Value": [failure]}
    return item


def _classes_and_studies(archive: Any, sops: list[str]) -> dict[str, tuple[str, str, str]]:
    found: dict[str, tuple[str, str, str]] = {}
    for start in range(0, len(sops), 500):
        chunk = sops[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for row in archive.index.connection.execute(
            "SELECT i.sop_instance_uid, i.sop_class_uid, st.study_instance_uid, "
            "se.series_instance_uid FROM instances i JOIN series se ON se.id = i.series_pk "
            f"JOIN studies st ON st.id = se.study_pk WHERE i.sop_instance_uid IN ({marks})",
            chunk,
        ):
            found[row[0]] = (row[1], row[2], row[3])
    return found


def stow_routes() -> list[BaseRoute]:
    return [
        Route("/studies", stow, methods=["POST"]),
        Route("/studies/{study}", stow, methods=["POST"]),
    ]
