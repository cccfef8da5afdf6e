"""structlog set-up: readable on a terminal, JSON lines otherwise (journald).

Values that come from files (names, UIDs) may hold control characters; they are
stripped here so hostile metadata cannot forge a log line or upset a terminal.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

# structlog (and the asyncio it imports, about 70 ms) is imported by the functions
# that use it: commands that only print, such as `import`, never pay for it.
from dicom_archive.text import strip_control

# syslog priorities, for journald's "<N>" line prefix
_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


def _strip_control_chars(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, str) and key != "exception":
            event_dict[key] = strip_control(value)
    return event_dict


class _JournalPrefixRenderer:
    """JSON for journald, prefixed with the syslog priority so levels survive."""

    def __init__(self) -> None:
        import structlog

        self._json = structlog.processors.JSONRenderer(sort_keys=False)

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        level = str(event_dict.get("level", "info"))
        return f"<{_PRIORITY.get(level, 6)}>" + str(self._json(logger, method, event_dict))


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """``fmt``: ``auto`` (console on a terminal, JSON otherwise), ``console`` or ``json``."""
    import structlog

    out = stream if stream is not None else sys.stdout
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _strip_control_chars,
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        shared.append(structlog.processors.dict_tracebacks)
        renderer = (
            _JournalPrefixRenderer()
            if os.environ.get("JOURNAL_STREAM")
            else structlog.processors.JSONRenderer()
        )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None) -> Any:
    import structlog

    return structlog.get_logger(name) if name else structlog.get_logger()
