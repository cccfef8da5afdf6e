"""WADO-RS metadata: DICOM JSON per instance, cached per series under the archive.

Parsing a file costs about a millisecond, so a 1,000-instance series is not parsed
again for every viewer that opens it. Each series' metadata is kept in
``ARCHIVE/cache/metadata/`` as one file: a header line naming, for every instance, its
SOP Instance UID, the SHA-256 of its archived bytes and where its JSON lies in the
body; then the body, the series' JSON array as served. It is valid exactly while the
index lists the same instances with the same hashes (a daemon import into the series
changes the list); a stale cache is rebuilt reusing the JSON of every instance still
listed, so a series that grows costs only its new instances. A cache file is written
under a temporary name and renamed, and one that does not parse is rebuilt, so a
crash never leaves a half-written cache that is believed; it is a cache, not
durable data (not fsync'd), and deleting the folder only costs time.

Bulk data (Pixel Data, and any binary value over ``BULK_THRESHOLD`` bytes at the top
level) is a ``BulkDataURI`` relative to the DICOMweb root; the route prefixes it with
the root the caller used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_archive.archive.store import Archive

# At import, so when the server starts rather than in the first viewer's request
# (pydicom's import is about 0.15 s).
from dicom_archive.web.fastjson import fast_instance_json

CACHE_DIR = "cache/metadata"
FORMAT = 1
#: Binary values above this size become a BulkDataURI.
BULK_THRESHOLD = 1024
#: Values above this size are not even read while building the JSON.
_DEFER = 64 * 1024
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
PIXEL_DATA = 0x7FE00010
#: Data Set Trailing Padding (PS3.10 7.2): no meaning, not metadata.
_TRAILING_PADDING = 0xFFFCFFFC
_MEMORY_ITEMS = 64
BULK_KEY = b'"BulkDataURI":"'


@dataclass(frozen=True, slots=True)
class MemberRow:
    sop_instance_uid: str
    sha256: str
    file_path: str


@dataclass(slots=True)
class SeriesMetadata:
    """One series' JSON array and where each instance's object lies in it."""

    key: tuple[tuple[str, str], ...]
    spans: dict[str, tuple[int, int]]
    body: bytes

    def instance(self, sop_instance_uid: str) -> bytes | None:
        span = self.spans.get(sop_instance_uid)
        return None if span is None else self.body[span[0] : span[1]]


def instance_json(path: Path, uri_prefix: str) -> bytes:
    """One instance's DICOM JSON (compact), bulk data as URIs under ``uri_prefix``."""

    def bulk(tag: int, vr: str) -> dict[str, Any]:
        return {"vr": vr, "BulkDataURI": f"{uri_prefix}/bulkdata/{tag:08X}"}

    with open(path, "rb") as handle:
        fast = fast_instance_json(handle, bulk, BULK_THRESHOLD, {_TRAILING_PADDING}, _DEFER)
    if fast is not None:
        return json.dumps(fast, ensure_ascii=False, separators=(",", ":")).encode()
    return pydicom_instance_json(path, uri_prefix)


def pydicom_instance_json(path: Path, uri_prefix: str) -> bytes:
    """``instance_json`` by pydicom's own conversion, for what the fast path declines."""
    from pydicom import dcmread
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import RawDataElement

    ds = dcmread(path, defer_size=_DEFER)
    out: dict[str, Any] = {}
    for tag in list(ds.keys()):
        if tag == _TRAILING_PADDING:
            continue
        key = f"{int(tag):08X}"
        # Any: a RawDataElement's VR is None for implicit VR, which the stubs deny.
        raw: Any = ds.get_item(tag, keep_deferred=True)
        vr: str | None = raw.VR if raw is not None else None
        length = -1
        if isinstance(raw, RawDataElement):
            length = raw.length
            if vr is None:
                try:
                    vr = str(dictionary_VR(tag))
                except KeyError:
                    vr = "UN"
        if vr is not None and " or " in vr:
            bits = int(ds.get("BitsAllocated", 16) or 16)
            vr = "OW" if tag == PIXEL_DATA and bits > 8 else vr.split(" or ")[0]
        if vr in _BINARY_VRS and (
            tag == PIXEL_DATA or length > BULK_THRESHOLD or length == 0xFFFFFFFF
        ):
            out[key] = {"vr": vr, "BulkDataURI": f"{uri_prefix}/bulkdata/{key}"}
            continue
        try:
            out[key] = ds[tag].to_json_dict(None, BULK_THRESHOLD)
        except Exception:  # a value pydicom cannot convert: its VR, without a value
            out[key] = {"vr": vr or "UN"}
            if vr in _BINARY_VRS and isinstance(raw, RawDataElement) and raw.value:
                out[key]["InlineBinary"] = base64.b64encode(raw.value).decode()
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode()


def _build_chunk(root: str, items: Sequence[tuple[str, str]]) -> list[bytes | str]:
    """JSON for (file path, URI prefix) pairs; a file that cannot be read gives its
    error text instead (the series is still served, without that instance)."""
    results: list[bytes | str] = []
    for file_path, prefix in items:
        try:
            results.append(instance_json(Path(root) / file_path, prefix))
        except Exception as exc:
            results.append(f"{file_path}: {exc.__class__.__name__}: {exc}")
    return results


class MetadataCache:
    """Series metadata from memory, from its cache file, or built (and cached)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder = root / CACHE_DIR
        self._memory: OrderedDict[str, SeriesMetadata] = OrderedDict()
        self._lock = threading.Lock()
        self._series_locks: dict[str, threading.Lock] = {}
        self.parsed = 0

    def close(self) -> None:
        with self._lock:
            self._memory.clear()

    def series(self, archive: Archive, study_uid: str, series_uid: str) -> SeriesMetadata | None:
        """The series' metadata, or None when the index has no such series in that study."""
        rows = _members(archive, study_uid, series_uid)
        if not rows:
            return None
        key = tuple((r.sop_instance_uid, r.sha256) for r in rows)
        with self._lock:
            found = self._memory.get(series_uid)
            if found is not None and found.key == key:
                self._memory.move_to_end(series_uid)
                return found
            series_lock = self._series_locks.setdefault(series_uid, threading.Lock())
        with series_lock:
            with self._lock:
                found = self._memory.get(series_uid)
            if found is None or found.key != key:
                found = self._from_disk(series_uid)
            if found is None or found.key != key:
                found = self._build(study_uid, series_uid, rows, found)
                self._write(series_uid, found)
        with self._lock:
            self._memory[series_uid] = found
            self._memory.move_to_end(series_uid)
            while len(self._memory) > _MEMORY_ITEMS:
                self._memory.popitem(last=False)
        return found

    def _cache_path(self, series_uid: str) -> Path:
        return self.folder / (hashlib.sha256(series_uid.encode()).hexdigest()[:40] + ".json")

    def _from_disk(self, series_uid: str) -> SeriesMetadata | None:
        try:
            data = self._cache_path(series_uid).read_bytes()
            header_end = data.index(b"\n")
            header = json.loads(data[:header_end])
            body = data[header_end + 1 :]
            if header.get("format") != FORMAT or header.get("series") != series_uid:
                return None
            entries = header["entries"]
            spans = {e[0]: (e[2], e[3]) for e in entries if e[2] >= 0}
            if max((end for _, end in spans.values()), default=1) + 1 != len(body):
                return None  # cut short: rebuilt
            return SeriesMetadata(key=tuple((e[0], e[1]) for e in entries), spans=spans, body=body)
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None

    def _build(
        self,
        study_uid: str,
        series_uid: str,
        rows: list[MemberRow],
        previous: SeriesMetadata | None,
    ) -> SeriesMetadata:
        reuse: dict[tuple[str, str], bytes] = {}
        if previous is not None:
            for sop, sha in previous.key:
                fragment = previous.instance(sop)
                if fragment is not None:
                    reuse[(sop, sha)] = fragment
        missing = [r for r in rows if (r.sop_instance_uid, r.sha256) not in reuse]
        items = [
            (
                r.file_path,
                f"studies/{study_uid}/series/{series_uid}/instances/{r.sop_instance_uid}",
            )
            for r in missing
        ]
        built = self._parse(items)
        self.parsed += len(items)
        fragments: dict[tuple[str, str], bytes] = dict(reuse)
        for row, result in zip(missing, built, strict=True):
            if isinstance(result, bytes):
                fragments[(row.sop_instance_uid, row.sha256)] = result
            else:
                from dicom_archive.web.common import log

                log.warning("metadata_unreadable", reason=result)
        parts: list[bytes] = [b"["]
        spans: dict[str, tuple[int, int]] = {}
        key: list[tuple[str, str]] = []
        position = 1
        for row in rows:
            fragment = fragments.get((row.sop_instance_uid, row.sha256))
            if fragment is None:
                continue
            if len(parts) > 1:
                parts.append(b",")
                position += 1
            spans[row.sop_instance_uid] = (position, position + len(fragment))
            key.append((row.sop_instance_uid, row.sha256))
            parts.append(fragment)
            position += len(fragment)
        parts.append(b"]")
        # The key names every instance of the index, read or not: an unreadable file
        # is not parsed again on every request, only when the series changes.
        return SeriesMetadata(
            key=tuple((r.sop_instance_uid, r.sha256) for r in rows),
            spans=spans,
            body=b"".join(parts),
        )

    def _parse(self, items: list[tuple[str, str]]) -> list[bytes | str]:
        # One thread, no process pool: the fast reader parses 1,000 headers in about
        # 0.4 s, less than a pool of fresh processes takes to start on two cores.
        return _build_chunk(str(self.root), items)

    def _write(self, series_uid: str, metadata: SeriesMetadata) -> None:
        entries = [[sop, sha, *metadata.spans.get(sop, (-1, -1))] for sop, sha in metadata.key]
        header = json.dumps({"format": FORMAT, "series": series_uid, "entries": entries})
        target = self._cache_path(series_uid)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as handle:
                handle.write(header.encode() + b"\n")
                handle.write(metadata.body)
            os.replace(tmp, target)
        except OSError as exc:  # a read-only archive still serves, uncached
            from dicom_archive.web.common import log

            log.warning("metadata_cache_not_written", error=str(exc))
            try:
                tmp.unlink()
            except OSError:
                pass


def _members(archive: Archive, study_uid: str, series_uid: str) -> list[MemberRow]:
    rows = archive.index.connection.execute(
        "SELECT i.sop_instance_uid, i.sha256, i.file_path FROM instances i "
        "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk "
        "WHERE se.series_instance_uid = ? AND st.study_instance_uid = ? "
        "ORDER BY i.instance_number IS NULL, i.instance_number, i.id",
        (series_uid, study_uid),
    ).fetchall()
    return [MemberRow(*row) for row in rows]


def series_of_study(archive: Archive, study_uid: str) -> list[str]:
    rows = archive.index.connection.execute(
        "SELECT se.series_instance_uid FROM series se JOIN studies st ON st.id = se.study_pk "
        "WHERE st.study_instance_uid = ? ORDER BY se.series_number IS NULL, se.series_number, "
        "se.id",
        (study_uid,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def with_root(body: bytes, root: str) -> bytes:
    """Relative BulkDataURIs made absolute under the DICOMweb root the caller used."""
    return body.replace(BULK_KEY, BULK_KEY + root.encode() + b"/")
