"""The one place that reads DICOM: a file's header -> ``InstanceHeader``, or a
one-line reason why the file cannot be archived.

Headers only (``stop_before_pixels``): the pixel data is never decoded. A file cut
short still parses that way, so the Pixel Data element is walked by hand to prove
it is all there.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from dicom_archive.archive.records import InstanceHeader
from dicom_archive.errors import RejectedFile

if TYPE_CHECKING:
    # pydicom is imported when a file first needs it (see _parse): most files take
    # the fast path, and commands that read no file (query, stats) skip its ~130 ms.
    from pydicom.dataset import Dataset

DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UR", b"UT", b"UN", b"SV"}
_UNDEFINED = 0xFFFFFFFF
# pydicom reports a file that ends early with a warning (or a log line), not an error.
_TRUNCATION_HINTS = ("end of file", "delimiter", "truncat", "fewer bytes", "premature")
_MAX_REASON = 200


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 1] + "…"


class _CollectLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _pydicom_complaints() -> Iterator[list[str]]:
    """Collect what pydicom says through ``warnings`` and its logger while reading."""
    messages: list[str] = []
    handler = _CollectLog()
    logger = logging.getLogger("pydicom")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        logger.removeHandler(handler)
        messages.extend(str(w.message) for w in caught)
        messages.extend(handler.messages)


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A dataset written without preamble or meta starts with a group 0002 or 0008 tag."""
    if len(head) < 8:
        return False
    group_le = struct.unpack("<H", head[:2])[0]
    group_be = struct.unpack(">H", head[:2])[0]
    return group_le in (0x0002, 0x0008) or group_be in (0x0002, 0x0008)


def read_header(fp: IO[bytes], file_size: int, name: str) -> InstanceHeader:
    """Parse and validate one file's header; ``fp`` is positioned at its start.

    Raises ``RejectedFile`` with a one-line reason for anything that must not be
    archived: not DICOM, unreadable, truncated, a DICOMDIR, a missing UID.
    """
    if file_size == 0:
        raise RejectedFile(name, "empty file")
    if isinstance(fp, io.BytesIO):
        # getvalue() shares the buffer of a BytesIO made from bytes: no copy.
        fast = _fast_header(fp.getvalue(), file_size)
        if fast is not None:
            return fast
    head = fp.read(132)
    fp.seek(0)
    force = False
    if head[128:132] != b"DICM":
        if not _looks_like_raw_dataset(head):
            raise RejectedFile(name, "not a DICOM file (no DICM prefix)")
        force = True
    dataset = _parse(fp, name, force)
    transfer_syntax = _transfer_syntax(dataset)
    if transfer_syntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        # Deflated data is parsed from an inflated copy; zlib already refuses a cut stream.
        stopped_at = fp.tell()
        _check_last_element_complete(dataset, file_size, name)
        if stopped_at < file_size:
            _check_pixel_data_complete(
                fp,
                stopped_at,
                file_size,
                lambda: _expected_native_length(dataset),
                transfer_syntax,
                name,
            )
    with warnings.catch_warnings():
        # Invalid values (an IS of '1A') are kept out of the index, not fatal.
        warnings.simplefilter("ignore")
        return _header_from(dataset, transfer_syntax, name)


def _parse(fp: IO[bytes], name: str, force: bool) -> Dataset:
    import pydicom
    from pydicom.errors import InvalidDicomError

    with _pydicom_complaints() as complaints:
        try:
            dataset = pydicom.dcmread(fp, stop_before_pixels=True, force=force)
        except InvalidDicomError as exc:
            raise RejectedFile(name, f"not a DICOM file ({_one_line(str(exc))})") from exc
        except (EOFError, struct.error) as exc:
            raise RejectedFile(name, "truncated: file ends inside the header") from exc
        except Exception as exc:  # pydicom raises many types on malformed input
            raise RejectedFile(name, f"unreadable DICOM: {_one_line(str(exc))}") from exc
    for message in complaints:
        if any(hint in message.lower() for hint in _TRUNCATION_HINTS):
            message = message.split(" found in file")[0]
            raise RejectedFile(name, f"truncated: {_one_line(message)}")
    if len(dataset) == 0:
        raise RejectedFile(name, "not a DICOM file (no data elements)")
    return dataset


def _transfer_syntax(dataset: Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if uid:
        return uid
    is_implicit, is_little = dataset.original_encoding
    if is_implicit:
        return IMPLICIT_VR_LITTLE_ENDIAN
    return EXPLICIT_VR_LITTLE_ENDIAN if is_little is not False else EXPLICIT_VR_BIG_ENDIAN


def _check_last_element_complete(dataset: Dataset, file_size: int, name: str) -> None:
    """pydicom reads a short final value without complaint; compare with the file size."""
    from pydicom.dataelem import RawDataElement

    tags = list(dataset.keys())
    if not tags:
        return
    # get_item returns the raw element as read; its type hints claim otherwise.
    last: object = dataset.get_item(max(tags))
    if isinstance(last, RawDataElement) and last.length != _UNDEFINED:
        end = last.value_tell + last.length
        if end > file_size:
            raise RejectedFile(
                name, f"truncated: element {last.tag} needs {end - file_size} more bytes"
            )


def _element_header(
    fp: IO[bytes], offset: int, endian: str, name: str
) -> tuple[int, int, int] | None:
    """(tag, value length, value start) of the element at ``offset``; None at EOF."""
    fp.seek(offset)
    head = fp.read(8)
    if not head:
        return None
    if len(head) < 8:
        raise RejectedFile(name, f"truncated: file ends inside an element header at byte {offset}")
    group, element = struct.unpack(endian + "HH", head[:4])
    tag = (group << 16) | element
    # Files lie about their encoding (explicit VR declared, implicit written); the
    # bytes themselves say which: explicit VR puts two capital letters after the tag.
    explicit = head[4:6].isalpha() and head[4:6].isupper()
    if not explicit or tag in (_ITEM, _SEQUENCE_DELIMITER):
        return tag, struct.unpack(endian + "L", head[4:8])[0], offset + 8
    if head[4:6] in _LONG_VRS:
        rest = fp.read(4)
        if len(rest) < 4:
            raise RejectedFile(name, f"truncated: file ends inside an element header at {offset}")
        return tag, struct.unpack(endian + "L", rest)[0], offset + 12
    return tag, struct.unpack(endian + "H", head[6:8])[0], offset + 8


def _check_pixel_data_complete(
    fp: IO[bytes],
    offset: int,
    file_size: int,
    expected_length: Callable[[], int | None],
    transfer_syntax: str,
    name: str,
) -> None:
    """Prove the Pixel Data element, and every top-level element after it, is whole."""
    endian = "<" if transfer_syntax != EXPLICIT_VR_BIG_ENDIAN else ">"
    position = offset
    while position < file_size:
        found = _element_header(fp, position, endian, name)
        if found is None:
            return
        tag, length, value_start = found
        if length == _UNDEFINED:
            if tag not in _PIXEL_TAGS:
                return  # an undefined-length sequence after the pixels: pydicom's concern
            position = _fragments_end(fp, value_start, file_size, name)
            continue
        if value_start + length > file_size:
            missing = value_start + length - file_size
            what = "Pixel Data" if tag in _PIXEL_TAGS else f"element {tag:08X}"
            raise RejectedFile(name, f"truncated: {what} is {missing} bytes short")
        if tag in _PIXEL_TAGS:
            expected = expected_length()
            if expected is not None and length < expected:
                raise RejectedFile(
                    name, f"truncated: Pixel Data holds {length} bytes, the image needs {expected}"
                )
        position = value_start + length


def _fragments_end(fp: IO[bytes], start: int, file_size: int, name: str) -> int:
    """Walk encapsulated fragments to the Sequence Delimitation Item; return the end."""
    position = start
    while True:
        fp.seek(position)
        head = fp.read(8)
        if len(head) < 8:
            raise RejectedFile(name, "truncated: encapsulated Pixel Data ends before its delimiter")
        group, element, length = struct.unpack("<HHL", head)
        tag = (group << 16) | element
        if tag == _SEQUENCE_DELIMITER:
            return position + 8
        if tag != _ITEM or length == _UNDEFINED:
            raise RejectedFile(name, f"corrupt encapsulated Pixel Data at byte {position}")
        position += 8 + length
        if position > file_size:
            raise RejectedFile(name, "truncated: a Pixel Data fragment is cut short")


def _int_attr(dataset: Dataset, keyword: str, default: int | None = None) -> int | None:
    value = dataset.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _expected_native_length(dataset: Dataset) -> int | None:
    return _native_length(
        _int_attr(dataset, "Rows"),
        _int_attr(dataset, "Columns"),
        _int_attr(dataset, "BitsAllocated"),
        _int_attr(dataset, "SamplesPerPixel", 1),
        _int_attr(dataset, "NumberOfFrames", 1),
        _text(dataset, "PhotometricInterpretation"),
    )


def _native_length(
    rows: int | None,
    columns: int | None,
    bits: int | None,
    samples: int | None,
    frames: int | None,
    photometric: str,
) -> int | None:
    if not rows or not columns or not bits:
        return None
    samples = samples or 1
    frames = frames or 1
    bit_count = rows * columns * samples * frames * bits
    if photometric == "YBR_FULL_422":
        # Chroma is subsampled horizontally: two values per pixel instead of three.
        bit_count = bit_count * 2 // 3
    return (bit_count + 7) // 8


def _text(dataset: Dataset, keyword: str) -> str:
    try:
        value: Any = dataset.get(keyword)
    except Exception:  # a value pydicom cannot convert is kept out, not fatal
        return ""
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip(" \x00")


#: InstanceHeader's descriptive fields: (attribute keyword, tag). Both readers fill
#: them through this one table.
_TEXT_FIELDS = {
    "patient_id": ("PatientID", 0x00100020),
    "patient_name": ("PatientName", 0x00100010),
    "patient_birth_date": ("PatientBirthDate", 0x00100030),
    "patient_sex": ("PatientSex", 0x00100040),
    "study_date": ("StudyDate", 0x00080020),
    "study_time": ("StudyTime", 0x00080030),
    "study_description": ("StudyDescription", 0x00081030),
    "accession_number": ("AccessionNumber", 0x00080050),
    "study_id": ("StudyID", 0x00200010),
    "referring_physician": ("ReferringPhysicianName", 0x00080090),
    "modality": ("Modality", 0x00080060),
    "series_description": ("SeriesDescription", 0x0008103E),
    "body_part": ("BodyPartExamined", 0x00180015),
}
_INTEGER_FIELDS = {
    "series_number": ("SeriesNumber", 0x00200011),
    "instance_number": ("InstanceNumber", 0x00200013),
}


def _build_header(
    uids: tuple[str, str, str, str],
    transfer_syntax: str,
    text: Callable[[str, int], str],
    integer: Callable[[str, int], int | None],
) -> InstanceHeader:
    """``uids``: SOP Instance, SOP Class, Study Instance, Series Instance."""
    fields: dict[str, Any] = {field: text(*where) for field, where in _TEXT_FIELDS.items()}
    fields.update((field, integer(*where)) for field, where in _INTEGER_FIELDS.items())
    return InstanceHeader(
        sop_instance_uid=uids[0],
        sop_class_uid=uids[1],
        study_instance_uid=uids[2],
        series_instance_uid=uids[3],
        transfer_syntax_uid=transfer_syntax,
        **fields,
    )


def _header_from(dataset: Dataset, transfer_syntax: str, name: str) -> InstanceHeader:
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS:
        raise RejectedFile(name, "a DICOMDIR is a media directory, not an instance")
    sop_instance_uid = _text(dataset, "SOPInstanceUID")
    study_uid = _text(dataset, "StudyInstanceUID")
    series_uid = _text(dataset, "SeriesInstanceUID")
    missing = [
        label
        for label, value in (
            ("SOP Instance UID", sop_instance_uid),
            ("Study Instance UID", study_uid),
            ("Series Instance UID", series_uid),
        )
        if not value
    ]
    if missing:
        raise RejectedFile(name, "missing " + ", ".join(missing))
    sop_class_uid = _text(dataset, "SOPClassUID")
    if not sop_class_uid and meta is not None:
        sop_class_uid = str(meta.get("MediaStorageSOPClassUID", "") or "")
    return _build_header(
        (sop_instance_uid, sop_class_uid, study_uid, series_uid),
        transfer_syntax,
        lambda keyword, _tag: _text(dataset, keyword),
        lambda keyword, _tag: _int_attr(dataset, keyword),
    )


# -- the fast path ---------------------------------------------------------------
#
# Most files are plain: a Part 10 preamble, a little-endian transfer syntax, a
# character set whose decoding is one codec, single values and defined lengths.
# For those the header is walked here, reading only the attributes the index keeps
# (about 30x cheaper than building a pydicom Dataset and converting its values).
# Anything else (deflate, big endian, no preamble, a sequence of undefined length,
# an unexpected VR, ISO 2022 text, a multi-valued or unparsable value, any sign of
# truncation, a DICOMDIR, a missing UID) answers None, and the pydicom path above
# decides, so outcomes and reasons are exactly those of the pydicom path.

_TS_IMPLICIT = IMPLICIT_VR_LITTLE_ENDIAN
_FAST_TRANSFER_SYNTAXES = re.compile(
    r"1\.2\.840\.10008\.1\.2(\.1|\.4\.\d+|\.5)?"
)  # implicit/explicit little endian, JPEG family, RLE: all little endian, not deflated
_FAST_CHARSETS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1"}
_FAST_CHARSETS["ISO_IR 192"] = "utf_8"
_TEXT_VRS = {"SH", "LO", "PN", "ST", "LT", "UC", "UT"}
_EXPLICIT_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST",
    b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}  # fmt: skip
_INTEGER = re.compile(r"[+-]?[0-9]+")
_UID_CHARS = re.compile(r"[0-9.]*")

#: The attributes the index keeps (and those the Pixel Data check needs): tag -> VR.
_WANTED = {
    0x00080005: "CS",  # Specific Character Set
    0x00080016: "UI",  # SOP Class UID
    0x00080018: "UI",  # SOP Instance UID
    0x00080020: "DA",  # Study Date
    0x00080030: "TM",  # Study Time
    0x00080050: "SH",  # Accession Number
    0x00080060: "CS",  # Modality
    0x00080090: "PN",  # Referring Physician's Name
    0x00081030: "LO",  # Study Description
    0x0008103E: "LO",  # Series Description
    0x00100010: "PN",  # Patient's Name
    0x00100020: "LO",  # Patient ID
    0x00100030: "DA",  # Patient's Birth Date
    0x00100040: "CS",  # Patient's Sex
    0x00180015: "CS",  # Body Part Examined
    0x0020000D: "UI",  # Study Instance UID
    0x0020000E: "UI",  # Series Instance UID
    0x00200010: "SH",  # Study ID
    0x00200011: "IS",  # Series Number
    0x00200013: "IS",  # Instance Number
    0x00280002: "US",  # Samples per Pixel
    0x00280004: "CS",  # Photometric Interpretation
    0x00280008: "IS",  # Number of Frames
    0x00280010: "US",  # Rows
    0x00280011: "US",  # Columns
    0x00280100: "US",  # Bits Allocated
}
_UNPACK_TAG = struct.Struct("<HH").unpack_from
_UNPACK_U16 = struct.Struct("<H").unpack_from
_UNPACK_U32 = struct.Struct("<L").unpack_from


class _NotFast(Exception):
    """This file needs the pydicom path."""


def _fast_header(data: bytes, file_size: int) -> InstanceHeader | None:
    if len(data) != file_size:
        return None
    try:
        return _fast_parse(data)
    except (_NotFast, struct.error, UnicodeDecodeError, ValueError, IndexError):
        return None


def _walk(
    data: bytes, offset: int, implicit: bool, group_limit: int | None
) -> tuple[dict[int, tuple[str, bytes]], int]:
    """Top-level elements from ``offset`` up to Pixel Data, the end, or the group limit."""
    found: dict[int, tuple[str, bytes]] = {}
    end = len(data)
    while offset < end:
        if offset + 8 > end:
            raise _NotFast
        group, element = _UNPACK_TAG(data, offset)
        if group_limit is not None and group != group_limit:
            break
        tag = (group << 16) | element
        if tag in _PIXEL_TAGS:
            return found, offset
        if group == 0x0002 and group_limit is None:
            raise _NotFast  # meta elements inside the dataset: let pydicom judge
        if implicit:
            vr = ""
            if data[offset + 4 : offset + 6] in _EXPLICIT_VRS:
                raise _NotFast  # declared implicit, looks explicit
            length = _UNPACK_U32(data, offset + 4)[0]
            start = offset + 8
        else:
            raw_vr = data[offset + 4 : offset + 6]
            if raw_vr not in _EXPLICIT_VRS:
                raise _NotFast
            vr = raw_vr.decode()
            if raw_vr in _LONG_VRS:
                length = _UNPACK_U32(data, offset + 8)[0]
                start = offset + 12
            else:
                length = _UNPACK_U16(data, offset + 6)[0]
                start = offset + 8
        if length == _UNDEFINED:
            raise _NotFast  # sequences of undefined length: pydicom walks them
        offset = start + length
        if offset > end:
            raise _NotFast  # cut short: pydicom's path names the reason
        expected_vr = _WANTED.get(tag)
        if expected_vr is not None:
            if vr and vr != expected_vr:
                raise _NotFast
            found[tag] = (expected_vr, data[start:offset])
    return found, offset


def _fast_parse(data: bytes) -> InstanceHeader | None:
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    meta, offset = _walk(data, 132, implicit=False, group_limit=0x0002)
    del meta  # the meta values the index needs are read below, by hand
    meta_values = _meta_values(data)
    transfer_syntax = meta_values.get(0x00020010, "")
    if not _FAST_TRANSFER_SYNTAXES.fullmatch(transfer_syntax):
        return None
    if meta_values.get(0x00020002, "") == DICOMDIR_SOP_CLASS:
        return None
    found, stopped_at = _walk(data, offset, transfer_syntax == _TS_IMPLICIT, None)
    if not found and stopped_at == offset:
        return None
    charset = _value(found, 0x00080005, "latin_1")
    encoding = _FAST_CHARSETS.get(charset)
    if encoding is None:
        return None

    def text(tag: int) -> str:
        return _value(found, tag, encoding)

    def integer(tag: int) -> int | None:
        value = text(tag)
        if not value:
            return None
        if not _INTEGER.fullmatch(value):
            raise _NotFast
        return int(value)

    def unsigned(tag: int) -> int | None:
        item = found.get(tag)
        if item is None or not item[1]:
            return None
        if len(item[1]) != 2:
            raise _NotFast
        return int(_UNPACK_U16(item[1])[0])

    if stopped_at < len(data):
        expected = _native_length(
            unsigned(0x00280010),
            unsigned(0x00280011),
            unsigned(0x00280100),
            unsigned(0x00280002),
            integer(0x00280008),
            text(0x00280004),
        )
        try:
            _check_pixel_data_complete(
                io.BytesIO(data), stopped_at, len(data), lambda: expected, transfer_syntax, ""
            )
        except RejectedFile:
            return None
    sop_instance_uid = text(0x00080018)
    study_uid = text(0x0020000D)
    series_uid = text(0x0020000E)
    if not (sop_instance_uid and study_uid and series_uid):
        return None
    sop_class_uid = text(0x00080016) or meta_values.get(0x00020002, "")
    return _build_header(
        (sop_instance_uid, sop_class_uid, study_uid, series_uid),
        transfer_syntax,
        lambda _keyword, tag: text(tag),
        lambda _keyword, tag: integer(tag),
    )


def _meta_values(data: bytes) -> dict[int, str]:
    """Transfer Syntax and Media Storage SOP Class UIDs from the meta group (explicit LE)."""
    values: dict[int, str] = {}
    offset = 132
    while offset + 8 <= len(data):
        group, element = _UNPACK_TAG(data, offset)
        if group != 0x0002:
            break
        raw_vr = data[offset + 4 : offset + 6]
        if raw_vr in _LONG_VRS:
            length = _UNPACK_U32(data, offset + 8)[0]
            start = offset + 12
        else:
            length = _UNPACK_U16(data, offset + 6)[0]
            start = offset + 8
        offset = start + length
        if element in (0x0002, 0x0010):
            if raw_vr != b"UI":
                raise _NotFast
            value = data[start:offset].decode("ascii").strip(" \x00")
            if not _UID_CHARS.fullmatch(value):
                raise _NotFast
            values[(group << 16) | element] = value
    return values


def _value(found: dict[int, tuple[str, bytes]], tag: int, encoding: str) -> str:
    item = found.get(tag)
    if item is None:
        return ""
    vr, raw = item
    if b"\\" in raw:
        raise _NotFast  # multiple values: pydicom's MultiValue rules apply
    if vr == "PN" and b"=" in raw:
        raise _NotFast  # ideographic/phonetic groups
    text = raw.decode(encoding if vr in _TEXT_VRS else "latin_1")
    return text.strip(" \x00")


# -- reading a whole file for comparison -------------------------------------------
#
# A conflict (same SOP Instance UID, different bytes) is explained by comparing the
# two files. Their headers are read as pydicom reads them; the elements from Pixel
# Data on are only walked, their values streamed through SHA-256 and never held.


@dataclass(frozen=True, slots=True)
class ComparableFile:
    """One file read for comparison with another."""

    #: Every element before Pixel Data, with ``file_meta``.
    dataset: Dataset
    transfer_syntax: str
    #: The 128 bytes before ``DICM`` (empty for a file without them).
    preamble: bytes
    #: tag -> (value length, SHA-256) of each top-level element from Pixel Data on.
    tail: dict[int, tuple[int, str]]


#: The tail key for bytes after the last element that do not make an element.
TRAILING = 0xFFFFFFFF


def read_for_comparison(path: Path) -> ComparableFile:
    """Read ``path`` for comparison; raises ``RejectedFile`` or ``OSError``.

    Memory holds the header, never the pixel values, except for a deflated file,
    which (as when it was imported) is inflated whole.
    """
    name = str(path)
    with open(path, "rb") as fp:
        file_size = os.fstat(fp.fileno()).st_size
        head = fp.read(132)
        fp.seek(0)
        force = head[128:132] != b"DICM"
        if force and not _looks_like_raw_dataset(head):
            raise RejectedFile(name, "not a DICOM file (no DICM prefix)")
        dataset = _parse(fp, name, force)
        transfer_syntax = _transfer_syntax(dataset)
        preamble = b"" if force else head[:128]
        if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            fp.seek(0)
            dataset, tail = _deflated_tail(fp, name, force)
        else:
            tail = _tail_digests(fp, fp.tell(), file_size, transfer_syntax, name)
    return ComparableFile(dataset, transfer_syntax, preamble, tail)


def _tail_digests(
    fp: IO[bytes], offset: int, file_size: int, transfer_syntax: str, name: str
) -> dict[int, tuple[int, str]]:
    endian = "<" if transfer_syntax != EXPLICIT_VR_BIG_ENDIAN else ">"
    tail: dict[int, tuple[int, str]] = {}
    position = offset
    while position < file_size:
        try:
            found = _element_header(fp, position, endian, name)
        except RejectedFile:
            found = None
        if found is None:
            # Bytes too few for an element header: kept as one value under TRAILING.
            tail[TRAILING] = (file_size - position, _digest(fp, position, file_size))
            break
        tag, length, value_start = found
        value_end: int | None = None
        if length != _UNDEFINED:
            value_end = next_position = value_start + length
        elif tag in _PIXEL_TAGS:
            try:
                next_position = _fragments_end(fp, value_start, file_size, name)
                value_end = next_position - 8  # without the delimiter, as pydicom reads it
            except RejectedFile:
                pass
        if value_end is None or value_end > file_size:
            # Unwalkable (a sequence after the pixels, corrupt fragments, cut short):
            # the rest of the file, as one value of this element.
            tail[tag] = (file_size - value_start, _digest(fp, value_start, file_size))
            break
        tail[tag] = (value_end - value_start, _digest(fp, value_start, value_end))
        position = next_position
    return tail


def _digest(fp: IO[bytes], start: int, end: int) -> str:
    digest = hashlib.sha256()
    fp.seek(start)
    left = end - start
    while left > 0:
        chunk = fp.read(min(left, 1024 * 1024))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


def _deflated_tail(
    fp: IO[bytes], name: str, force: bool
) -> tuple[Dataset, dict[int, tuple[int, str]]]:
    """A deflated file read whole; its elements from Pixel Data on moved into the tail."""
    import pydicom

    with _pydicom_complaints():
        try:
            dataset = pydicom.dcmread(fp, force=force)
        except Exception as exc:  # pydicom raises many types on malformed input
            raise RejectedFile(name, f"unreadable DICOM: {_one_line(str(exc))}") from exc
    tail: dict[int, tuple[int, str]] = {}
    tags = list(dataset.keys())  # iterating a Dataset gives elements, not tags
    pixels = [tag for tag in tags if int(tag) in _PIXEL_TAGS]
    for tag in [t for t in tags if pixels and t >= min(pixels)]:
        raw: Any = dataset.get_item(tag)
        value = getattr(raw, "value", None)
        if not isinstance(value, bytes):
            value = b""  # a sequence after the pixels: compared no further
        tail[int(tag)] = (len(value), hashlib.sha256(value).hexdigest())
        del dataset[tag]
    return dataset, tail
