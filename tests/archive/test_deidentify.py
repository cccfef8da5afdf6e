"""De-identified export: the standard's table holds on real files at every depth,
references stay valid across a study and across exports, pseudonyms and date offsets
are stable per patient and project, and pixel data is never touched."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from dicom_archive.archive.deid_export import export_deidentified
from dicom_archive.archive.deidentify import (
    DeidOptions,
    load_profile,
    resolve_action,
    shift_date,
    shift_datetime,
)
from dicom_archive.archive.export import Selector
from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.pseudonyms import PseudonymMap, deid_folder
from dicom_archive.archive.store import Archive
from dicom_archive.errors import ExportError
from tests.archive.deid_helpers import keyer_of, outputs, read, uid_values, walk
from tests.factory import (
    StudySpec,
    iter_pydicom_files,
    make_instance,
    new_uid,
    write_dataset,
    write_studies,
)

ALL_OPTIONS = DeidOptions(
    dates="shift",
    clean_descriptors=True,
    retain_patient_characteristics=True,
    retain_device_identity=True,
    retain_institution_identity=True,
)


def _import(archive: Archive, files: list[Path]) -> None:
    outcomes = list(import_paths(archive, files))
    assert outcomes and all(o.outcome.value in ("imported", "duplicate") for o in outcomes)


def _export_all(archive: Archive, output: Path, options: DeidOptions) -> list[str]:
    """De-identify every patient of the archive; the errors."""
    errors: list[str] = []
    patient_ids = [
        r[0] for r in archive.index.connection.execute("SELECT patient_id FROM patients")
    ]
    for patient_id in sorted(set(patient_ids)):
        report = export_deidentified(archive, Selector(patient_id=patient_id), output, options)
        errors += report.errors
    return errors


# --- the table --------------------------------------------------------------------------


def test_the_vendored_table_is_the_standards_with_its_patterns() -> None:
    """Table E.1-1 as published: every row parsed, the tag patterns known."""
    profile = load_profile()
    assert len(profile.rules) + len(profile.overlays) + 2 == 621
    assert profile.rule_for(0x00100010).basic == "Z"  # Patient's Name
    assert profile.rule_for(0x00080018).basic == "U"  # SOP Instance UID
    assert profile.rule_for(0x00200052).basic == "U"  # Frame of Reference UID
    assert profile.rule_for(0x00081140).basic == "X/Z/U*"  # Referenced Image Sequence
    assert profile.rule_for(0x50020010) is profile.curves
    assert profile.rule_for(0x60203000) is profile.overlays[0x3000]
    assert profile.rule_for(0x00291010) is profile.private
    assert profile.rule_for(0x00280010) is None  # Rows: not in the table, kept


def test_compound_actions_and_options_resolve_as_documented() -> None:
    profile = load_profile()
    basic = DeidOptions()
    institution = profile.rule_for(0x00080080)  # X/Z/D, Retain Institution Identity: K
    assert resolve_action(institution, basic, is_sequence=False) == "D"
    assert resolve_action(institution, DeidOptions(retain_institution_identity=True),
                          is_sequence=False) == "K"  # fmt: skip
    code_sequence = profile.rule_for(0x00080082)  # Institution Code Sequence, X/Z/D
    assert resolve_action(code_sequence, basic, is_sequence=True) == "Z"
    assert resolve_action(profile.rule_for(0x00081140), basic, is_sequence=True) == "U"
    assert resolve_action(profile.rule_for(0x00080022), basic, is_sequence=False) == "Z"
    # A calibration date is kept by Retain Device Identity, but shifted when dates are.
    calibration = profile.rule_for(0x0018700C)
    assert resolve_action(calibration, DeidOptions(retain_device_identity=True),
                          is_sequence=False) == "K"  # fmt: skip
    both = DeidOptions(retain_device_identity=True, dates="shift")
    assert resolve_action(calibration, both, is_sequence=False) == "C"
    assert resolve_action(profile.rule_for(0x00080018), DeidOptions(retain_uids=True),
                          is_sequence=False) == "K"  # fmt: skip


def test_dates_shift_back_keeping_precision_time_and_zone() -> None:
    assert shift_date("20240115", 15) == "20231231"
    assert shift_date("1994.11.05", 5) == "19941031"  # the retired ACR-NEMA form
    assert shift_date("2024", 400) == "2022"
    assert shift_date("not a date", 1) is None
    assert shift_datetime("20240301101500.123456+0100", 1) == "20240229101500.123456+0100"
    assert shift_datetime("20240301-0500", 1) == "20240229-0500"


# --- pydicom's real files -----------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pydicom's test and charset files, imported once into one archive."""
    from dicom_archive.archive.store import init_archive

    root = tmp_path_factory.mktemp("corpus") / "archive"
    with init_archive(root) as archive:
        list(import_paths(archive, list(iter_pydicom_files())))
    return root


def _originals(archive: Archive) -> dict[str, Dataset]:
    """Archived data sets by SOP Instance UID."""
    found = {}
    for (relative,) in archive.index.connection.execute("SELECT file_path FROM instances"):
        ds = read(archive.root / relative)
        found[str(ds.SOPInstanceUID)] = ds
    return found


def _identifying_texts(ds: Dataset) -> set[str]:
    """Values of the original that must appear nowhere in a basic-profile output."""
    texts = set()
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "ReferringPhysicianName",
                    "InstitutionName", "OtherPatientIDs", "PatientAddress"):  # fmt: skip
        value = ds.get(keyword)
        if value:
            for item in value if isinstance(value, MultiValue) else [value]:
                text = str(item).strip()
                # Short or generic values ("M", "ANON", "0") occur by chance everywhere.
                if len(text) >= 6 and text.upper() not in ("ANONYMIZED", "ANONYMOUS"):
                    texts.add(text)
    return texts


@pytest.mark.parametrize(
    "options",
    [DeidOptions(), DeidOptions(clean_descriptors=True, dates="shift"), ALL_OPTIONS],
    ids=["basic", "clean+shift", "all-options"],
)
def test_no_attribute_the_profile_removes_survives_in_pydicoms_files(
    corpus: Path, tmp_path: Path, options: DeidOptions
) -> None:
    """Every element of every output, at every depth, obeys the table: nothing it
    removes is there, what it empties is empty, UIDs are replaced, private groups and
    curves and overlays are gone; the identifying values of the original appear in no
    value; pixel data and transfer syntax are the original's."""
    from dicom_archive.archive.store import open_archive

    profile = load_profile()
    with open_archive(corpus) as archive:
        errors = _export_all(archive, tmp_path / "out", options)
        originals = _originals(archive)
        keyer = keyer_of(archive)
    # One of pydicom's files is implicit VR under an explicit transfer syntax: pydicom
    # reads it but cannot write it back; it is reported, not written.
    assert len(errors) <= 1 and all("cannot de-identify" in e for e in errors), errors
    by_new_uid = {keyer.uid(uid): ds for uid, ds in originals.items()}
    files = outputs(tmp_path / "out")
    assert len(files) >= len(originals) - 1 >= 120
    for path in files:
        out = read(path)
        original = by_new_uid[str(out.SOPInstanceUID)]
        for where, depth, elem in walk(out):
            rule = profile.rule_for(elem.tag)
            assert not elem.tag.is_private, f"{path.name}: private {where} survives"
            if rule is None:
                continue
            action = resolve_action(rule, options, is_sequence=elem.VR == "SQ")
            assert action != "X", f"{path.name}: {where} {rule.name} survives ({rule.basic})"
            pseudonymised = depth == 0 and elem.tag in (0x00100010, 0x00100020)
            if action == "Z" and not pseudonymised:
                empty = elem.value in (None, "", b"") or (elem.VR == "SQ" and not elem.value)
                assert empty, f"{path.name}: {where} {rule.name} not emptied: {elem.value!r}"
            if action == "U" and elem.VR == "UI" and elem.value:
                assert str(elem.value).startswith("2.25."), f"{path.name}: {where}"
        assert not uid_values(out) & set(originals) - _well_known(original), path.name
        if options == ALL_OPTIONS:
            continue  # it keeps the institution's name, as asked
        # What the table handles (descriptions cleaned or not) shows none of the
        # patient's values; what it does not list is kept, as the standard says (a
        # Manufacturer of "TOSHIBA_MEC" beside an Institution Name of "TOSHIBA").
        texts = _identifying_texts(original)
        for where, _, elem in walk(out):
            if profile.rule_for(elem.tag) is None:
                continue
            if isinstance(elem.value, str | pydicom.valuerep.PersonName):
                for text in texts:
                    assert text.lower() not in str(elem.value).lower(), (path.name, where, text)
    for path in files:
        out = read(path)
        original = by_new_uid[str(out.SOPInstanceUID)]
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert out.file_meta.TransferSyntaxUID == original.file_meta.get(
            "TransferSyntaxUID", out.file_meta.TransferSyntaxUID
        )
        if "PixelData" in original:
            assert "PixelData" in out, f"{path.name}: pixel data lost"
            assert out.PixelData == original.PixelData, f"{path.name}: pixel data changed"
        assert out.PatientIdentityRemoved == "YES"
        codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
        assert codes[0] == "113100" and codes == [c for c, _ in options.method_codes()]


def _well_known(ds: Dataset) -> set[str]:
    """UIDs a file may keep (classes, transfer syntaxes: never in the table as U)."""
    return {str(ds.get("SOPClassUID", ""))}


def test_retain_uids_keeps_every_uid(corpus: Path, tmp_path: Path) -> None:
    from dicom_archive.archive.store import open_archive

    with open_archive(corpus) as archive:
        export_deidentified(
            archive, Selector(patient_id="1CT1"), tmp_path, DeidOptions(retain_uids=True)
        )
        originals = _originals(archive)
    files = outputs(tmp_path)
    assert files
    for path in files:
        out = read(path)
        assert uid_values(out) - {"2.25."} <= uid_values(originals[str(out.SOPInstanceUID)]) | {
            str(out.file_meta.TransferSyntaxUID)
        }


def test_overlays_are_removed_with_their_whole_group(archive: Archive, tmp_path: Path) -> None:
    """pydicom's examples_overlay.dcm: no element of group 60xx is left (Overlay Data is X
    in the table; the rest would describe a plane that is no longer there)."""
    from pydicom.data import get_testdata_file

    source = Path(get_testdata_file("examples_overlay.dcm"))
    assert any(0x6000 <= e.tag.group <= 0x60FF for e in read(source))
    _import(archive, [source])
    patient_id = str(read(source).PatientID)
    export_deidentified(archive, Selector(patient_id=patient_id), tmp_path / "o", DeidOptions())
    (path,) = outputs(tmp_path / "o")
    assert not [e.tag for _, _, e in walk(read(path)) if 0x6000 <= e.tag.group <= 0x60FF]


# --- synthetic studies: references, pseudonyms, dates -------------------------------------


def _study_with_references(
    folder: Path, patient_id: str = "PAT-001", **values: object
) -> list[Path]:
    """Two series of three CT images: each image references the one before it (in
    sequences, and in sequences of sequences), all share one frame of reference, and
    private, curve and overlay elements are there to be removed."""
    study, frame = new_uid(), new_uid()
    series = [new_uid(), new_uid()]
    paths: list[Path] = []
    previous: Dataset | None = None
    for s, series_uid in enumerate(series):
        for i in range(3):
            ds = make_instance(
                PatientID=patient_id, StudyInstanceUID=study, SeriesInstanceUID=series_uid,
                FrameOfReferenceUID=frame, SeriesNumber=s + 1, InstanceNumber=i + 1,
                InstitutionName="St. Elsewhere Hospital", StationName="CT-ROOM-3",
                DeviceSerialNumber="SN-998877", OperatorsName="Tech^Tina",
                StudyDescription=f"CT HEAD for {patient_id} Müller, ACC001 on 15.01.2024",
                SeriesDate="20240116", AcquisitionDateTime="20240116101500.5+0100",
                ContentDate="20240117", ContentTime="101500", PatientAge="054Y",
                **values,
            )  # fmt: skip
            if previous is not None:
                ref = Dataset()
                ref.ReferencedSOPClassUID = previous.SOPClassUID
                ref.ReferencedSOPInstanceUID = previous.SOPInstanceUID
                ds.ReferencedImageSequence = Sequence([ref])
                source = Dataset()
                source.ReferencedSOPClassUID = previous.SOPClassUID
                source.ReferencedSOPInstanceUID = previous.SOPInstanceUID
                ds.SourceImageSequence = Sequence([source])
                nested = Dataset()
                nested.SeriesInstanceUID = previous.SeriesInstanceUID
                nested.ReferencedInstanceSequence = Sequence([ref])
                ds.ReferencedSeriesSequence = Sequence([nested])
            block = ds.private_block(0x0009, "ACME 1.0", create=True)
            block.add_new(0x01, "LO", f"secret of {patient_id}")
            ds.add_new(0x50000005, "US", 1)  # Curve Dimensions
            ds.add_new(0x50003000, "OW", b"\x00\x01" * 4)  # Curve Data
            ds.add_new(0x60000010, "US", 8)  # Overlay Rows
            ds.add_new(0x60000011, "US", 8)  # Overlay Columns
            ds.add_new(0x60003000, "OW", b"\xff" * 8)  # Overlay Data
            ds.add_new(0x60004000, "LT", f"overlay of {patient_id}")
            paths.append(write_dataset(ds, folder / f"s{s}i{i}.dcm"))
            previous = ds
    return paths


def test_references_stay_valid_within_a_study_and_across_two_exports(
    archive: Archive, tmp_path: Path
) -> None:
    """Every Referenced SOP/Series Instance UID of the output names an output
    instance or series; a series exported alone and the whole study exported later
    give identical files, so references between the two exports hold too."""
    files = _study_with_references(tmp_path / "in")
    _import(archive, files)
    first = read(files[0])
    series_only = Selector(series_uid=str(first.SeriesInstanceUID))
    export_deidentified(archive, series_only, tmp_path / "a", DeidOptions())
    report = export_deidentified(archive, Selector(study_uid=str(first.StudyInstanceUID)),
                                 tmp_path / "b", DeidOptions())  # fmt: skip
    assert report.written == 6 and not report.errors
    outs = [read(p) for p in outputs(tmp_path / "b")]
    sops = {str(ds.SOPInstanceUID) for ds in outs}
    series = {str(ds.SeriesInstanceUID) for ds in outs}
    assert len(sops) == 6 and len(series) == 2
    assert len({str(ds.StudyInstanceUID) for ds in outs}) == 1
    assert len({str(ds.FrameOfReferenceUID) for ds in outs}) == 1
    originals = {str(read(p).SOPInstanceUID) for p in files}
    references = 0
    for ds in outs:
        for where, _, elem in walk(ds):
            if elem.keyword == "ReferencedSOPInstanceUID":
                assert str(elem.value) in sops, where
                references += 1
            if elem.keyword == "SeriesInstanceUID" and "[" in where:
                assert str(elem.value) in series, where
        assert not uid_values(ds) & originals
    assert references == 5 * 3  # three references in each image but the first
    a_files = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in outputs(tmp_path / "a")}
    assert len(a_files) == 3
    for relative, data in a_files.items():
        assert (tmp_path / "b" / relative).read_bytes() == data


def test_pseudonyms_are_stable_per_patient_and_project_and_recorded_privately(
    archive: Archive, tmp_path: Path
) -> None:
    _import(archive, _study_with_references(tmp_path / "p1", "PAT-001"))
    _import(archive, _study_with_references(tmp_path / "p2", "PAT-002"))

    def pseudonym(patient_id: str, out: str, project: str = "default") -> set[str]:
        export_deidentified(archive, Selector(patient_id=patient_id), tmp_path / out,
                            DeidOptions(project=project))  # fmt: skip
        folder = tmp_path / out
        return {str(read(p).PatientID) for p in outputs(folder)} | {
            str(read(p).PatientName).replace("^", "-") for p in outputs(folder)
        }

    one = pseudonym("PAT-001", "x1")
    assert len(one) == 1 and next(iter(one)).startswith("ANON-")
    assert pseudonym("PAT-001", "x2") == one  # another export, the same pseudonym
    assert pseudonym("PAT-002", "x3") != one
    other_project = pseudonym("PAT-001", "x4", project="trial-B")
    assert other_project != one
    folder = deid_folder(archive.root)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("secret.key", "pseudonyms.db"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    with PseudonymMap(archive.root) as mapping:
        key = json.dumps(["PAT-001", ""])
        assert mapping.lookup("default", "patient", key) == next(iter(one))
        assert mapping.lookup("trial-B", "patient", key) == next(iter(other_project))
        (kind_original,) = mapping.originals_of("default", next(iter(one)))
        assert kind_original == ("patient", key)
        first = read(outputs(tmp_path / "x1")[0])
        originals = mapping.originals_of("default", str(first.SOPInstanceUID))
        assert len(originals) == 1 and originals[0][0] == "uid"


def test_shifted_dates_move_by_one_offset_per_patient_and_keep_intervals(
    archive: Archive, tmp_path: Path
) -> None:
    files = _study_with_references(tmp_path / "in")
    _import(archive, files)
    selector = Selector(patient_id="PAT-001")
    shifted = DeidOptions(dates="shift")
    export_deidentified(archive, selector, tmp_path / "a", shifted)
    export_deidentified(archive, selector, tmp_path / "b", shifted)
    offset = keyer_of(archive).date_offset_days(json.dumps(["PAT-001", ""]))
    assert 1 <= offset <= 3650

    def back(value: str) -> str:
        day = dt.datetime.strptime(value, "%Y%m%d").date() - dt.timedelta(days=offset)
        return day.strftime("%Y%m%d")

    for path in outputs(tmp_path / "a"):
        ds = read(path)
        assert ds.StudyDate == back("20240115")
        assert ds.SeriesDate == back("20240116")
        assert ds.ContentDate == back("20240117")
        assert ds.AcquisitionDateTime == back("20240116") + "101500.5+0100"
        assert ds.StudyTime == "101500" and ds.ContentTime == "101500"  # whole days move
        assert ds.PatientBirthDate == ""  # Z: not a longitudinal date
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
        assert (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes() == path.read_bytes()
    export_deidentified(archive, selector, tmp_path / "kept", DeidOptions(dates="retain"))
    export_deidentified(archive, selector, tmp_path / "gone", DeidOptions())
    kept, gone = read(outputs(tmp_path / "kept")[0]), read(outputs(tmp_path / "gone")[0])
    assert (
        kept.StudyDate == "20240115"
        and kept.LongitudinalTemporalInformationModified == "UNMODIFIED"
    )
    assert gone.StudyDate == "" and "AcquisitionDateTime" in gone  # X/Z/D -> dummy
    assert gone.AcquisitionDateTime == "19000101000000"


def test_private_curves_overlays_and_descriptors(archive: Archive, tmp_path: Path) -> None:
    """Basic: private, curve and overlay elements gone, descriptions removed. Clean
    Descriptors keeps a description without the patient's name, ID, accession number
    and dates; Retain Device/Institution Identity keep what they name."""
    _import(archive, _study_with_references(tmp_path / "in"))
    selector = Selector(patient_id="PAT-001")
    export_deidentified(archive, selector, tmp_path / "basic", DeidOptions())
    basic = read(outputs(tmp_path / "basic")[0])
    groups = {e.tag.group for _, _, e in walk(basic)}
    assert not {g for g in groups if g & 1 or 0x5000 <= g <= 0x50FF or 0x6000 <= g <= 0x60FF}
    assert "StudyDescription" not in basic and "OperatorsName" in basic
    assert basic.OperatorsName == "ANONYMIZED" and basic.InstitutionName == "ANONYMIZED"
    assert "PatientAge" not in basic
    export_deidentified(archive, selector, tmp_path / "clean", ALL_OPTIONS)
    clean = read(outputs(tmp_path / "clean")[0])
    assert clean.StudyDescription == "CT HEAD for ** **, ** on **"
    assert clean.InstitutionName == "St. Elsewhere Hospital"
    assert clean.StationName == "CT-ROOM-3" and clean.DeviceSerialNumber == "SN-998877"
    assert clean.PatientAge == "054Y"


def test_burned_in_annotation_is_reported_per_series(archive: Archive, tmp_path: Path) -> None:
    """US without Burned In Annotation, and any image stating YES, are named; a CT
    stating NO is not."""
    us = write_dataset(make_instance(Modality="US", PatientID="P-US"), tmp_path / "us.dcm")
    yes = write_dataset(
        make_instance(BurnedInAnnotation="YES", PatientID="P-US"), tmp_path / "y.dcm"
    )
    no = write_dataset(make_instance(BurnedInAnnotation="NO", PatientID="P-US"), tmp_path / "n.dcm")
    _import(archive, [us, yes, no])
    report = export_deidentified(
        archive, Selector(patient_id="P-US"), tmp_path / "o", DeidOptions()
    )
    reasons = sorted(
        (w.modality, w.reason.split(":")[0].split(";")[0]) for w in report.pixel_warnings
    )
    assert reasons == [
        ("CT", "Burned In Annotation is YES"),
        ("US", "Burned In Annotation is absent"),
    ]
    assert all(w.series_instance_uid.startswith("2.25.") for w in report.pixel_warnings)


def test_refusals_and_reexport(archive: Archive, tmp_path: Path) -> None:
    """Nothing selected raises; the output may not lie in the archive; a re-export
    skips identical files and refuses to overwrite a different one; no temporary
    file is left."""
    _import(archive, _study_with_references(tmp_path / "in"))
    with pytest.raises(ExportError, match="nothing in the archive"):
        export_deidentified(archive, Selector(patient_id="nobody"), tmp_path / "o", DeidOptions())
    with pytest.raises(ExportError, match="outside the archive"):
        export_deidentified(
            archive, Selector(patient_id="PAT-001"), archive.root / "x", DeidOptions()
        )
    selector = Selector(patient_id="PAT-001")
    assert export_deidentified(archive, selector, tmp_path / "o", DeidOptions()).written == 6
    again = export_deidentified(archive, selector, tmp_path / "o", DeidOptions())
    assert again.written == 0 and again.skipped_identical == 6 and not again.errors
    victim = outputs(tmp_path / "o")[0]
    victim.write_bytes(victim.read_bytes() + b"\0\0")
    third = export_deidentified(archive, selector, tmp_path / "o", DeidOptions())
    assert len(third.errors) == 1 and "not overwritten" in third.errors[0]
    leftovers = [p for p in (tmp_path / "o").rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_a_damaged_archived_file_is_not_exported(archive: Archive, tmp_path: Path) -> None:
    files = _study_with_references(tmp_path / "in")
    _import(archive, files)
    (relative,) = archive.index.connection.execute(
        "SELECT file_path FROM instances ORDER BY id LIMIT 1"
    ).fetchone()
    damaged = archive.root / relative
    os.chmod(damaged, 0o644)
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    report = export_deidentified(
        archive, Selector(patient_id="PAT-001"), tmp_path / "o", DeidOptions()
    )
    assert (
        report.written == 5
        and len(report.errors) == 1
        and "differs from its index" in report.errors[0]
    )


def test_a_d_sequence_keeps_its_structure_with_dummy_text(archive: Archive, tmp_path: Path) -> None:
    """Content Sequence is D: its items, value types and numbers stay; the free text,
    codes and names in it become dummies (keeping them is Clean Structured Content)."""
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "121071", "DCM"
    code.CodeMeaning = "Finding"
    text = Dataset()
    text.RelationshipType, text.ValueType = "CONTAINS", "TEXT"
    text.ConceptNameCodeSequence = Sequence([code])
    text.TextValue = "Mrs Müller, seen by Dr House on 15.01.2024"
    number = Dataset()
    number.RelationshipType, number.ValueType = "CONTAINS", "NUM"
    measured = Dataset()
    measured.NumericValue = "42"
    number.MeasuredValueSequence = Sequence([measured])
    ds = make_instance(PatientID="P-SR", ContentSequence=Sequence([text, number]))
    _import(archive, [write_dataset(ds, tmp_path / "sr.dcm")])
    export_deidentified(archive, Selector(patient_id="P-SR"), tmp_path / "o", DeidOptions())
    out = read(outputs(tmp_path / "o")[0])
    first, second = out.ContentSequence
    assert first.ValueType == "TEXT" and first.RelationshipType == "CONTAINS"
    assert first.TextValue == "ANONYMIZED"
    assert first.ConceptNameCodeSequence[0].CodeMeaning == "ANONYMIZED"
    assert second.MeasuredValueSequence[0].NumericValue == 42


def test_worker_processes_write_the_same_bytes_as_one_process(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large export runs in a pool of processes; a small one here: the files, the
    pseudonym map and the report are the same either way."""
    from dicom_archive.archive import deid_export

    files = write_studies(tmp_path / "in", StudySpec(series_per_study=2, instances_per_series=20))
    _import(archive, files)
    selector = Selector(patient_id="PAT00000")
    monkeypatch.setattr(deid_export, "_WORKERS", 2)
    pooled = export_deidentified(archive, selector, tmp_path / "pool", DeidOptions(dates="shift"))
    monkeypatch.setattr(deid_export, "_WORKERS", 1)
    alone = export_deidentified(archive, selector, tmp_path / "one", DeidOptions(dates="shift"))
    assert pooled.written == alone.written == 40
    one = {p.relative_to(tmp_path / "one"): p.read_bytes() for p in outputs(tmp_path / "one")}
    pool = {p.relative_to(tmp_path / "pool"): p.read_bytes() for p in outputs(tmp_path / "pool")}
    assert one == pool
    assert [p for p in tmp_path.rglob(".*")] == []


def test_elements_after_pixel_data_still_meet_the_profile(archive: Archive, tmp_path: Path) -> None:
    """Pixel Data is copied as it lies only when nothing follows it: a private group
    after it (GE's 7FE1) is removed like any other, and the pixels are unchanged."""
    ds = make_instance(PatientID="P-TAIL")
    block = ds.private_block(0x7FE1, "GEMS_Ultrasound_MovieGroup_001", create=True)
    block.add_new(0x01, "LO", "Müller's movie")
    source = write_dataset(ds, tmp_path / "tail.dcm")
    _import(archive, [source])
    export_deidentified(archive, Selector(patient_id="P-TAIL"), tmp_path / "o", DeidOptions())
    out = read(outputs(tmp_path / "o")[0])
    assert not [e.tag for e in out if e.tag.group == 0x7FE1]
    assert out.PixelData == read(source).PixelData


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="apt-get install dicom3tools")
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm",
                                  "examples_palette.dcm", "examples_overlay.dcm"])  # fmt: skip
def test_dciodvfy_finds_no_error_the_original_did_not_have(
    archive: Archive, tmp_path: Path, name: str
) -> None:
    """The IOD validator nobody here wrote: emptying and dummying compound-action
    attributes keeps every IOD as valid as it was (values in its messages aside)."""
    from pydicom.data import get_testdata_file

    source = Path(get_testdata_file(name))
    _import(archive, [source])
    patient_id = str(read(source).get("PatientID", ""))
    export_deidentified(archive, Selector(patient_id=patient_id), tmp_path / "o",
                        DeidOptions(dates="shift"))  # fmt: skip
    sop_class = read(source).SOPClassUID
    (path,) = [p for p in outputs(tmp_path / "o") if read(p).SOPClassUID == sop_class]

    def errors(file: Path) -> set[str]:
        run = subprocess.run(["dciodvfy", str(file)], capture_output=True, text=True)
        lines = (run.stdout + run.stderr).splitlines()
        return {re.sub(r" = <[^>]*>", "", x) for x in lines if x.startswith("Error")}

    assert errors(path) <= errors(source), sorted(errors(path) - errors(source))


def _with_private_blocks() -> Dataset:
    """A SAFE block, a MIXED block (one element safe, one with an action of its own,
    one undeclared) and an undescribed block, declared as PS3.3 C.12.1.1.7 says."""
    ds = make_instance(PatientID="P-PRIV")
    safe = ds.private_block(0x0019, "ACME SAFE", create=True)
    safe.add_new(0x01, "DS", "1.5")
    mixed = ds.private_block(0x0021, "ACME MIXED", create=True)
    mixed.add_new(0x01, "DS", "2.5")  # declared non-identifying
    mixed.add_new(0x02, "LO", "Müller^Jörg")  # identifying, action Z
    mixed.add_new(0x03, "LO", "operator Tina")  # not declared: removed
    ds.private_block(0x0023, "ACME UNKNOWN", create=True).add_new(0x01, "LO", "secret")
    items = []
    for group, creator, status in ((0x0019, "ACME SAFE", "SAFE"), (0x0021, "ACME MIXED", "MIXED")):
        item = Dataset()
        item.PrivateGroupReference = group
        item.PrivateCreatorReference = creator
        item.BlockIdentifyingInformationStatus = status
        if status == "MIXED":
            item.NonidentifyingPrivateElements = [0x01]
            action = Dataset()
            action.IdentifyingPrivateElements = [0x02]
            action.DeidentificationAction = "Z"
            item.DeidentificationActionSequence = Sequence([action])
        items.append(item)
    ds.PrivateDataElementCharacteristicsSequence = Sequence(items)
    return ds


def test_retain_safe_private_keeps_what_the_file_declares_safe(
    archive: Archive, tmp_path: Path
) -> None:
    _import(archive, [write_dataset(_with_private_blocks(), tmp_path / "p.dcm")])
    selector = Selector(patient_id="P-PRIV")
    export_deidentified(archive, selector, tmp_path / "basic", DeidOptions())
    basic = read(outputs(tmp_path / "basic")[0])
    assert not [e.tag for e in basic if e.tag.is_private]
    export_deidentified(archive, selector, tmp_path / "safe", DeidOptions(retain_safe_private=True))
    kept = read(outputs(tmp_path / "safe")[0])
    private = {(e.tag.group, e.tag.element): e.value for e in kept if e.tag.is_private}
    assert private == {
        (0x0019, 0x0010): "ACME SAFE",
        (0x0019, 0x1001): 1.5,
        (0x0021, 0x0010): "ACME MIXED",
        (0x0021, 0x1001): 2.5,
        (0x0021, 0x1002): "",  # Z, as the file asks
    }
    codes = [item.CodeValue for item in kept.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113111"]
