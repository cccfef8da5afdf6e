"""Where things live in an archive, and how attribute values become safe path parts.

Attribute values come from files we do not control: a Patient ID of ``../../etc``
must never name a folder outside the archive, and two different raw values must
never share a folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dicom_archive.archive.records import InstanceHeader

INDEX_NAME = "archive.db"
SNAPSHOT_NAME = "archive_index.json"
DATA_DIR = "data"
#: Temporary copies live here, on the archive's own filesystem, so that a link to
#: the final name is atomic. Names carry the writer's pid so stale ones can be told.
TMP_DIR = "tmp"
TMP_SUFFIX = ".part"
QUARANTINE_DIR = "quarantine"

UNKNOWN_PATIENT = "UNKNOWN"
MAX_COMPONENT = 64
_HASH_CHARS = 8
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _short_hash(raw: str) -> str:
    import hashlib  # here, not at the top: commands that never name a file skip OpenSSL

    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]


def safe_component(raw: str) -> str:
    """A path component for ``raw``: only ``A-Z a-z 0-9 . _ -``, never empty, ``.``
    or ``..``, never hidden, at most ``MAX_COMPONENT`` characters.

    When the result differs from ``raw`` a short hash of ``raw`` is appended, so
    different raw values never collide (the hash keeps ``a/b`` and ``a_b`` apart).
    """
    cleaned = _UNSAFE.sub("_", raw)
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    if cleaned == raw and cleaned and len(cleaned) <= MAX_COMPONENT:
        return cleaned
    keep = MAX_COMPONENT - _HASH_CHARS - 1
    return f"{cleaned[:keep]}_{_short_hash(raw)}"


def patient_component(patient_id: str) -> str:
    """``UNKNOWN`` for an empty Patient ID; a real ID spelt ``UNKNOWN`` gets a hash
    suffix, so it never shares the folder of the patients without an ID."""
    if not patient_id.strip():
        return UNKNOWN_PATIENT
    if patient_id == UNKNOWN_PATIENT:
        return f"{UNKNOWN_PATIENT}_{_short_hash(patient_id)}"
    return safe_component(patient_id)


def relative_instance_path(header: InstanceHeader) -> str:
    """``data/PATIENT/STUDY/SERIES/SOP.dcm`` relative to the archive root (POSIX)."""
    parts = (
        DATA_DIR,
        patient_component(header.patient_id),
        safe_component(header.study_instance_uid),
        safe_component(header.series_instance_uid),
        safe_component(header.sop_instance_uid) + ".dcm",
    )
    return "/".join(parts)


@dataclass(frozen=True, slots=True)
class ArchivePaths:
    """The named places inside one archive root."""

    root: Path

    @property
    def index(self) -> Path:
        return self.root / INDEX_NAME

    @property
    def snapshot(self) -> Path:
        return self.root / SNAPSHOT_NAME

    @property
    def data(self) -> Path:
        return self.root / DATA_DIR

    @property
    def tmp(self) -> Path:
        return self.root / TMP_DIR

    @property
    def quarantine(self) -> Path:
        return self.root / QUARANTINE_DIR

    def absolute(self, relative: str) -> Path:
        """The absolute path of an archive-relative path taken from the index.

        Refuses anything that would resolve outside the archive, whatever the index says.
        """
        candidate = (self.root / relative).resolve()
        root = self.root.resolve()
        if not candidate.is_relative_to(root):
            raise ValueError(f"{relative!r} is outside the archive")
        return self.root / relative
