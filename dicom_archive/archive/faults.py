"""Named crash points for the fault-injection tests.

``DICOM_ARCHIVE_CRASH_AT=<point>`` makes the process SIGKILL itself the moment it
reaches that point, so a test can prove that a crash there loses nothing. The
variable is read once; with it unset, ``crash_point`` is a dictionary lookup.
``DICOM_ARCHIVE_CRASH_AFTER=N`` lets the point pass N times before it fires.
"""

from __future__ import annotations

import os
import signal

ENV_POINT = "DICOM_ARCHIVE_CRASH_AT"
ENV_AFTER = "DICOM_ARCHIVE_CRASH_AFTER"

#: The steps of one import batch, in order (see importer.py).
POINTS = (
    "temp-written",  # temporary copies written, not yet synced
    "temp-synced",  # temporary copies durable
    "linked",  # final names linked, directories not yet synced
    "index-committed",  # rows committed
    "source-removed",  # (daemon) a source removed from incoming
)

_armed = os.environ.get(ENV_POINT, "")
_remaining = int(os.environ.get(ENV_AFTER, "0") or 0)


def crash_point(name: str) -> None:
    global _remaining
    if name != _armed:
        return
    if _remaining > 0:
        _remaining -= 1
        return
    os.kill(os.getpid(), signal.SIGKILL)
