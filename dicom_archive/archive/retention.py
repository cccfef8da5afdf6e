"""Retention: which studies the rules let go, and the studies and patients no rule
may touch.

Protection lives in the index (``protect``/``unprotect``, each audited) and may also
be listed in the daemon's config; both are honoured by retention and by ``delete``.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicom_archive.archive.audit import PROTECT, UNPROTECT, append_audit
from dicom_archive.archive.index import now_iso
from dicom_archive.archive.store import Archive
from dicom_archive.errors import UsageError

KINDS = ("study", "patient")


@dataclass(frozen=True, slots=True)
class ProtectedItem:
    kind: str
    value: str
    reason: str
    at: str


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise UsageError(f"protect what? {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def protect(archive: Archive, kind: str, value: str, *, reason: str | None = None) -> bool:
    """Protect a study (by Study Instance UID) or a patient (by Patient ID); False when
    it already was. It need not be in the archive yet: protection can come first."""
    with archive.index.write() as connection:
        cursor = connection.execute(
            "INSERT OR IGNORE INTO protected(kind, value, reason, at) VALUES (?, ?, ?, ?)",
            (_kind(kind), value, reason or "", now_iso()),
        )
        added = cursor.rowcount == 1
    if added:
        append_audit(archive.root, PROTECT, selection=f"{kind} {value}", count=1, reason=reason)
    return added


def unprotect(archive: Archive, kind: str, value: str, *, reason: str | None = None) -> bool:
    with archive.index.write() as connection:
        cursor = connection.execute(
            "DELETE FROM protected WHERE kind = ? AND value = ?", (_kind(kind), value)
        )
        removed = cursor.rowcount == 1
    if removed:
        append_audit(archive.root, UNPROTECT, selection=f"{kind} {value}", count=1, reason=reason)
    return removed


def protected_items(archive: Archive) -> list[ProtectedItem]:
    return [
        ProtectedItem(*row)
        for row in archive.index.connection.execute(
            "SELECT kind, value, reason, at FROM protected ORDER BY kind, value"
        )
    ]
