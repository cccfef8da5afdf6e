"""Each study keeps the patient values and dates its own files state (issue 8, parts 1-2)."""

from __future__ import annotations

import json
import sqlite3
import warnings
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.index import MIGRATIONS, SCHEMA_VERSION
from dicom_archive.archive.query import StudyQuery, find_studies, parse_date_range
from dicom_archive.archive.snapshot import write_json_document
from dicom_archive.archive.stats import archive_stats, patient_ids_with_several_names
from dicom_archive.archive.store import Archive, open_archive
from dicom_archive.cli import main
from tests.factory import iter_pydicom_files, new_uid, write_instance


def _studies(archive: Archive, **criteria: object) -> dict[str, tuple[str, str]]:
    """Study UID -> (patient name, study date) of the studies matching ``criteria``."""
    return {
        s.study_instance_uid: (s.patient_name, s.study_date)
        for s in find_studies(archive.index, StudyQuery(**criteria))  # type: ignore[arg-type]
    }


def _import(archive: Archive, *paths: Path) -> None:
    outcomes = list(import_paths(archive, list(paths)))
    assert [o.outcome.value for o in outcomes] == ["imported"] * len(paths), outcomes


def test_two_names_under_one_patient_id_each_stay_with_their_study(
    archive: Archive, tmp_path: Path
) -> None:
    """A later study of the same ID with another name overwrites nothing."""
    first, second = new_uid(), new_uid()
    _import(
        archive,
        write_instance(tmp_path / "a.dcm", PatientID="P1", PatientName="Citizen^Jan",
                       StudyInstanceUID=first),
        write_instance(tmp_path / "b.dcm", PatientID="P1", PatientName="Burger^Jan",
                       StudyInstanceUID=second),
    )  # fmt: skip
    assert _studies(archive, patient_name="C*") == {first: ("Citizen^Jan", "20240115")}
    assert _studies(archive, patient_name="B*") == {second: ("Burger^Jan", "20240115")}
    assert set(_studies(archive, patient_id="P1")) == {first, second}
    findings = patient_ids_with_several_names(archive.index)
    assert [(f.patient_id, f.names) for f in findings] == [("P1", ("Burger^Jan", "Citizen^Jan"))]
    stats = archive_stats(archive.index)
    assert stats.patients == 2
    assert stats.as_json()["patientIDsWithSeveralNames"] == [
        {"patientID": "P1", "names": ["Burger^Jan", "Citizen^Jan"]}
    ]


def test_studies_without_a_patient_id_are_not_merged(archive: Archive, tmp_path: Path) -> None:
    """Empty IDs are no identity: each study keeps its name, and none is a finding."""
    uids = [new_uid() for _ in range(3)]
    _import(
        archive,
        *(
            write_instance(tmp_path / f"{n}.dcm", PatientID="", PatientName=name,
                           StudyInstanceUID=uid)
            for n, (name, uid) in enumerate(zip(["Anonymized", "Citizen^Jan", ""], uids))
        ),
    )  # fmt: skip
    assert _studies(archive, patient_name="A*") == {uids[0]: ("Anonymized", "20240115")}
    assert _studies(archive, patient_name="Citizen*") == {uids[1]: ("Citizen^Jan", "20240115")}
    assert patient_ids_with_several_names(archive.index) == []
    assert archive_stats(archive.index).studies_without_patient_id == 3


def test_a_study_keeps_the_values_of_its_first_file(archive: Archive, tmp_path: Path) -> None:
    """A second file of the same study with another name adds no patient row."""
    study = new_uid()
    _import(
        archive, write_instance(tmp_path / "1.dcm", PatientName="DOE^J", StudyInstanceUID=study)
    )
    _import(archive, write_instance(tmp_path / "2.dcm", PatientName="DOE^JOHN",
                                    StudyInstanceUID=study))  # fmt: skip
    assert _studies(archive) == {study: ("DOE^J", "20240115")}
    assert archive.index.connection.execute("SELECT COUNT(*) FROM patients").fetchone()[0] == 1


def test_the_snapshot_groups_patients_by_id_and_name(archive: Archive, tmp_path: Path) -> None:
    _import(
        archive,
        write_instance(tmp_path / "a.dcm", PatientID="P1", PatientName="A^B"),
        write_instance(tmp_path / "b.dcm", PatientID="P1", PatientName="C^D"),
    )
    out = tmp_path / "snapshot.json"
    with open(out, "w", encoding="utf-8") as handle:
        write_json_document(archive.index, handle)
    patients = json.loads(out.read_text(encoding="utf-8"))["patients"]
    assert sorted((p["patientID"], p["patientName"], len(p["studies"])) for p in patients) == [
        ("P1", "A^B", 1),
        ("P1", "C^D", 1),
    ]


def test_stats_and_check_report_an_id_with_two_names_without_failing(
    archive: Archive, tmp_path: Path, capsys: object
) -> None:
    _import(
        archive,
        write_instance(tmp_path / "a.dcm", PatientID="P1", PatientName="Müller^Jörg"),
        write_instance(tmp_path / "b.dcm", PatientID="P1", PatientName="Mueller^Joerg"),
    )
    root = str(archive.root)
    assert main(["stats", "-a", root]) == 0
    assert main(["check", "-a", root]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert out.count("Patient IDs with different names: 1") == 2
    assert "P1: 'Mueller^Joerg', 'Müller^Jörg'" in out
    assert main(["check", "-a", root, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    assert document["clean"] is True
    assert document["patientIDsWithSeveralNames"][0]["patientID"] == "P1"


# -- dates ---------------------------------------------------------------------


def test_a_legacy_date_is_found_by_a_range_and_by_its_own_form(
    archive: Archive, tmp_path: Path
) -> None:
    """``1994.11.05`` (ACR-NEMA) is 19941105 for matching; the raw value is kept."""
    legacy, modern, undated = new_uid(), new_uid(), new_uid()
    _import(
        archive,
        write_instance(tmp_path / "l.dcm", StudyDate="1994.11.05", StudyInstanceUID=legacy),
        write_instance(tmp_path / "m.dcm", StudyDate="20240115", StudyInstanceUID=modern),
        write_instance(tmp_path / "u.dcm", StudyDate=None, StudyInstanceUID=undated),
    )
    in_range = _studies(archive, study_date=parse_date_range("19940101-19991231"))
    assert in_range == {legacy: ("Müller^Jörg", "19941105")}
    assert set(_studies(archive, study_date=parse_date_range("1994.11.05"))) == {legacy}
    assert set(_studies(archive, study_date=parse_date_range("-20991231"))) == {legacy, modern}
    raw = archive.index.connection.execute(
        "SELECT study_date, study_date_raw FROM studies WHERE study_instance_uid = ?", (legacy,)
    ).fetchone()
    assert raw == ("19941105", "1994.11.05")


def test_an_unusable_date_never_matches_and_is_shown_as_stated(
    archive: Archive, tmp_path: Path
) -> None:
    study = new_uid()
    _import(archive, write_instance(tmp_path / "x.dcm", StudyDate="2024XX01",
                                    StudyInstanceUID=study))  # fmt: skip
    assert _studies(archive, study_date=parse_date_range("19000101-29991231")) == {}
    assert _studies(archive) == {study: ("Müller^Jörg", "2024XX01")}


def test_pydicoms_big_endian_file_with_a_legacy_date_is_found_by_range(archive: Archive) -> None:
    """A real file nobody here wrote: ExplVR_BigEnd.dcm says StudyDate 1997.04.24."""
    source = Path(get_testdata_file("ExplVR_BigEnd.dcm"))
    _import(archive, source)
    found = _studies(archive, study_date=parse_date_range("19970101-19971231"))
    assert list(found.values()) == [("Anonymized", "19970424")]


def test_pydicoms_files_keep_the_names_their_files_state(archive: Archive) -> None:
    """On pydicom's whole corpus every study shows a name one of its own files states,
    and a name filter finds exactly the studies whose shown name matches."""
    outcomes = list(import_paths(archive, list(iter_pydicom_files())))
    stated: dict[str, set[str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for outcome in outcomes:
            if outcome.outcome.value != "imported":
                continue
            ds = pydicom.dcmread(outcome.source, stop_before_pixels=True, force=True)
            name = str(ds.get("PatientName", "") or "").strip(" \x00")
            stated.setdefault(str(ds.StudyInstanceUID).strip(" \x00"), set()).add(name)
    shown = _studies(archive)
    assert set(shown) == set(stated)
    wrong = {
        uid: (name, stated[uid]) for uid, (name, _) in shown.items() if name not in stated[uid]
    }
    assert wrong == {}
    # The files that say Citizen^Jan (the example) are found by C*, and
    # nothing that says otherwise is.
    c_names = {name for name, _ in _studies(archive, patient_name="C*").values()}
    assert "Citizen^Jan" in c_names
    assert all(name.casefold().startswith("c") for name in c_names)
    anonymised = _studies(archive, patient_name="A*")
    assert all(name.casefold().startswith("a") for name, _ in anonymised.values())


# -- migration -----------------------------------------------------------------


def _as_schema_3(archive: Archive) -> None:
    """Rewrite the index as dicom-archive 0.x (schema 3) kept it: one patient row per
    Patient ID holding the values of the first study, dates as stated."""
    current = archive.index.connection
    rows = current.execute(
        "SELECT st.study_instance_uid, p.patient_id, p.patient_name, st.patient_birth_date, "
        "st.patient_sex, st.study_date_raw, st.id, st.study_time, st.description, "
        "st.accession_number, st.study_id, st.referring_physician FROM studies st "
        "JOIN patients p ON p.id = st.patient_pk ORDER BY st.id"
    ).fetchall()
    series = current.execute("SELECT * FROM series ORDER BY id").fetchall()
    instances = current.execute("SELECT * FROM instances ORDER BY id").fetchall()
    path = archive.paths.index
    archive.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    old = sqlite3.connect(path, isolation_level=None)
    for version in (1, 2, 3):
        for statement in MIGRATIONS[version].split(";"):
            if statement.strip():
                old.execute(statement)
    patient_pks: dict[str, int] = {}
    for study_uid, pid, name, birth, sex, date, study_pk, *described in rows:
        if pid not in patient_pks:
            patient_pks[pid] = old.execute(
                "INSERT INTO patients(patient_id, patient_id_fold, patient_name, name_fold, "
                "birth_date, sex) VALUES (?, ?, ?, ?, ?, ?)",
                (pid, pid.casefold(), name, name.casefold(), birth, sex),
            ).lastrowid
        old.execute(
            "INSERT INTO studies(id, study_instance_uid, patient_pk, study_date, study_time, "
            "description, accession_number, study_id, referring_physician) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (study_pk, study_uid, patient_pks[pid], date, *described),
        )
    old.executemany(f"INSERT INTO series VALUES ({','.join('?' * len(series[0]))})", series)
    old.executemany(
        f"INSERT INTO instances VALUES ({','.join('?' * len(instances[0]))})", instances
    )
    old.execute("PRAGMA journal_mode = WAL")
    old.execute("PRAGMA user_version = 3")
    old.close()


def test_an_index_of_schema_3_is_migrated_to_per_study_values(
    archive: Archive, tmp_path: Path
) -> None:
    """No re-import: each study's values are restated from one of its own files."""
    first, second = new_uid(), new_uid()
    _import(
        archive,
        write_instance(tmp_path / "a.dcm", PatientID="P1", PatientName="Citizen^Jan",
                       StudyInstanceUID=first, StudyDate="1994.11.05", PatientSex="F"),
        write_instance(tmp_path / "b.dcm", PatientID="P1", PatientName="Burger^Jan",
                       StudyInstanceUID=second, PatientSex="M"),
    )  # fmt: skip
    root = archive.root
    _as_schema_3(archive)
    old = sqlite3.connect(root / "archive.db")
    assert old.execute("SELECT COUNT(*) FROM patients").fetchone()[0] == 1
    old.close()

    with open_archive(root) as migrated:
        assert migrated.index.schema_version() == SCHEMA_VERSION  # 4 and any later step
        assert _studies(migrated, patient_name="B*") == {second: ("Burger^Jan", "20240115")}
        assert _studies(migrated, study_date=parse_date_range("19940101-19941231")) == {
            first: ("Citizen^Jan", "19941105")
        }
        sexes = dict(migrated.index.connection.execute(
            "SELECT study_instance_uid, patient_sex FROM studies"
        ).fetchall())  # fmt: skip
        assert sexes == {first: "F", second: "M"}
        names = {f.patient_id: f.names for f in patient_ids_with_several_names(migrated.index)}
        assert names == {"P1": ("Burger^Jan", "Citizen^Jan")}
        assert migrated.index.connection.execute("PRAGMA foreign_key_check").fetchall() == []
    assert main(["check", "-a", str(root)]) == 0


def test_rebuild_of_a_schema_3_index_restates_each_studys_values(
    archive: Archive, tmp_path: Path
) -> None:
    """rebuild reads an older index as it is and reports the names it corrects."""
    from dicom_archive.archive.rebuild import rebuild_index

    second = new_uid()
    _import(
        archive,
        write_instance(tmp_path / "a.dcm", PatientID="P1", PatientName="Citizen^Jan"),
        write_instance(tmp_path / "b.dcm", PatientID="P1", PatientName="Burger^Jan",
                       StudyInstanceUID=second, StudyDate="1994.11.05"),
    )  # fmt: skip
    root = archive.root
    _as_schema_3(archive)
    report = rebuild_index(root)
    assert {(c.column, c.old, c.new) for c in report.changed} == {
        ("patient_name", "Citizen^Jan", "Burger^Jan"),
        ("study_date", "1994.11.05", "19941105"),
    }
    with open_archive(root) as rebuilt:
        assert _studies(rebuilt, patient_name="Burger*") == {second: ("Burger^Jan", "19941105")}
