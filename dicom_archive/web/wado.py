"""WADO-RS (PS3.18 10.4): instances as stored, metadata, frames and bulk data.

Instances stream from their archived files a megabyte at a time, so a study of any
size passes through flat memory. They go as stored (``transfer-syntax=*``, no
transfer syntax asked, or the stored one asked); Implicit and Explicit VR Little
Endian are transcoded into each other (pydicom rewrites the data set, pixels
untouched); anything else asked of a file stored otherwise is 406, never a silent
decompression.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from dicom_archive.archive.matching import FindRequest, Level, StoredFile, retrieve_targets
from dicom_archive.web.common import DICOM_JSON, HTTPProblem, archive_access, base_url, path_uids
from dicom_archive.web.metadata import PIXEL_DATA, MetadataCache, series_of_study, with_root
from dicom_archive.web.multipart import MediaRange, closing, new_boundary, parse_accept, part_header

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
#: Stored syntaxes pydicom can rewrite as either little endian one without touching
#: compressed pixels.
_TRANSCODE_FROM = {IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE}
_TRANSCODE_TO = {IMPLICIT_LE, EXPLICIT_LE}
_NATIVE = {IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE}
CHUNK = 4 * 1024 * 1024

#: PS3.18 Table 8.7.3-2: the media type of a frame in each encapsulated syntax.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
}


# -- negotiation ---------------------------------------------------------------------


def _dicom_ranges(request: Request) -> list[MediaRange]:
    header = request.headers.get("accept", "")
    ranges = parse_accept(header) if header.strip() else [MediaRange("*/*")]
    return ranges


def choose_syntax(ranges: list[MediaRange], stored: str) -> str | None:
    """The transfer syntax to send a file stored in ``stored`` as, or None (406)."""
    for media in ranges:
        if media.type in ("*/*", "multipart/*"):
            return stored
        if media.type == "multipart/related":
            part = media.params.get("type", "application/dicom").lower()
        elif media.type == "application/dicom":
            part = media.type
        else:
            continue
        if part not in ("application/dicom", "*/*", "application/*"):
            continue
        wanted = media.params.get("transfer-syntax")
        if wanted is None or wanted in ("*", stored):
            return stored
        if wanted in _TRANSCODE_TO and stored in _TRANSCODE_FROM:
            return wanted
    return None


def _transcoded(path: Path, syntax: str) -> bytes:
    from pydicom import dcmread
    from pydicom.uid import UID

    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=syntax == IMPLICIT_LE, little_endian=True, enforce_file_format=True)
    return out.getvalue()


# -- retrieve ------------------------------------------------------------------------


def _targets(request: Request, level: Level) -> list[StoredFile]:
    names = ("study", "series", "instance")[:level]
    uids = path_uids(request, *names)
    keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    criteria = dict(zip(keys, uids, strict=False))
    archive = archive_access(request).get()
    targets = retrieve_targets(archive.index, FindRequest(level, criteria, ()))
    if not targets:
        raise HTTPProblem(
            404, f"no such {('study', 'series', 'instance')[level - 1]} in the archive"
        )
    return targets


def _retrieve(request: Request, level: Level) -> Response:
    targets = _targets(request, level)
    ranges = _dicom_ranges(request)
    plan: list[tuple[StoredFile, str]] = []
    for target in targets:
        syntax = choose_syntax(ranges, target.transfer_syntax_uid)
        if syntax is None:
            raise HTTPProblem(
                406,
                f"instance {target.sop_instance_uid} is stored as "
                f"{target.transfer_syntax_uid}; it can be sent as stored "
                "(transfer-syntax=*) or, from a little endian syntax, as "
                f"{IMPLICIT_LE} or {EXPLICIT_LE}, not as asked",
            )
        plan.append((target, syntax))
    root = archive_access(request).root
    boundary = new_boundary()
    headers: dict[str, str] = {}
    if all(target.transfer_syntax_uid == syntax for target, syntax in plan):
        # As stored: the length is known up front, so no chunked encoding.
        try:
            total = sum(
                len(_dicom_part(boundary, s))
                + os.stat(root / t.file_path).st_size
                + len(_preamble_for(root / t.file_path))
                + 2
                for t, s in plan
            ) + len(closing(boundary))
            headers["Content-Length"] = str(total)
        except OSError:
            pass
    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return StreamingResponse(_stream_files(root, plan, boundary), 200, headers, media)


#: PS3.10 7.1: what a Part 10 file starts with. Files stored without it (accepted from
#: the wild, meta first) are sent with it, as PS3.18 asks for Part 10 files.
PREAMBLE = b"\0" * 128 + b"DICM"


def lacks_preamble(head: bytes) -> bool:
    return head[128:132] != b"DICM" and head[:2] == b"\x02\x00"


def _preamble_for(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return PREAMBLE if lacks_preamble(handle.read(132)) else b""


def _dicom_part(boundary: str, syntax: str) -> bytes:
    return part_header(boundary, f"application/dicom; transfer-syntax={syntax}")


def _stream_files(root: Path, plan: list[tuple[StoredFile, str]], boundary: str) -> Iterator[bytes]:
    """The multipart body in pieces of about ``CHUNK``: each piece costs a hop between
    threads and a trip through the server, so small files go several to a piece."""
    pending: list[bytes] = []
    size = 0
    for piece in _parts_of(root, plan, boundary):
        pending.append(piece)
        size += len(piece)
        if size >= CHUNK:
            yield b"".join(pending) if len(pending) > 1 else pending[0]
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _parts_of(root: Path, plan: list[tuple[StoredFile, str]], boundary: str) -> Iterator[bytes]:
    for target, syntax in plan:
        yield _dicom_part(boundary, syntax)
        path = root / target.file_path
        if syntax != target.transfer_syntax_uid:
            yield _transcoded(path, syntax)
        else:
            with open(path, "rb") as handle:
                first = handle.read(CHUNK)
                if lacks_preamble(first):
                    yield PREAMBLE
                yield first
                while chunk := handle.read(CHUNK):
                    yield chunk
        yield b"\r\n"
    yield closing(boundary)


def _retrieve_endpoint(level: Level) -> Callable[[Request], Response]:
    def endpoint(request: Request) -> Response:
        return _retrieve(request, level)

    return endpoint


# -- metadata -------------------------------------------------------------------------


def metadata_cache(request: Request) -> MetadataCache:
    cache: MetadataCache = request.app.state.metadata_cache
    return cache


def _json(body: bytes, request: Request) -> Response:
    return Response(with_root(body, base_url(request)), 200, media_type=DICOM_JSON)


def study_metadata(request: Request) -> Response:
    (study,) = path_uids(request, "study")
    archive = archive_access(request).get()
    series_uids = series_of_study(archive, study)
    if not series_uids:
        raise HTTPProblem(404, "no such study in the archive")
    cache = metadata_cache(request)
    bodies = []
    for series in series_uids:
        found = cache.series(archive, study, series)
        if found is not None and len(found.body) > 2:
            bodies.append(found.body[1:-1])
    return _json(b"[" + b",".join(bodies) + b"]", request)


def series_metadata(request: Request) -> Response:
    study, series = path_uids(request, "study", "series")
    found = metadata_cache(request).series(archive_access(request).get(), study, series)
    if found is None:
        raise HTTPProblem(404, "no such series in the archive")
    return _json(found.body, request)


def instance_metadata(request: Request) -> Response:
    study, series, instance = path_uids(request, "study", "series", "instance")
    found = metadata_cache(request).series(archive_access(request).get(), study, series)
    fragment = found.instance(instance) if found is not None else None
    if fragment is None:
        raise HTTPProblem(404, "no such instance in the archive")
    return _json(b"[" + fragment + b"]", request)


# -- frames and bulk data -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PixelInfo:
    path: Path
    syntax: str
    offset: int
    length: int
    frames: int
    frame_bytes: int
    bits_allocated: int


def _instance_file(request: Request) -> tuple[StoredFile, Path]:
    target = _targets(request, Level.IMAGE)[0]
    return target, archive_access(request).root / target.file_path


def _pixel_info(target: StoredFile, path: Path) -> PixelInfo:
    from pydicom import dcmread

    ds = dcmread(path, defer_size=1024)
    raw: Any = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if raw is None or getattr(raw, "value_tell", None) is None:
        raise HTTPProblem(404, "the instance has no Pixel Data")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return PixelInfo(
        path=path,
        syntax=target.transfer_syntax_uid,
        offset=int(raw.value_tell),
        length=int(raw.length),
        frames=frames,
        frame_bytes=rows * columns * samples * bits // 8,
        bits_allocated=bits,
    )


def _frame_numbers(text: str) -> list[int]:
    numbers = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise HTTPProblem(400, f"frame list {text[:60]!r}: expected numbers from 1, e.g. 1,2")
        numbers.append(int(item))
    if len(numbers) > 10_000:
        raise HTTPProblem(400, "at most 10,000 frames per request")
    return numbers


def _frame_part_type(ranges: list[MediaRange], syntax: str) -> str | None:
    """The Content-Type of each frame part, or None when the caller accepts nothing we
    can send without decompressing."""
    native = syntax in _NATIVE
    own = "application/octet-stream" if native else FRAME_MEDIA_TYPES.get(syntax)
    sent_syntax = EXPLICIT_LE if native else syntax
    for media in ranges:
        if media.type in ("*/*", "multipart/*"):
            part, wanted = "*/*", None
        elif media.type == "multipart/related":
            part = media.params.get("type", "application/octet-stream").lower()
            wanted = media.params.get("transfer-syntax")
        else:
            continue
        acceptable = wanted in (None, "*", sent_syntax) and own is not None
        if (part in ("*/*", "image/*") or part == own) and acceptable:
            return f"{own}; transfer-syntax={sent_syntax}"
        if part == "application/octet-stream" and (wanted == "*" or wanted == sent_syntax):
            # What OHIF's loader asks for: any syntax, said in each part.
            return f"application/octet-stream; transfer-syntax={sent_syntax}"
    return None


def _read_frames(info: PixelInfo, numbers: list[int]) -> Iterator[bytes]:
    with open(info.path, "rb") as handle:
        if info.syntax in _NATIVE:
            if info.syntax == DEFLATED_LE:
                raise HTTPProblem(406, "frames of a deflated instance are not served")
            if info.frame_bytes <= 0 or info.bits_allocated % 8:
                raise HTTPProblem(406, "frames of packed (1-bit) pixel data are not served")
            for number in numbers:
                handle.seek(info.offset + (number - 1) * info.frame_bytes)
                data = handle.read(info.frame_bytes)
                if info.syntax == EXPLICIT_BE and info.bits_allocated > 8:
                    data = _swap(data, info.bits_allocated // 8)
                yield data
            return
        from pydicom.encaps import get_frame

        for number in numbers:
            handle.seek(info.offset)
            yield get_frame(handle, number - 1, number_of_frames=info.frames)


def _swap(data: bytes, width: int) -> bytes:
    import array

    codes = {2: "H", 4: "I"}
    if width not in codes:
        return data
    values = array.array(codes[width])
    values.frombytes(data[: len(data) - len(data) % width])
    values.byteswap()
    return values.tobytes()


def frames(request: Request) -> Response:
    target, path = _instance_file(request)
    numbers = _frame_numbers(str(request.path_params["frames"]))
    return _frames_response(request, _pixel_info(target, path), numbers)


def _frames_response(request: Request, info: PixelInfo, numbers: list[int]) -> Response:
    missing = [n for n in numbers if n > info.frames]
    if missing:
        raise HTTPProblem(
            404, f"frame {missing[0]} does not exist (the instance has {info.frames})"
        )
    part_type = _frame_part_type(_dicom_ranges(request), info.syntax)
    if part_type is None:
        raise HTTPProblem(
            406,
            f"the frames are stored as {info.syntax}; ask for transfer-syntax=* or its "
            "media type (frames are never decompressed here)",
        )
    # Each frame is read before the response starts: a frame that cannot be found
    # (a truncated fragment list) is an error status, not a cut-off stream.
    try:
        data = list(_read_frames(info, numbers))
    except (ValueError, OSError) as exc:
        raise HTTPProblem(404, f"the frames cannot be read: {exc}") from exc
    boundary = new_boundary()
    body = bytearray()
    for frame in data:
        body += part_header(boundary, part_type) + frame + b"\r\n"
    body += closing(boundary)
    media = f'multipart/related; type="{part_type.split(";")[0]}"; boundary={boundary}'
    return Response(bytes(body), 200, media_type=media)


def bulkdata(request: Request) -> Response:
    target, path = _instance_file(request)
    text = str(request.path_params["tag"])
    try:
        tag = int(text, 16) if len(text) == 8 else -1
    except ValueError:
        tag = -1
    if tag < 0:
        raise HTTPProblem(400, f"{text[:20]!r} is not a tag (eight hex digits)")
    if tag == PIXEL_DATA:
        info = _pixel_info(target, path)
        if info.syntax not in _NATIVE:
            # Encapsulated: its bulk data is its frames, as multipart parts.
            return _frames_response(request, info, list(range(1, info.frames + 1)))
        return _bulk_bytes(path, info.offset, info.length)
    from pydicom import dcmread

    ds = dcmread(path, defer_size=1024)
    raw: Any = ds.get_item(tag, keep_deferred=True)
    if raw is None:
        raise HTTPProblem(404, f"the instance has no {text.upper()}")
    tell = getattr(raw, "value_tell", None)
    if tell is not None and getattr(raw, "length", 0xFFFFFFFF) != 0xFFFFFFFF:
        return _bulk_bytes(path, int(tell), int(raw.length))
    value = ds[tag].value
    if not isinstance(value, bytes):
        raise HTTPProblem(404, f"{text.upper()} is not bulk data")
    return _octets([value])


def _bulk_bytes(path: Path, offset: int, length: int) -> Response:
    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as handle:
            handle.seek(offset)
            left = length
            while left > 0:
                chunk = handle.read(min(CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    boundary = new_boundary()
    head = part_header(boundary, "application/octet-stream")
    tail = b"\r\n" + closing(boundary)

    def body() -> Iterator[bytes]:
        yield head
        yield from chunks()
        yield tail

    media = f'multipart/related; type="application/octet-stream"; boundary={boundary}'
    headers = {"Content-Length": str(len(head) + length + len(tail))}
    return StreamingResponse(body(), 200, headers, media)


def _octets(values: list[bytes]) -> Response:
    boundary = new_boundary()
    body = b"".join(part_header(boundary, "application/octet-stream") + v + b"\r\n" for v in values)
    media = f'multipart/related; type="application/octet-stream"; boundary={boundary}'
    return Response(body + closing(boundary), 200, media_type=media)


def wado_routes() -> list[BaseRoute]:
    instance = "/studies/{study}/series/{series}/instances/{instance}"
    return [
        Route("/studies/{study}", _retrieve_endpoint(Level.STUDY), methods=["GET"]),
        Route(
            "/studies/{study}/series/{series}", _retrieve_endpoint(Level.SERIES), methods=["GET"]
        ),
        Route(instance, _retrieve_endpoint(Level.IMAGE), methods=["GET"]),
        Route("/studies/{study}/metadata", study_metadata, methods=["GET"]),
        Route("/studies/{study}/series/{series}/metadata", series_metadata, methods=["GET"]),
        Route(instance + "/metadata", instance_metadata, methods=["GET"]),
        Route(instance + "/frames/{frames}", frames, methods=["GET"]),
        Route(instance + "/bulkdata/{tag}", bulkdata, methods=["GET"]),
    ]
