"""Value objects passed between the modules of the store."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """What the index keeps of one file's header, decoded to text."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    accession_number: str = ""
    study_id: str = ""
    referring_physician: str = ""
    modality: str = ""
    series_description: str = ""
    series_number: int | None = None
    body_part: str = ""
    instance_number: int | None = None


class Outcome(enum.StrEnum):
    IMPORTED = "imported"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REJECTED = "rejected"
    #: Could not be done now (disk full, permission, index busy); the source is
    #: untouched and a later attempt may succeed.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SourceSignature:
    """What a source looked like when it was read; compared again before removal,
    so a file rewritten during its import is never deleted."""

    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True, slots=True)
class AttributeDifference:
    """One attribute that differs between an archived file and a conflicting one.

    Values are display text, already truncated and with control characters escaped
    (they come from files); None where the attribute is absent. Binary values and
    sequences are described (``<256 bytes>``, ``<3 items>``), not shown.
    """

    #: The attribute keyword, a path into a sequence (``ReferencedImageSequence[0].
    #: ReferencedSOPInstanceUID``), or the tag ``(0009,1001)`` when it has none.
    keyword: str
    tag: int
    vr: str
    archived: str | None
    incoming: str | None

    @property
    def tag_text(self) -> str:
        return f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"


@dataclass(frozen=True, slots=True)
class ConflictDiff:
    """What differs between the archived file and a conflicting incoming one."""

    #: The first differing attributes, dataset before file meta, in tag order.
    differences: tuple[AttributeDifference, ...] = ()
    #: How many attributes differ, including those past the limit.
    total: int = 0
    archived_transfer_syntax: str = ""
    incoming_transfer_syntax: str = ""
    #: Pixel Data byte counts (as stored, compressed or not); None where absent.
    archived_pixel_bytes: int | None = None
    incoming_pixel_bytes: int | None = None
    pixel_data_differs: bool = False
    #: The 128-byte preamble before ``DICM`` differs.
    preamble_differs: bool = False
    #: Why no diff could be made (a file unreadable, gone); empty when it was made.
    unavailable: str = ""

    @property
    def transfer_syntax_differs(self) -> bool:
        return self.archived_transfer_syntax != self.incoming_transfer_syntax

    @property
    def omitted(self) -> int:
        """Differing attributes found but not listed (past the limit)."""
        return self.total - len(self.differences)


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """The one outcome of one input file."""

    source: Path
    outcome: Outcome
    sop_instance_uid: str = ""
    #: Archive-relative path of the archived copy (imported, duplicate, conflict).
    archived_path: str = ""
    size: int = 0
    reason: str = ""
    ms: float = 0.0
    source_signature: SourceSignature | None = None
    #: For a conflict: what differs from the archived file (None otherwise).
    conflict: ConflictDiff | None = None

    @property
    def durable_in_archive(self) -> bool:
        """The source's exact bytes are archived and indexed: it may be removed."""
        return self.outcome in (Outcome.IMPORTED, Outcome.DUPLICATE)


@dataclass(slots=True)
class ImportSummary:
    imported: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    failed: int = 0
    bytes_imported: int = 0
    seconds: float = 0.0

    def add(self, outcome: ImportOutcome) -> None:
        match outcome.outcome:
            case Outcome.IMPORTED:
                self.imported += 1
                self.bytes_imported += outcome.size
            case Outcome.DUPLICATE:
                self.duplicates += 1
            case Outcome.CONFLICT:
                self.conflicts += 1
            case Outcome.REJECTED:
                self.rejected += 1
            case Outcome.FAILED:
                self.failed += 1

    @property
    def total(self) -> int:
        return self.imported + self.duplicates + self.conflicts + self.rejected + self.failed


class FindingKind(enum.StrEnum):
    MISSING = "missing"
    SIZE_MISMATCH = "size_mismatch"
    ORPHANED = "orphaned"
    TEMPORARY = "temporary"
    CONTENT_CHANGED = "content_changed"
    UNREADABLE = "unreadable"
    WRONG_IDENTITY = "wrong_identity"


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    path: str
    detail: str = ""


@dataclass(slots=True)
class CheckReport:
    instances_checked: int = 0
    files_seen: int = 0
    verified: bool = False
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def counts(self) -> dict[str, int]:
        counts = {kind.value: 0 for kind in FindingKind}
        for finding in self.findings:
            counts[finding.kind.value] += 1
        return counts
