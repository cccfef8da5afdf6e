"""Repairing what ``check`` finds, without ever deleting a data file.

A plan is made first (``plan_repair``), shown to the user, then applied
(``apply_repair``), re-checking each item as it goes, since the archive may have
changed meanwhile:

* an orphaned file that is a valid instance not yet indexed is indexed where it
  lies (or linked to its layout path first when it lies outside a series folder);
* an orphan that cannot be read, is not DICOM, or whose SOP Instance UID is
  already archived is moved to ``quarantine/repair-<time>/`` with its path kept;
* an index row whose file is gone is dropped, after its full content is written
  to ``quarantine/repair-log.jsonl`` (fsynced before the row goes);
* temporary copies left by stopped imports are removed (they are never the only
  copy of anything: the source is only removed once its row is committed);
* files whose size, content or identity changed are left alone: no tool can
  tell which bytes are right, so they are reported for a person to decide.
"""

from __future__ import annotations

import enum
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_archive.archive import snapshot
from dicom_archive.archive.fsutil import fsync_path, link_no_replace, make_dirs_durable
from dicom_archive.archive.index import NewInstance, now_iso
from dicom_archive.archive.integrity import stale_temporaries
from dicom_archive.archive.layout import relative_instance_path
from dicom_archive.archive.rebuild import read_archived_file
from dicom_archive.archive.records import CheckReport, FindingKind, InstanceHeader
from dicom_archive.archive.store import Archive
from dicom_archive.errors import RejectedFile

REPAIR_LOG = "repair-log.jsonl"
_INSTANCE_DEPTH = 5

_ROW_DETAILS = """
SELECT i.sop_instance_uid, i.sop_class_uid, i.file_path, i.file_size, i.sha256,
       i.imported_at, se.series_instance_uid, st.study_instance_uid, p.patient_id,
       p.patient_name, st.study_date, se.modality
FROM instances i
JOIN series se ON se.id = i.series_pk
JOIN studies st ON st.id = se.study_pk
JOIN patients p ON p.id = st.patient_pk
WHERE i.file_path = ?
"""
_ROW_KEYS = (
    "sopInstanceUID",
    "sopClassUID",
    "filePath",
    "fileSize",
    "sha256",
    "importDate",
    "seriesInstanceUID",
    "studyInstanceUID",
    "patientID",
    "patientName",
    "studyDate",
    "modality",
)


class Action(enum.StrEnum):
    INDEX = "index"
    MOVE_AND_INDEX = "move-and-index"
    QUARANTINE = "quarantine"
    DROP_ROW = "drop-row"
    REMOVE_TEMPORARY = "remove-temporary"
    LEAVE = "leave"


@dataclass(frozen=True, slots=True)
class RepairStep:
    action: Action
    #: Archive-relative path of the file or row concerned.
    path: str
    detail: str = ""
    #: For MOVE_AND_INDEX: the layout path the file is linked to.
    target: str = ""


@dataclass(frozen=True, slots=True)
class RepairPlan:
    steps: tuple[RepairStep, ...]

    @property
    def actionable(self) -> tuple[RepairStep, ...]:
        return tuple(s for s in self.steps if s.action is not Action.LEAVE)

    @property
    def left(self) -> tuple[RepairStep, ...]:
        return tuple(s for s in self.steps if s.action is Action.LEAVE)


@dataclass(frozen=True, slots=True)
class RepairResult:
    done: tuple[RepairStep, ...]
    #: Steps that could not be done as planned, with the reason.
    failed: tuple[tuple[RepairStep, str], ...]
    log_path: str
    quarantine_path: str


_LEAVE_REASONS = {
    FindingKind.SIZE_MISMATCH: "the file's size differs from import: restore it from a backup",
    FindingKind.CONTENT_CHANGED: "the file's bytes differ from import: restore it from a backup",
    FindingKind.UNREADABLE: "the archived file cannot be read: restore it from a backup",
    FindingKind.WRONG_IDENTITY: "the file's UIDs differ from its row: restore it from a backup",
}


def plan_repair(archive: Archive, report: CheckReport) -> RepairPlan:
    """What ``apply_repair`` would do about each finding of ``report``."""
    steps: list[RepairStep] = []
    planned_sops: dict[str, str] = {}
    for finding in report.findings:
        match finding.kind:
            case FindingKind.ORPHANED:
                steps.append(_plan_orphan(archive, finding.path, planned_sops))
            case FindingKind.MISSING:
                steps.append(RepairStep(Action.DROP_ROW, finding.path, "its file is gone"))
            case FindingKind.TEMPORARY:
                steps.append(
                    RepairStep(Action.REMOVE_TEMPORARY, finding.path, "left by a stopped import")
                )
            case kind:
                steps.append(RepairStep(Action.LEAVE, finding.path, _LEAVE_REASONS[kind]))
    return RepairPlan(tuple(steps))


def _plan_orphan(archive: Archive, relative: str, planned: dict[str, str]) -> RepairStep:
    path = archive.root / relative
    if path.is_symlink() or not path.is_file():
        return RepairStep(Action.QUARANTINE, relative, "not a regular file")
    try:
        header, _size, sha256 = read_archived_file(path, relative)
    except RejectedFile as exc:
        return RepairStep(Action.QUARANTINE, relative, exc.reason)
    except OSError as exc:
        return RepairStep(Action.QUARANTINE, relative, f"unreadable: {exc.strerror or exc}")
    sop = header.sop_instance_uid
    stored = archive.index.find_instance(sop)
    if stored is not None:
        same = "an identical copy" if stored.sha256 == sha256 else "a different file"
        return RepairStep(
            Action.QUARANTINE, relative, f"{same} with SOP {sop} of {stored.file_path}"
        )
    if sop in planned:
        return RepairStep(
            Action.QUARANTINE, relative, f"SOP {sop} is also in {planned[sop]}, indexed instead"
        )
    planned[sop] = relative
    if relative.count("/") == _INSTANCE_DEPTH - 1:
        return RepairStep(Action.INDEX, relative, f"valid instance {sop}")
    target = relative_instance_path(header)
    if (archive.root / target).exists():
        return RepairStep(
            Action.QUARANTINE, relative, f"outside a series folder and {target} exists"
        )
    return RepairStep(Action.MOVE_AND_INDEX, relative, f"valid instance {sop}", target)


class _Log:
    """Append-only JSON lines, each fsynced before the change it records is made."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, entry: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"at": now_iso(), **entry}, ensure_ascii=False)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())


def apply_repair(archive: Archive, plan: RepairPlan) -> RepairResult:
    """Do the planned steps; a step whose premise no longer holds is skipped, not forced."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    quarantine = archive.paths.quarantine / f"repair-{stamp}-{os.getpid()}"
    log = _Log(archive.paths.quarantine / REPAIR_LOG)
    done: list[RepairStep] = []
    failed: list[tuple[RepairStep, str]] = []
    stale = {str(p.relative_to(archive.root)) for p in stale_temporaries(archive)}
    for step in plan.actionable:
        try:
            problem = _apply_one(archive, step, quarantine, log, stale)
        except OSError as exc:
            problem = exc.strerror or str(exc)
        if problem:
            failed.append((step, problem))
        else:
            done.append(step)
    if any(s.action in (Action.INDEX, Action.MOVE_AND_INDEX, Action.DROP_ROW) for s in done):
        snapshot.write_snapshot(archive.paths, archive.index)
    if done or failed:
        from dicom_archive.archive.audit import REPAIR, append_audit

        counts: dict[str, int] = {}
        for step in done:
            counts[step.action.value] = counts.get(step.action.value, 0) + 1
        append_audit(
            archive.root,
            REPAIR,
            selection="check --repair",
            count=len(done),
            details={"done": counts, "failed": len(failed), "log": str(log.path)},
        )
    return RepairResult(tuple(done), tuple(failed), str(log.path), str(quarantine))


def _apply_one(
    archive: Archive, step: RepairStep, quarantine: Path, log: _Log, stale: set[str]
) -> str:
    """Do one step; "" when done, else why it was not."""
    root = archive.root
    source = root / step.path
    match step.action:
        case Action.DROP_ROW:
            return _drop_row(archive, step, log)
        case Action.REMOVE_TEMPORARY:
            if step.path not in stale:
                return "no longer a stale temporary file"
            log.write({"action": step.action.value, "path": step.path})
            source.unlink(missing_ok=True)
            return ""
        case Action.QUARANTINE:
            return _quarantine(root, step, quarantine, log)
        case Action.INDEX | Action.MOVE_AND_INDEX:
            if source.is_symlink() or not source.is_file():
                return "the file is no longer there"
            try:
                header, size, sha256 = read_archived_file(source, step.path)
            except RejectedFile as exc:
                return _quarantine(
                    root, RepairStep(Action.QUARANTINE, step.path, exc.reason), quarantine, log
                )
            return _index_orphan(archive, step, header, size, sha256, quarantine, log)
        case _:
            return "nothing to do"


def _drop_row(archive: Archive, step: RepairStep, log: _Log) -> str:
    index = archive.index
    with index.write() as connection:
        row = connection.execute(_ROW_DETAILS, (step.path,)).fetchone()
        if row is None:
            return "the row is already gone"
        if (archive.root / step.path).exists():
            return "the file is back"
        log.write({"action": step.action.value, "row": dict(zip(_ROW_KEYS, row, strict=True))})
        index.remove_instances(connection, [step.path])
    return ""


def _quarantine(root: Path, step: RepairStep, quarantine: Path, log: _Log) -> str:
    source = root / step.path
    if not source.is_symlink() and not source.exists():
        return "the file is no longer there"
    destination = quarantine / step.path
    created = make_dirs_durable(root, destination.parent.relative_to(root))
    if destination.exists() or destination.is_symlink():
        return f"{destination.relative_to(root)} already exists"
    log.write(
        {
            "action": step.action.value,
            "path": step.path,
            "to": str(destination.relative_to(root)),
            "reason": step.detail,
        }
    )
    # Same filesystem, fresh folder: rename is atomic and replaces nothing.
    os.rename(source, destination)
    for folder in {*created, destination.parent, source.parent}:
        fsync_path(folder)
    return ""


def _index_orphan(
    archive: Archive,
    step: RepairStep,
    header: InstanceHeader,
    size: int,
    sha256: str,
    quarantine: Path,
    log: _Log,
) -> str:
    root = archive.root
    relative = step.path
    linked = False
    if step.action is Action.MOVE_AND_INDEX:
        relative = step.target
        changed = make_dirs_durable(root, Path(relative).parent)
        if not link_no_replace(root / step.path, root / relative):
            why = f"{relative} appeared meanwhile"
            return _quarantine(root, RepairStep(Action.QUARANTINE, step.path, why), quarantine, log)
        linked = True
        for folder in {*changed, (root / relative).parent}:
            fsync_path(folder)
    index = archive.index
    try:
        with index.write() as connection:
            stored = index.find_instance(header.sop_instance_uid)
            if stored is None:
                log.write({"action": step.action.value, "path": step.path, "as": relative})
                index.add_instances(connection, [NewInstance(header, relative, size, sha256)])
    except BaseException:
        if linked:
            os.unlink(root / relative)
        raise
    if stored is not None:
        if linked:
            os.unlink(root / relative)
        why = f"SOP {header.sop_instance_uid} was indexed meanwhile as {stored.file_path}"
        return _quarantine(root, RepairStep(Action.QUARANTINE, step.path, why), quarantine, log)
    if linked:
        # The row names the new path; the old name is now a second name of the same file.
        os.unlink(root / step.path)
        fsync_path((root / step.path).parent)
    return ""
