"""multipart/related (RFC 2387) as DICOMweb uses it: written while streaming, and read
from a request stream with bounded memory.

The reader keeps at most one chunk plus a boundary's length in memory, whatever the
size of the parts: each part's body is handed to a sink (a file) piece by piece.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

CRLF = b"\r\n"
_MAX_HEADER_BYTES = 16 * 1024
_TOKEN = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')


class MultipartError(ValueError):
    """A body that is not the multipart message it claims to be; the text says why."""


def new_boundary() -> str:
    return "dicom-archive-" + secrets.token_hex(16)


def part_header(boundary: str, content_type: str, extra: dict[str, str] | None = None) -> bytes:
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    for name, value in (extra or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("latin-1")


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One media type of a Content-Type or an Accept header, with its parameters."""

    type: str
    params: dict[str, str] = field(default_factory=dict)


def parse_media_type(text: str) -> MediaRange:
    main, _, rest = text.partition(";")
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _TOKEN.match(rest, position)
        if match is None:
            break
        value = match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[match.group(1).lower()] = value
        position = match.end()
        if position < len(rest) and rest[position] == ";":
            position += 1
    return MediaRange(main.strip().lower(), params)


def parse_accept(header: str) -> list[MediaRange]:
    """The media ranges of an Accept header, in order (q=0 dropped). Commas inside a
    quoted parameter (``type="a,b"``) do not split."""
    ranges = []
    for item in _split_outside_quotes(header, ","):
        if not item.strip():
            continue
        media = parse_media_type(item)
        if media.params.get("q", "1").strip() in ("0", "0.0", "0.00", "0.000"):
            continue
        ranges.append(media)
    return ranges


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


class PartSink:
    """Where one part's body goes: ``write`` pieces, then ``close``."""

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


async def read_parts(
    stream: AsyncIterator[bytes],
    boundary: str,
    new_sink: Callable[[dict[str, str]], PartSink],
    *,
    max_bytes: int,
) -> int:
    """Feed each part of ``stream`` to a sink made from its headers; returns the parts.

    Raises MultipartError for a malformed body, and ``BodyTooLarge`` once more than
    ``max_bytes`` have arrived (without reading the rest)."""
    if not boundary or len(boundary) > 200:
        raise MultipartError("the multipart boundary is missing or longer than 200 characters")
    delimiter = CRLF + b"--" + boundary.encode("latin-1")
    # The body starts with the first delimiter (its CRLF optional): a preamble before
    # it is allowed and ignored.
    buffer = bytearray(CRLF)
    received = 0
    parts = 0
    state = "preamble"
    sink: PartSink | None = None
    ended = False

    async for chunk in stream:
        received += len(chunk)
        if received > max_bytes:
            if sink is not None:
                sink.close()
            raise BodyTooLarge(max_bytes)
        buffer += chunk
        while True:
            if state == "preamble":
                at = buffer.find(delimiter)
                if at < 0:
                    keep = len(delimiter)
                    if len(buffer) > keep:
                        del buffer[: len(buffer) - keep]
                    break
                del buffer[: at + len(delimiter)]
                state = "after-delimiter"
            if state == "after-delimiter":
                if len(buffer) < 2:
                    break
                if buffer[:2] == b"--":
                    ended = True
                    state = "epilogue"
                    buffer.clear()
                    break
                line_end = buffer.find(CRLF)
                if line_end < 0:
                    if len(buffer) > 256:
                        raise MultipartError("junk after a multipart boundary")
                    break
                if buffer[:line_end].strip(b" \t"):
                    raise MultipartError("junk after a multipart boundary")
                del buffer[: line_end + 2]
                state = "headers"
            if state == "headers":
                end = buffer.find(CRLF + CRLF)
                if end < 0 and buffer.startswith(CRLF):
                    end = -2  # no headers at all
                if end == -1:
                    if len(buffer) > _MAX_HEADER_BYTES:
                        raise MultipartError("a part's headers exceed 16 KiB")
                    break
                headers = _parse_headers(bytes(buffer[: max(end, 0)]))
                del buffer[: (end + 4) if end >= 0 else 2]
                sink = new_sink(headers)
                parts += 1
                state = "body"
            if state == "body":
                assert sink is not None
                at = buffer.find(delimiter)
                if at < 0:
                    safe = len(buffer) - len(delimiter)
                    if safe > 0:
                        sink.write(bytes(buffer[:safe]))
                        del buffer[:safe]
                    break
                sink.write(bytes(buffer[:at]))
                sink.close()
                sink = None
                del buffer[: at + len(delimiter)]
                state = "after-delimiter"
                continue
            if state == "epilogue":
                buffer.clear()
                break
    if sink is not None:
        sink.close()
    if not ended:
        if parts == 0 and state == "preamble":
            raise MultipartError(f"no part found (no boundary {boundary!r} in the body)")
        raise MultipartError("the body ends before the closing multipart boundary")
    return parts


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(CRLF):
        if not line.strip():
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise MultipartError("a part header is not 'Name: value'")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body exceeds {limit // (1024 * 1024)} MB")
        self.limit = limit
