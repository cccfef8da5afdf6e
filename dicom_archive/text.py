"""Control characters out of text taken from files, before it reaches a terminal or a log.

Apart from ``logs`` so that commands which only print need not import structlog.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def strip_control(text: str) -> str:
    return _CONTROL.sub("?", text)
