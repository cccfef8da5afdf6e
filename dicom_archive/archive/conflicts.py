"""What differs between an archived file and a conflicting one (same SOP Instance
UID, different bytes), attribute by attribute.

Only conflicts pay for this: both files are read again, their headers compared
element by element (sequences item by item, private elements by tag), and the
elements from Pixel Data on compared by length and a streamed SHA-256. Values are
made safe to show here, once: truncated, control characters escaped.

A diff never turns a conflict into a crash: when either file cannot be read, the
diff says why (``unavailable``) and the conflict is reported as before.
"""

from __future__ import annotations

import hashlib
import unicodedata
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_archive.archive.dicomfile import TRAILING, ComparableFile, read_for_comparison
from dicom_archive.archive.records import AttributeDifference, ConflictDiff
from dicom_archive.errors import RejectedFile

if TYPE_CHECKING:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

#: Differences kept per conflict (the importer's limit; all are counted).
DIFF_LIMIT = 100
#: Attributes named in a one-line summary.
SUMMARY_LIMIT = 3
#: Characters of a value shown, before escaping.
VALUE_LIMIT = 64
#: Sequences nested deeper than this are compared as a whole.
MAX_DEPTH = 8

_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_TRANSFER_SYNTAX_UID = 0x00020010
#: Values of these VRs are described (``<N bytes ...>``, ``<N items>``), not shown.
DESCRIBED_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW"})
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def diff_files(archived: Path, incoming: Path, limit: int = DIFF_LIMIT) -> ConflictDiff:
    """What differs from ``archived`` in ``incoming``: at most ``limit`` attributes
    listed, all counted. Never raises (except for KeyboardInterrupt and the like)."""
    try:
        old = _read(archived, "the archived copy")
        new = _read(incoming, "the incoming file")
        return _compare(old, new, max(0, limit))
    except _Unavailable as exc:
        return ConflictDiff(unavailable=str(exc))
    except Exception as exc:  # a diff is an explanation: it must never fail the import
        return ConflictDiff(unavailable=safe_text(f"{exc.__class__.__name__}: {exc}", 200))


class _Unavailable(Exception):
    pass


def _read(path: Path, what: str) -> ComparableFile:
    try:
        return read_for_comparison(path)
    except FileNotFoundError as exc:
        raise _Unavailable(f"{what} is gone") from exc
    except RejectedFile as exc:
        raise _Unavailable(f"{what}: {safe_text(exc.reason, 200)}") from exc
    except OSError as exc:
        raise _Unavailable(f"{what}: {safe_text(exc.strerror or str(exc), 200)}") from exc


# -- comparing ----------------------------------------------------------------------


class _Found:
    """Differences as they are found: the first ``limit`` kept, all counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept: list[AttributeDifference] = []
        self.total = 0

    def add(self, keyword: str, tag: int, vr: str, archived: str | None, new: str | None) -> None:
        self.total += 1
        if len(self.kept) < self.limit:
            self.kept.append(AttributeDifference(keyword, tag, vr, archived, new))


def _compare(old: ComparableFile, new: ComparableFile, limit: int) -> ConflictDiff:
    found = _Found(limit)
    with warnings.catch_warnings():
        # Invalid values are compared as they are, not reported on stderr.
        warnings.simplefilter("ignore")
        _compare_datasets(old.dataset, new.dataset, "", found, 0)
        _compare_tail(old.tail, new.tail, found)
        _compare_datasets(
            _meta(old.dataset), _meta(new.dataset), "", found, 0, skip=_TRANSFER_SYNTAX_UID
        )
    old_pixels = _pixel_summary(old.tail)
    new_pixels = _pixel_summary(new.tail)
    return ConflictDiff(
        differences=tuple(found.kept),
        total=found.total,
        archived_transfer_syntax=safe_text(old.transfer_syntax),
        incoming_transfer_syntax=safe_text(new.transfer_syntax),
        archived_pixel_bytes=sum(length for length, _ in old_pixels) if old_pixels else None,
        incoming_pixel_bytes=sum(length for length, _ in new_pixels) if new_pixels else None,
        pixel_data_differs=old_pixels != new_pixels,
        preamble_differs=old.preamble != new.preamble,
    )


def _meta(dataset: Dataset) -> Dataset | None:
    return getattr(dataset, "file_meta", None)


def _pixel_summary(tail: dict[int, tuple[int, str]]) -> list[tuple[int, str]]:
    return [tail[tag] for tag in _PIXEL_TAGS if tag in tail]


def _compare_datasets(
    old: Dataset | None,
    new: Dataset | None,
    prefix: str,
    found: _Found,
    depth: int,
    skip: int | None = None,
) -> None:
    old_tags = set(old.keys()) if old is not None else set()
    new_tags = set(new.keys()) if new is not None else set()
    for tag in sorted(old_tags | new_tags):
        if int(tag) == skip:
            continue
        a = _element(old, tag) if tag in old_tags else None
        b = _element(new, tag) if tag in new_tags else None
        _compare_elements(a, b, int(tag), prefix, found, depth)


def _element(dataset: Dataset | None, tag: Any) -> Any:
    """The element, its value converted; the raw element when pydicom cannot convert it."""
    assert dataset is not None
    try:
        return dataset[tag]
    except Exception:
        return dataset.get_item(tag)


def _compare_elements(a: Any, b: Any, tag: int, prefix: str, found: _Found, depth: int) -> None:
    keyword = prefix + _name(a if a is not None else b, tag)
    vr = _vr(a if a is not None else b)
    if a is None or b is None:
        found.add(keyword, tag, vr, _show(a), _show(b))
        return
    a_items, b_items = _items(a), _items(b)
    if a_items is not None and b_items is not None:
        if len(a_items) != len(b_items) or depth >= MAX_DEPTH:
            if len(a_items) != len(b_items) or _differ(a_items, b_items):
                found.add(keyword, tag, "SQ", _show(a), _show(b))
            return
        for index, (item_a, item_b) in enumerate(zip(a_items, b_items, strict=True)):
            _compare_datasets(item_a, item_b, f"{keyword}[{index}].", found, depth + 1)
        return
    if _comparable(a) != _comparable(b):
        found.add(keyword, tag, vr, _show(a), _show(b))


def _differ(a: list[Dataset], b: list[Dataset]) -> bool:
    try:
        return bool(a != b)
    except Exception:
        return True


def _name(element: Any, tag: int) -> str:
    keyword = getattr(element, "keyword", "") or ""
    if not keyword and not (tag >> 16) % 2:
        from pydicom.datadict import keyword_for_tag

        keyword = keyword_for_tag(tag)
    return keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _vr(element: Any) -> str:
    return str(getattr(element, "VR", "") or "UN")


def _items(element: Any) -> list[Dataset] | None:
    """A sequence's items; None when ``element`` is not a (converted) sequence."""
    from pydicom.sequence import Sequence

    value = getattr(element, "value", None)
    return list(value) if isinstance(value, Sequence) else None


def _comparable(element: DataElement) -> tuple[str, object]:
    """What makes two values the same: their bytes, or their full text."""
    value = element.value
    if isinstance(value, bytes | bytearray):
        return ("bytes", bytes(value))
    return ("text", _text(value))


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)  # type: ignore[attr-defined]
    return str(value)


def _show(element: Any) -> str | None:
    """The display form of a value (None: absent)."""
    if element is None:
        return None
    items = _items(element)
    if items is not None:
        return f"<{len(items)} item{'s' if len(items) != 1 else ''}>"
    value = element.value
    if value is None and _vr(element) in DESCRIBED_VRS:
        value = b""  # an empty binary value
    if isinstance(value, bytes | bytearray):
        if _vr(element) not in DESCRIBED_VRS:
            return safe_text(bytes(value).decode("latin-1").strip(" \x00"))
        return _describe_bytes(len(value), hashlib.sha256(value).hexdigest())
    return safe_text(_text(value))


def _describe_bytes(length: int, sha256: str) -> str:
    return f"<{length} byte{'s' if length != 1 else ''}, sha256 {sha256[:12]}>"


def _compare_tail(
    old: dict[int, tuple[int, str]], new: dict[int, tuple[int, str]], found: _Found
) -> None:
    """Elements after the pixels (trailing padding, private groups): by length and hash."""
    for tag in sorted((set(old) | set(new)) - set(_PIXEL_TAGS)):
        a, b = old.get(tag), new.get(tag)
        if a == b:
            continue
        keyword = "(trailing bytes)" if tag == TRAILING else _name(None, tag)
        found.add(
            keyword,
            tag,
            "UN" if tag == TRAILING else _dictionary_vr(tag),
            _describe_bytes(*a) if a is not None else None,
            _describe_bytes(*b) if b is not None else None,
        )


def _dictionary_vr(tag: int) -> str:
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


# -- showing ------------------------------------------------------------------------


def safe_text(text: str, limit: int = VALUE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, control and format characters escaped
    (``\\x1b``, ``\\u202e``), so a value from a file cannot drive a terminal or
    forge a log line."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return "".join(_escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if unicodedata.category(ch) not in _UNSAFE_CATEGORIES:
        return ch
    code = ord(ch)
    return (
        f"\\x{code:02x}"
        if code <= 0xFF
        else f"\\u{code:04x}"
        if code <= 0xFFFF
        else f"\\U{code:08x}"
    )


def show_value(difference: AttributeDifference, value: str | None) -> str:
    """One side of a difference for a person: quoted text, a description, or ``absent``."""
    if value is None:
        return "absent"
    return value if difference.vr in DESCRIBED_VRS else f"'{value}'"


def transfer_syntax_name(uid: str) -> str:
    """``RLE Lossless`` for its UID; the UID itself when pydicom does not know it."""
    if not uid:
        return "none"
    from pydicom.uid import UID

    try:
        name = str(UID(uid).name)
    except Exception:
        return uid
    return name or uid


def summary(diff: ConflictDiff, shown: int = SUMMARY_LIMIT) -> str:
    """One line: ``differs: transfer syntax (...), pixel data (...), PatientName ('A' vs
    'B'), +3 more``, or why there is no diff."""
    if diff.unavailable:
        return f"(diff unavailable: {diff.unavailable})"
    parts = []
    if diff.transfer_syntax_differs:
        parts.append(
            f"transfer syntax ({transfer_syntax_name(diff.archived_transfer_syntax)} vs "
            f"{transfer_syntax_name(diff.incoming_transfer_syntax)})"
        )
    if diff.pixel_data_differs:
        parts.append(f"pixel data ({_pixel_bytes(diff)})")
    for difference in diff.differences[:shown]:
        parts.append(
            f"{difference.keyword} ({show_value(difference, difference.archived)} vs "
            f"{show_value(difference, difference.incoming)})"
        )
    more = diff.total - min(shown, len(diff.differences))
    if more:
        parts.append(f"+{more} more")
    if diff.preamble_differs and not parts:
        parts.append("the preamble")
    if not parts:
        return "differs: no attribute or pixel value (only the encoding: lengths, padding, order)"
    return "differs: " + ", ".join(parts)


def detail_lines(diff: ConflictDiff) -> list[str]:
    """Every kept difference on a line of its own (the long form of ``summary``)."""
    if diff.unavailable:
        return [f"diff unavailable: {diff.unavailable}"]
    lines = []
    if diff.transfer_syntax_differs:
        lines.append(
            f"transfer syntax: {_syntax(diff.archived_transfer_syntax)} vs "
            f"{_syntax(diff.incoming_transfer_syntax)}"
        )
    if diff.pixel_data_differs:
        lines.append(f"pixel data: {_pixel_bytes(diff)}")
    if diff.preamble_differs:
        lines.append("preamble: the 128 bytes before DICM differ")
    for difference in diff.differences:
        lines.append(
            f"{difference.keyword} {difference.tag_text}: "
            f"{show_value(difference, difference.archived)} vs "
            f"{show_value(difference, difference.incoming)}"
        )
    if diff.omitted:
        lines.append(f"+{diff.omitted} more not listed")
    if not lines:
        lines.append("no attribute or pixel value differs (only the encoding)")
    return lines


def _syntax(uid: str) -> str:
    name = transfer_syntax_name(uid)
    return f"{name} ({uid})" if name != uid else uid


def _pixel_bytes(diff: ConflictDiff) -> str:
    def side(count: int | None) -> str:
        return "absent" if count is None else f"{count:,} bytes"

    if diff.archived_pixel_bytes == diff.incoming_pixel_bytes:
        return f"{side(diff.archived_pixel_bytes)} each, different content"
    return f"{side(diff.archived_pixel_bytes)} vs {side(diff.incoming_pixel_bytes)}"


def as_json(diff: ConflictDiff) -> dict[str, Any]:
    """The diff in the JSON shape of ``import --format json``."""
    return {
        "differences": [
            {
                "keyword": d.keyword,
                "tag": d.tag_text,
                "vr": d.vr,
                "archived": d.archived,
                "incoming": d.incoming,
            }
            for d in diff.differences
        ],
        "total": diff.total,
        "transferSyntaxDiffers": diff.transfer_syntax_differs,
        "archivedTransferSyntax": diff.archived_transfer_syntax,
        "incomingTransferSyntax": diff.incoming_transfer_syntax,
        "pixelDataDiffers": diff.pixel_data_differs,
        "archivedPixelBytes": diff.archived_pixel_bytes,
        "incomingPixelBytes": diff.incoming_pixel_bytes,
        "preambleDiffers": diff.preamble_differs,
        "unavailable": diff.unavailable or None,
    }
