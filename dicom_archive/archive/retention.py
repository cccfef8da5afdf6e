"""Retention: which studies the rules let go, and the studies and patients no rule
may touch.

Protection lives in the index (``protect``/``unprotect``, each audited) and may also
be listed in the daemon's config; both are honoured by retention and by ``delete``.
"""

from __future__ import annotations

import json
import time
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


# -- rules ---------------------------------------------------------------------

BY_STUDY_DATE = "study_date"
BY_IMPORT_DATE = "import_date"


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """Studies older than ``days`` (by their Study Date, or by their newest import)
    go, optionally only those having a series of one of ``modalities``."""

    days: float
    by: str = BY_STUDY_DATE
    modalities: tuple[str, ...] = ()

    def describe(self) -> str:
        what = f" {'/'.join(self.modalities)}" if self.modalities else ""
        basis = "study date" if self.by == BY_STUDY_DATE else "import date"
        return f"{what.strip() or 'all'} studies older than {self.days:g} days by {basis}"

    def as_json(self) -> dict[str, object]:
        return {"days": self.days, "by": self.by, "modalities": list(self.modalities)}


@dataclass(frozen=True, slots=True)
class TrashSettings:
    """``[trash]``: entries are emptied this long after their delete (0: never by
    the daemon; ``trash empty`` still works)."""

    empty_after: float = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """``[retention]``: the rules, how often the daemon applies them, and what no
    rule touches (besides what ``protect`` recorded in the index)."""

    rules: tuple[RetentionRule, ...] = ()
    interval: float = 86400.0
    protect_studies: tuple[str, ...] = ()
    protect_patients: tuple[str, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {
            "rules": [r.as_json() for r in self.rules],
            "interval": self.interval,
            "protectStudies": list(self.protect_studies),
            "protectPatients": list(self.protect_patients),
        }


def _days(value: object, source: str, key: str) -> float:
    from dicom_archive.errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(source, key, f"expected a number of days (0 or more), got {value!r}")
    return float(value)


def _strings(value: object, source: str, key: str) -> tuple[str, ...]:
    from dicom_archive.errors import ConfigError

    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(source, key, f'expected a list of strings, e.g. ["CT"], got {value!r}')
    return tuple(value)


def parse_trash(raw: object, source: str) -> TrashSettings:
    from dicom_archive.errors import ConfigError

    if not isinstance(raw, dict):
        raise ConfigError(source, "trash", "expected a table: [trash]")
    known = {"empty_after_days"}
    for key in raw:
        if key not in known:
            raise ConfigError(source, f"trash.{key}", "unknown key (known: empty_after_days)")
    days = _days(raw.get("empty_after_days", 30), source, "trash.empty_after_days")
    return TrashSettings(empty_after=days * 86400.0)


def parse_retention(raw: object, source: str) -> RetentionSettings:
    """``[retention]`` with ``[[retention.rule]]`` tables; errors name the key."""
    from dicom_archive.errors import ConfigError

    if not isinstance(raw, dict):
        raise ConfigError(source, "retention", "expected a table: [retention]")
    known = {"rule", "interval_hours", "protect_studies", "protect_patients"}
    for key in raw:
        if key not in known:
            raise ConfigError(
                source, f"retention.{key}", f"unknown key (known: {', '.join(sorted(known))})"
            )
    rules = []
    table = raw.get("rule", [])
    if not isinstance(table, list):
        raise ConfigError(source, "retention.rule", "expected [[retention.rule]] tables")
    for number, rule in enumerate(table, 1):
        where = f"retention.rule[{number}]"
        if not isinstance(rule, dict):
            raise ConfigError(source, where, "expected a table")
        for key in rule:
            if key not in ("older_than_days", "by", "modality"):
                raise ConfigError(
                    source, f"{where}.{key}", "unknown key (known: older_than_days, by, modality)"
                )
        if "older_than_days" not in rule:
            raise ConfigError(source, f"{where}.older_than_days", "missing")
        by = rule.get("by", BY_STUDY_DATE)
        if by not in (BY_STUDY_DATE, BY_IMPORT_DATE):
            raise ConfigError(
                source, f"{where}.by", f'expected "study_date" or "import_date", got {by!r}'
            )
        days = _days(rule["older_than_days"], source, f"{where}.older_than_days")
        if days == 0:
            raise ConfigError(source, f"{where}.older_than_days", "must be more than 0")
        modalities = _strings(rule.get("modality", []), source, f"{where}.modality")
        rules.append(RetentionRule(days, by, tuple(m.upper() for m in modalities)))
    hours = raw.get("interval_hours", 24)
    interval = _days(hours, source, "retention.interval_hours") * 3600.0
    return RetentionSettings(
        rules=tuple(rules),
        interval=interval,
        protect_studies=_strings(
            raw.get("protect_studies", []), source, "retention.protect_studies"
        ),
        protect_patients=_strings(
            raw.get("protect_patients", []), source, "retention.protect_patients"
        ),
    )


_META_SETTINGS = "retention_settings"


def record_settings(archive: Archive, settings: RetentionSettings) -> None:
    """Note the daemon's rules in the index, so ``stats`` and ``retention`` without a
    config file show what the daemon will do."""
    with archive.index.write() as connection:
        connection.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            (_META_SETTINGS, json.dumps(settings.as_json())),
        )


def recorded_settings(archive: Archive) -> RetentionSettings | None:
    text = archive.index.meta(_META_SETTINGS)
    if not text:
        return None
    raw = json.loads(text)
    return RetentionSettings(
        rules=tuple(
            RetentionRule(float(r["days"]), str(r["by"]), tuple(r["modalities"]))
            for r in raw["rules"]
        ),
        interval=float(raw["interval"]),
        protect_studies=tuple(raw["protectStudies"]),
        protect_patients=tuple(raw["protectPatients"]),
    )


@dataclass(frozen=True, slots=True)
class DueStudy:
    study_instance_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    last_import: str
    description: str
    modalities: str
    instances: int
    bytes: int
    rule: RetentionRule

    def as_json(self) -> dict[str, object]:
        return {
            "studyInstanceUID": self.study_instance_uid,
            "patientID": self.patient_id,
            "patientName": self.patient_name,
            "studyDate": self.study_date,
            "lastImport": self.last_import,
            "studyDescription": self.description,
            "modalities": self.modalities,
            "instances": self.instances,
            "bytes": self.bytes,
            "rule": self.rule.describe(),
        }


_DUE_SQL = """
SELECT st.study_instance_uid, p.patient_id, p.patient_name, st.study_date,
       (SELECT MAX(i.imported_at) FROM series s2 JOIN instances i ON i.series_pk = s2.id
        WHERE s2.study_pk = st.id) AS last_import,
       st.description,
       (SELECT GROUP_CONCAT(DISTINCT s3.modality) FROM series s3 WHERE s3.study_pk = st.id),
       (SELECT SUM(instance_count) FROM series s4 WHERE s4.study_pk = st.id),
       (SELECT SUM(total_bytes) FROM series s5 WHERE s5.study_pk = st.id)
FROM studies st JOIN patients p ON p.id = st.patient_pk
WHERE {condition}
  AND NOT EXISTS (SELECT 1 FROM protected pr WHERE
      (pr.kind = 'study' AND pr.value = st.study_instance_uid) OR
      (pr.kind = 'patient' AND pr.value = p.patient_id))
ORDER BY st.id
"""


def due_studies(
    archive: Archive, settings: RetentionSettings, *, now: float | None = None
) -> list[DueStudy]:
    """The studies the rules let go now (each once, under the first rule that takes
    it), never a protected one. A study without a usable Study Date is never taken by
    a study-date rule; an import-date rule looks at the study's newest instance."""
    moment = time.time() if now is None else now
    protected_studies = set(settings.protect_studies)
    protected_patients = set(settings.protect_patients)
    found: dict[str, DueStudy] = {}
    connection = archive.index.connection
    for rule in settings.rules:
        cutoff = moment - rule.days * 86400.0
        params: list[object] = []
        if rule.by == BY_STUDY_DATE:
            condition = "st.study_date != '' AND st.study_date < ?"
            params.append(time.strftime("%Y%m%d", time.gmtime(cutoff)))
        else:
            condition = "last_import < ?"
            params.append(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cutoff)))
        if rule.modalities:
            marks = ",".join("?" * len(rule.modalities))
            condition += (
                " AND EXISTS (SELECT 1 FROM series s6 WHERE s6.study_pk = st.id "
                f"AND s6.modality_fold IN ({marks}))"
            )
            params.extend(m.casefold() for m in rule.modalities)
        for row in connection.execute(_DUE_SQL.format(condition=condition), params):
            uid, patient_id = row[0], row[1]
            if uid in found or uid in protected_studies or patient_id in protected_patients:
                continue
            found[uid] = DueStudy(
                uid,
                patient_id,
                row[2],
                row[3],
                row[4] or "",
                row[5],
                row[6] or "",
                int(row[7] or 0),
                int(row[8] or 0),
                rule,
            )
    return list(found.values())


@dataclass(frozen=True, slots=True)
class RetentionRun:
    studies: tuple[DueStudy, ...]
    trash_ids: tuple[int, ...]
    instances: int
    bytes: int
    skipped: tuple[str, ...] = ()


def apply_retention(
    archive: Archive, settings: RetentionSettings, *, now: float | None = None
) -> RetentionRun:
    """Move every due study to the trash (one entry per study, so each can be restored
    alone); one audit line for the run."""
    from dicom_archive.archive import trash

    started = time.perf_counter()
    due = due_studies(archive, settings, now=now)
    done: list[DueStudy] = []
    ids: list[int] = []
    skipped: list[str] = []
    instances = size = 0
    for study in due:
        try:
            made = trash.trash_where(
                archive,
                "st.study_instance_uid = ?",
                (study.study_instance_uid,),
                f"study {study.study_instance_uid}",
                reason=f"retention: {study.rule.describe()}",
                origin="retention",
            )
        except (trash.NothingSelected, trash.Protected) as exc:
            skipped.append(str(exc))  # deleted or protected since it was listed
            continue
        done.append(study)
        ids.append(made.id)
        instances += made.instances
        size += made.bytes
    if done:
        trash.refresh_snapshot(archive, time.perf_counter() - started)
    if done or skipped:
        from dicom_archive.archive.audit import RETENTION

        append_audit(
            archive.root,
            RETENTION,
            selection=f"{len(done)} studies due under {len(settings.rules)} rules",
            count=instances,
            reason="; ".join(r.describe() for r in settings.rules),
            details={
                "studies": [s.study_instance_uid for s in done],
                "trashIds": ids,
                "bytes": size,
                "skipped": skipped,
            },
        )
    return RetentionRun(tuple(done), tuple(ids), instances, size, tuple(skipped))


@dataclass(frozen=True, slots=True)
class LifecycleSummary:
    """For ``stats``: what the trash holds and what the daemon's rules will take."""

    trash_entries: int
    trash_instances: int
    trash_bytes: int
    rules: tuple[RetentionRule, ...] | None
    due_studies: int
    due_instances: int
    due_bytes: int
    protected: int

    def as_json(self) -> dict[str, object]:
        return {
            "trash": {
                "entries": self.trash_entries,
                "instances": self.trash_instances,
                "bytes": self.trash_bytes,
            },
            "retention": {
                "rules": None if self.rules is None else [r.as_json() for r in self.rules],
                "dueStudies": self.due_studies,
                "dueInstances": self.due_instances,
                "dueBytes": self.due_bytes,
                "protected": self.protected,
            },
        }


def lifecycle_summary(archive: Archive) -> LifecycleSummary:
    from dicom_archive.archive.trash import trash_totals

    entries, instances, size = trash_totals(archive.index)
    settings = recorded_settings(archive)
    due = due_studies(archive, settings) if settings is not None else []
    (protected,) = archive.index.connection.execute("SELECT COUNT(*) FROM protected").fetchone()
    return LifecycleSummary(
        entries,
        instances,
        size,
        None if settings is None else settings.rules,
        len(due),
        sum(d.instances for d in due),
        sum(d.bytes for d in due),
        int(protected)
        + (len(settings.protect_studies) + len(settings.protect_patients) if settings else 0),
    )
