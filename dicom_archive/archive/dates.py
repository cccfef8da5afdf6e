"""DICOM dates (DA) as the index keeps them: ``YYYYMMDD``.

PS3.5 6.2 still asks readers to accept the retired ACR-NEMA form ``YYYY.MM.DD``;
both forms normalise to the same day, so ranges match either. Anything that is not
a calendar date normalises to ``''``: a study without a usable date never matches
a date or a range (PS3.4 C.2.2.2.5), while the raw value is kept beside it.
"""

from __future__ import annotations

import datetime
import re

_DATE = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")


def normalise_date(value: str) -> str:
    """``YYYYMMDD`` for a value stated as ``YYYYMMDD`` or ``YYYY.MM.DD``; else ``''``."""
    match = _DATE.fullmatch(value.strip(" \x00"))
    if match is None:
        return ""
    year, month, day = match.groups()
    if (match.end(1) + 1 == match.start(2)) != (match.end(2) + 1 == match.start(3)):
        return ""  # one dot but not the other: neither form
    try:
        datetime.date(int(year), int(month), int(day))
    except ValueError:
        return ""
    return year + month + day
