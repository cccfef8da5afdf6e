"""DICOM JSON (PS3.18 F.2) for values taken from the index.

Keys are eight upper-case hex digits; each attribute is ``{"vr": VR}`` plus ``Value``
when it has one (an empty value has no ``Value``, never ``[""]``); PN values are
objects with ``Alphabetic`` / ``Ideographic`` / ``Phonetic`` groups; IS, DS and the
binary integer VRs are JSON numbers.
"""

from __future__ import annotations

from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

_INTEGER_VRS = {"IS", "SS", "US", "SL", "UL", "SV", "UV"}
_FLOAT_VRS = {"DS", "FL", "FD"}
#: VRs whose values are never split at a backslash (PS3.5 6.2: single-valued text).
_SINGLE_TEXT = {"LT", "ST", "UT", "UR"}
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def tag_key(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


def vr_of(keyword: str) -> str:
    vr = str(dictionary_VR(keyword))
    # Ambiguous VRs of the dictionary ("US or SS"): the first is right for every
    # attribute the index keeps.
    return vr.split(" or ")[0]


def person_name(value: str) -> dict[str, str]:
    groups = value.split("=")
    return {name: text for name, text in zip(_PN_GROUPS, groups, strict=False) if text}


def _number(vr: str, text: str) -> int | float | str:
    text = text.strip()
    try:
        if vr in _INTEGER_VRS:
            return int(text)
        number = float(text)
    except ValueError:
        return text  # a malformed value is shown as stated rather than dropped
    return (
        int(number)
        if number.is_integer() and "." not in text and "e" not in text.lower()
        else number
    )


def values_of(vr: str, value: Any) -> list[Any]:
    """The ``Value`` array for a value from the index (a list, str or number)."""
    if value is None or value == "":
        return []
    items: list[Any]
    if isinstance(value, list | tuple):
        items = list(value)
    elif isinstance(value, str) and vr not in _SINGLE_TEXT:
        items = value.split("\\")
    else:
        items = [value]
    out: list[Any] = []
    for item in items:
        if vr == "PN":
            group = person_name(str(item))
            out.append(group if group else None)
        elif vr in _INTEGER_VRS | _FLOAT_VRS:
            out.append(item if isinstance(item, int | float) else _number(vr, str(item)))
        else:
            out.append(item)
    return out


def element(keyword: str, value: Any) -> tuple[str, dict[str, Any]]:
    vr = vr_of(keyword)
    entry: dict[str, Any] = {"vr": vr}
    values = values_of(vr, value)
    if any(v is not None for v in values):
        entry["Value"] = values
    return tag_key(keyword), entry


def dataset(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """keyword -> value into a DICOM JSON object, keys in tag order."""
    pairs = [element(keyword, value) for keyword, value in values.items()]
    return dict(sorted(pairs))
