"""DICOM JSON of a file's top level without pydicom's value conversion.

pydicom's ``dcmread`` plus ``to_json_dict`` costs about 1.8 ms for a typical CT
header, most of it building value objects (DSfloat, PersonName, MultiValue) only to
take them apart again. Here the raw elements from pydicom's own element generator are
turned into JSON directly for the common VRs, with pydicom's exact rules (padding
stripped as it strips it, numbers as it converts them); anything else (sequences,
ambiguous or unusual VRs, odd lengths, values that do not parse) is converted by
pydicom, element by element, and a file this reader does not expect (no preamble,
deflated, no meta group length) is left to the caller's pydicom path by returning
None. ``tests/web/test_fastjson.py`` holds it equal to pydicom on every file pydicom
ships.
"""

from __future__ import annotations

import base64
import io
import math
import struct
from collections.abc import Callable
from typing import Any, BinaryIO

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.filereader import data_element_generator

_IMPLICIT = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_STRING_VRS = {"AE", "AS", "CS", "DA", "DT", "TM"}
_TEXT_VRS = {"SH", "LO", "UC"}
_NUMBERS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_BINARY = {"OB", "OD", "OF", "OL", "OV", "OW"}
#: Python codecs for the character sets whose text decodes in one piece.
_SIMPLE_CHARSETS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1",
                    "ISO_IR 192": "utf_8"}  # fmt: skip
_VR_CACHE: dict[int, str | None] = {}


def _dictionary_vr(tag: int) -> str | None:
    if tag not in _VR_CACHE:
        try:
            _VR_CACHE[tag] = str(dictionary_VR(tag))
        except KeyError:
            _VR_CACHE[tag] = None
    return _VR_CACHE[tag]


def read_meta(data: bytes) -> tuple[int, str] | None:
    """Where the data set starts and its transfer syntax, from a Part 10 file's bytes."""
    if len(data) < 144 or data[128:132] != b"DICM" or data[132:138] != b"\x02\x00\x00\x00UL":
        return None
    (group_length,) = struct.unpack_from("<I", data, 140)
    start = 144 + group_length
    position = 144
    syntax = ""
    while position + 8 <= start:
        group, element = struct.unpack_from("<HH", data, position)
        vr = data[position + 4 : position + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL", b"OV"):
            (length,) = struct.unpack_from("<I", data, position + 8)
            value_at = position + 12
        else:
            (length,) = struct.unpack_from("<H", data, position + 6)
            value_at = position + 8
        if group != 2 or length == 0xFFFFFFFF:
            return None
        if element == 0x0010:
            syntax = data[value_at : value_at + length].decode("latin_1").rstrip("\0 ")
        position = value_at + length
    if position != start or not syntax:
        return None
    return start, syntax


def _strings(raw: bytes, codec: str) -> list[str]:
    return raw.decode(codec).rstrip(" \x00").split("\\")


def _fast(elem: RawDataElement, vr: str, codec: str | None, little: bool) -> dict[str, Any] | None:
    value = elem.value
    if value is None or vr in ("SQ", "UN"):
        return None  # sequences, and UN that pydicom re-reads as a known private VR
    if not value:
        return {"vr": vr}
    result = _value(value, vr, codec, little)
    if result is not None and result.get("Value") == [""]:
        return {"vr": vr}  # padding only: empty, as pydicom says
    return result


def _value(value: bytes, vr: str, codec: str | None, little: bool) -> dict[str, Any] | None:
    if vr == "UI":
        items = value.decode("latin_1").rstrip("\0 ").split("\\")
        return {"vr": vr, "Value": items}
    if vr in _STRING_VRS:
        return {"vr": vr, "Value": _strings(value, "latin_1")}
    if vr in _TEXT_VRS:
        if codec is None:
            return None
        return {"vr": vr, "Value": [v.rstrip("\0 ") for v in value.decode(codec).split("\\")]}
    if vr == "PN":
        if codec is None:
            return None
        names = value.rstrip(b"\x00 ").decode(codec).split("\\")
        out = []
        for name in names:
            groups = name.split("=")
            while len(groups) > 1 and not groups[-1]:
                groups.pop()  # "A^B=" has one group, as pydicom reads it
            if not name or len(groups) > 3:
                return None
            entry = {"Alphabetic": groups[0]}
            if len(groups) > 1:
                entry["Ideographic"] = groups[1]
            if len(groups) > 2:
                entry["Phonetic"] = groups[2]
            out.append(entry)
        return {"vr": vr, "Value": out}
    if vr in ("IS", "DS"):
        numbers: list[int | float | None] = []
        for text in _strings(value, "latin_1"):
            text = text.strip()
            if not text:
                return None
            try:
                number = int(text) if vr == "IS" else float(text)
            except ValueError:
                return None
            if isinstance(number, float) and not math.isfinite(number):
                return None
            numbers.append(number)
        return {"vr": vr, "Value": numbers}
    code = _NUMBERS.get(vr)
    if code is not None:
        size = struct.calcsize(code)
        if len(value) % size:
            return None
        values = list(struct.unpack(("<" if little else ">") + code * (len(value) // size), value))
        if vr in ("FL", "FD"):
            if not all(math.isfinite(v) for v in values):
                return None
            values = [float(v) for v in values]
        return {"vr": vr, "Value": values}
    if vr in _BINARY:
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode()}
    return None


def _first(out: dict[str, Any], key: str, default: int) -> int:
    values = out.get(key, {}).get("Value") or [default]
    return int(values[0])


def _resolve(vr: str, tag: int, out: dict[str, Any]) -> str | None:
    """The VR of an ambiguous dictionary entry, as pydicom's reader settles it."""
    if vr == "US or SS":
        return "SS" if _first(out, "00280103", 0) == 1 else "US"
    if vr == "OB or OW":
        if tag == 0x7FE00010:
            return "OW" if _first(out, "00280100", 16) > 8 else "OB"
        return "OW"
    return None


def _charset(data: bytes, start: int, implicit: bool, little: bool) -> list[str]:
    """The values of Specific Character Set (0008,0005), read before the data set is:
    the text after it depends on them."""
    head = data[start : start + 12]
    if little and len(head) >= 8 and head[:4] == b"\x08\x00\x05\x00":
        # Where it nearly always is: the first element.
        if implicit:
            (length,) = struct.unpack_from("<I", head, 4)
            at = start + 8
        else:
            (length,) = struct.unpack_from("<H", head, 6)
            at = start + 8
        value = data[at : at + length]
        return [v.strip() for v in value.decode("latin_1").split("\\")] if value else []
    values: list[str] = []
    probe = io.BytesIO(data)
    probe.seek(start)
    for elem in data_element_generator(
        probe, implicit, little, stop_when=lambda tag, vr, length: tag > 0x00080005
    ):
        if elem.tag == 0x00080005 and isinstance(elem, RawDataElement) and elem.value:
            values = [v.strip() for v in elem.value.decode("latin_1").split("\\")]
    return values


def fast_instance_json(
    fp: BinaryIO,
    bulk: Callable[[int, str], dict[str, Any] | None],
    threshold: int,
    skip: set[int],
    defer: int = 64 * 1024,
) -> dict[str, Any] | None:
    """The top-level DICOM JSON of the Part 10 file open as ``fp``, or None to let
    pydicom do it. ``bulk(tag, vr)`` gives the JSON that stands for a binary value over
    ``threshold`` bytes (or of undefined length); values over ``defer`` bytes are
    never read."""
    data = fp.read(65536)
    meta = read_meta(data)
    if meta is None:
        return None
    start, syntax = meta
    if syntax == _DEFLATED:
        return None
    implicit, little = syntax == _IMPLICIT, syntax != _BIG_ENDIAN
    charset_values = _charset(data, start, implicit, little)
    codec: str | None = "latin_1"
    if len(charset_values) == 1 or not charset_values:
        codec = _SIMPLE_CHARSETS.get(charset_values[0] if charset_values else "")
    else:
        codec = None
    encodings = convert_encodings(charset_values or ["ISO_IR 6"])
    if len(data) < 65536:
        # The whole file is in hand: parse from memory, not by ~90 small reads a file.
        fp = io.BytesIO(data)
    fp.seek(start)
    out: dict[str, Any] = {}
    for elem in data_element_generator(fp, implicit, little, defer_size=defer, encoding=encodings):
        tag = int(elem.tag)
        if tag in skip:
            continue
        key = f"{tag:08X}"
        vr = elem.VR or _dictionary_vr(tag)
        if vr is not None and " or " in vr:
            vr = _resolve(vr, tag, out)
            if vr is None:
                return None
        if (
            isinstance(elem, RawDataElement)
            and vr in _BINARY | {"UN"}
            and (elem.length == 0xFFFFFFFF or elem.length > threshold or tag == 0x7FE00010)
        ):
            stand_in = bulk(tag, vr)
            if stand_in is None:
                return None
            out[key] = stand_in
            continue
        if vr == "UN" and tag >> 16 & 1:
            return None  # pydicom names its VR from the private creator: its path
        fast = None
        if isinstance(elem, RawDataElement) and vr is not None:
            try:
                fast = _fast(elem, vr, codec, little)
            except (UnicodeDecodeError, struct.error):
                fast = None
        if fast is None:
            try:
                element = (
                    elem
                    if isinstance(elem, DataElement)
                    else convert_raw_data_element(elem, encoding=encodings)
                )
                fast = element.to_json_dict(None, threshold)
            except Exception:
                return None
        out[key] = fast
    return out
