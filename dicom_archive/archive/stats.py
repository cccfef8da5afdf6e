"""Archive totals, served from per-series counters (no scan of the instances), and the
patient-identity findings a person should look at."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dicom_archive.archive.index import Index


@dataclass(frozen=True, slots=True)
class ModalityStats:
    modality: str
    instances: int
    series: int
    studies: int
    bytes: int


@dataclass(frozen=True, slots=True)
class PatientNames:
    """One Patient ID whose studies state different Patient's Names: a typo, a name
    change, or two patients sharing an ID (IDs are unique only within their issuer)."""

    patient_id: str
    names: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"patientID": self.patient_id, "names": list(self.names)}


def patient_ids_with_several_names(index: Index) -> list[PatientNames]:
    """A finding for people, not an error: every study keeps the name its files state.

    Patients are (Patient ID, name) pairs, so an ID with two rows has two names;
    studies without a Patient ID are not one patient and are left out."""
    found: dict[str, list[str]] = {}
    for patient_id, name in index.connection.execute(
        "SELECT patient_id, patient_name FROM patients WHERE patient_id IN "
        "(SELECT patient_id FROM patients WHERE patient_id != '' "
        "GROUP BY patient_id HAVING COUNT(*) > 1) ORDER BY patient_id, patient_name"
    ):
        found.setdefault(patient_id, []).append(name)
    return [PatientNames(pid, tuple(names)) for pid, names in found.items()]


@dataclass(frozen=True, slots=True)
class ArchiveStats:
    patients: int
    studies: int
    series: int
    instances: int
    total_bytes: int
    first_study_date: str
    last_study_date: str
    first_import: str
    last_import: str
    modalities: tuple[ModalityStats, ...] = field(default=())
    studies_without_patient_id: int = 0
    patient_ids_with_several_names: tuple[PatientNames, ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        return {
            "patients": self.patients,
            "studies": self.studies,
            "series": self.series,
            "instances": self.instances,
            "totalBytes": self.total_bytes,
            "studyDateRange": {"first": self.first_study_date, "last": self.last_study_date},
            "imports": {"first": self.first_import, "last": self.last_import},
            "modalities": [
                {
                    "modality": m.modality,
                    "instances": m.instances,
                    "series": m.series,
                    "studies": m.studies,
                    "bytes": m.bytes,
                }
                for m in self.modalities
            ],
            "studiesWithoutPatientID": self.studies_without_patient_id,
            "patientIDsWithSeveralNames": [
                p.as_json() for p in self.patient_ids_with_several_names
            ],
        }


def archive_stats(index: Index) -> ArchiveStats:
    """Every figure from an index lookup or the per-modality pass over ``series_stats``;
    the totals are the sums of the per-modality rows."""
    with index.read() as db:
        patients = db.execute("SELECT COUNT(*) FROM patients").fetchone()[0]
        studies = db.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
        modalities = tuple(
            ModalityStats(*row)
            for row in db.execute(
                "SELECT modality, SUM(instance_count), COUNT(*), COUNT(DISTINCT study_pk), "
                "SUM(total_bytes) FROM series GROUP BY modality"
            )
        )
        # Separate MIN and MAX statements: each is one index lookup, together a scan.
        first_date = db.execute(
            "SELECT MIN(study_date) FROM studies WHERE study_date != ''"
        ).fetchone()[0]
        last_date = db.execute("SELECT MAX(study_date) FROM studies").fetchone()[0]
        first_import = db.execute("SELECT MIN(imported_at) FROM instances").fetchone()[0]
        last_import = db.execute("SELECT MAX(imported_at) FROM instances").fetchone()[0]
        without_id = db.execute(
            "SELECT COUNT(*) FROM patients p JOIN studies st ON st.patient_pk = p.id "
            "WHERE p.patient_id = ''"
        ).fetchone()[0]
        several_names = tuple(patient_ids_with_several_names(index))
    return ArchiveStats(
        patients=patients,
        studies=studies,
        series=sum(m.series for m in modalities),
        instances=sum(m.instances for m in modalities),
        total_bytes=sum(m.bytes for m in modalities),
        first_study_date=first_date or "",
        last_study_date=last_date or "",
        first_import=first_import or "",
        last_import=last_import or "",
        modalities=tuple(sorted(modalities, key=lambda m: (-m.instances, m.modality))),
        studies_without_patient_id=without_id,
        patient_ids_with_several_names=several_names,
    )
