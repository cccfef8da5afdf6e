"""The streaming multipart/related reader: any split of the body into chunks gives the
same parts, and memory never holds more than a chunk and a boundary."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicom_archive.web.multipart import (
    BodyTooLarge,
    MultipartError,
    PartSink,
    parse_accept,
    read_parts,
)

BOUNDARY = "b0undary-x"


class _Collect(PartSink):
    def __init__(self, store: list[bytes], headers: dict[str, str], seen: list[dict[str, str]]):
        self.store = store
        self.data = bytearray()
        seen.append(headers)
        self.largest = 0

    def write(self, data: bytes) -> None:
        self.largest = max(self.largest, len(data))
        self.data += data

    def close(self) -> None:
        self.store.append(bytes(self.data))


def _body(parts: list[bytes], preamble: bytes = b"") -> bytes:
    out = preamble
    for data in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\nepilogue".encode()


def _read(
    body: bytes, cuts: list[int], limit: int = 10**9
) -> tuple[list[bytes], list[dict[str, str]], int]:
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    chunks = [body[a:b] for a, b in itertools.pairwise(points) if b > a]
    store: list[bytes] = []
    seen: list[dict[str, str]] = []
    sinks: list[_Collect] = []

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    def sink(headers: dict[str, str]) -> PartSink:
        made = _Collect(store, headers, seen)
        sinks.append(made)
        return made

    count = asyncio.run(read_parts(stream(), BOUNDARY, sink, max_bytes=limit))
    assert count == len(store)
    biggest = max((s.largest for s in sinks), default=0)
    return store, seen, biggest


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
    preamble=st.sampled_from([b"", b"ignored preamble\r\n"]),
)
def test_any_chunking_gives_the_same_parts(
    parts: list[bytes], cuts: list[int], preamble: bytes
) -> None:
    # Parts may even contain the boundary text without the CRLF-- that delimits it.
    parts = [p.replace(f"\r\n--{BOUNDARY}".encode(), b"") for p in parts]
    store, seen, _ = _read(_body(parts, preamble), cuts)
    assert store == parts
    assert all(h == {"content-type": "application/dicom"} for h in seen)


def test_boundary_lookalikes_inside_a_part() -> None:
    tricky = f"--{BOUNDARY}x\r\n--{BOUNDARY[:-1]}\r\n".encode()
    store, _, _ = _read(_body([tricky, b"two"]), [5, 17, 40])
    assert store == [tricky, b"two"]


def test_writes_stay_small_for_a_big_part() -> None:
    big = bytes(range(256)) * 40_000  # 10 MB
    store, _, biggest = _read(_body([big]), list(range(0, 11_000_000, 65536)))
    assert store == [big] and biggest <= 65536 + 64


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no delimiter at all",
        f"--{BOUNDARY}\r\nContent-Type: x\r\n\r\ncut short".encode(),
        f"--{BOUNDARY}junk\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
        f"--{BOUNDARY}\r\nno colon here\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
        f"--{BOUNDARY}\r\n".encode() + b"X-Long: " + b"a" * 20_000,
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(MultipartError):
        _read(body, [3, 50])


def test_the_limit_stops_reading() -> None:
    with pytest.raises(BodyTooLarge):
        _read(_body([b"x" * 5000]), [1000, 2000, 3000], limit=2500)


def test_accept_headers() -> None:
    ranges = parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=*, '
        'multipart/related; type="application/octet-stream, x"; q=0.5, text/html; q=0'
    )
    assert [r.type for r in ranges] == ["multipart/related", "multipart/related"]
    assert ranges[0].params == {"type": "application/dicom", "transfer-syntax": "*"}
    assert ranges[1].params["type"] == "application/octet-stream, x"
