"""A conflict says what differs: attributes by keyword, pixel data, transfer syntax."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom_archive.archive import conflicts
from dicom_archive.archive.conflicts import detail_lines, diff_files, safe_text, summary
from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.records import ConflictDiff, Outcome
from dicom_archive.archive.store import Archive
from tests.factory import make_instance, write_dataset

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"


def pair(tmp_path: Path, **changes: object) -> tuple[Path, Path]:
    """Two files of one instance (same UIDs, same pixels) that differ by ``changes``."""
    ds = make_instance()
    first = write_dataset(ds, tmp_path / "archived.dcm")
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return first, write_dataset(ds, tmp_path / "incoming.dcm")


def keywords(diff: ConflictDiff) -> list[str]:
    return [d.keyword for d in diff.differences]


def test_names_exactly_the_attributes_that_differ(tmp_path: Path) -> None:
    """A pair differing only in PatientName and StudyDate reports those two, nothing else."""
    archived, incoming = pair(tmp_path, PatientName="Other^Name", StudyDate="20240116")
    diff = diff_files(archived, incoming)
    assert keywords(diff) == ["StudyDate", "PatientName"]
    assert diff.total == 2 and not diff.unavailable
    assert not diff.pixel_data_differs and not diff.transfer_syntax_differs
    name = diff.differences[1]
    assert (name.tag, name.vr, name.archived, name.incoming) == (
        0x00100010,
        "PN",
        "Müller^Jörg",
        "Other^Name",
    )
    assert summary(diff) == (
        "differs: StudyDate ('20240115' vs '20240116'), PatientName ('Müller^Jörg' vs 'Other^Name')"
    )


def test_an_added_or_removed_attribute_is_absent_on_one_side(tmp_path: Path) -> None:
    ds = make_instance()
    archived = write_dataset(ds, tmp_path / "a.dcm")
    del ds.BodyPartExamined
    ds.ImageComments = "new"
    diff = diff_files(archived, write_dataset(ds, tmp_path / "b.dcm"))
    assert [(d.keyword, d.archived, d.incoming) for d in diff.differences] == [
        ("BodyPartExamined", "HEAD", None),
        ("ImageComments", None, "new"),
    ]
    assert "BodyPartExamined ('HEAD' vs absent)" in summary(diff)


def test_hostile_values_are_escaped_never_passed_through(tmp_path: Path) -> None:
    """Escape sequences, newlines and bidi overrides from a file cannot reach a terminal."""
    hostile = "\x1b[31mEVIL\x1b[0m\nforged: line\u202e"
    archived, incoming = pair(tmp_path, StudyDescription=hostile)
    diff = diff_files(archived, incoming)
    [difference] = diff.differences
    assert difference.incoming == "\\x1b[31mEVIL\\x1b[0m\\x0aforged: line\\u202e"
    for text in [summary(diff), *detail_lines(diff)]:
        assert not any(ch in text for ch in "\x1b\n\r\u202e"), repr(text)


def test_long_values_are_truncated(tmp_path: Path) -> None:
    archived, incoming = pair(tmp_path, ImageComments="x" * 5000)
    [difference] = diff_files(archived, incoming).differences
    assert difference.incoming is not None
    assert len(difference.incoming) == conflicts.VALUE_LIMIT
    assert difference.incoming.endswith("…")
    assert safe_text("\x00" * 1000) == "\\x00" * (conflicts.VALUE_LIMIT - 1) + "…"


def test_the_first_differences_are_kept_and_all_counted(tmp_path: Path) -> None:
    changes = {
        "PatientName": "A",
        "PatientID": "B",
        "StudyDate": "20000101",
        "StudyTime": "000000",
        "AccessionNumber": "X",
        "StudyDescription": "Y",
        "SeriesDescription": "Z",
    }
    archived, incoming = pair(tmp_path, **changes)
    diff = diff_files(archived, incoming, limit=4)
    assert len(diff.differences) == 4 and diff.total == 7 and diff.omitted == 3
    assert summary(diff).endswith(", +4 more")  # three named, four more
    assert detail_lines(diff)[-1] == "+3 more not listed"
    assert diff_files(archived, incoming).total == 7


def test_file_meta_differences_come_after_the_dataset(tmp_path: Path) -> None:
    ds = make_instance()
    archived = write_dataset(ds, tmp_path / "a.dcm")
    ds.PatientSex = "F"
    incoming = write_dataset(ds, tmp_path / "b.dcm")
    ds.file_meta.ImplementationVersionName = "OTHER_1"
    ds.save_as(incoming, enforce_file_format=True)
    assert keywords(diff_files(archived, incoming)) == [
        "PatientSex",
        "FileMetaInformationGroupLength",
        "ImplementationVersionName",
    ]


def test_pixel_data_compared_by_length_and_hash(tmp_path: Path) -> None:
    ds = make_instance(rows=4, columns=4)
    archived = write_dataset(ds, tmp_path / "a.dcm")
    ds.PixelData = bytes(reversed(ds.PixelData))
    diff = diff_files(archived, write_dataset(ds, tmp_path / "b.dcm"))
    assert diff.pixel_data_differs and diff.differences == ()
    assert diff.archived_pixel_bytes == diff.incoming_pixel_bytes == 32
    assert summary(diff) == "differs: pixel data (32 bytes each, different content)"


def test_a_difference_inside_a_sequence_names_its_path(tmp_path: Path) -> None:
    def referenced(uid: str) -> Sequence:
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = uid
        return Sequence([item])

    ds = make_instance(ReferencedImageSequence=referenced("1.2.3"))
    archived = write_dataset(ds, tmp_path / "a.dcm")
    ds.ReferencedImageSequence = referenced("1.2.4")
    diff = diff_files(archived, write_dataset(ds, tmp_path / "b.dcm"))
    [difference] = diff.differences
    assert difference.keyword == "ReferencedImageSequence[0].ReferencedSOPInstanceUID"
    assert (difference.archived, difference.incoming) == ("1.2.3", "1.2.4")
    ds.ReferencedImageSequence = Sequence([*referenced("1.2.3"), *referenced("1.2.5")])
    [count] = diff_files(archived, write_dataset(ds, tmp_path / "c.dcm")).differences
    assert (count.keyword, count.vr, count.archived, count.incoming) == (
        "ReferencedImageSequence",
        "SQ",
        "<1 item>",
        "<2 items>",
    )
    assert "ReferencedImageSequence (<1 item> vs <2 items>)" in summary(
        diff_files(archived, tmp_path / "c.dcm")
    )


def test_private_elements_are_named_by_tag(tmp_path: Path) -> None:
    ds = make_instance()
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "before")
    archived = write_dataset(ds, tmp_path / "a.dcm")
    block[0x01].value = "after"
    diff = diff_files(archived, write_dataset(ds, tmp_path / "b.dcm"))
    [difference] = diff.differences
    assert (difference.keyword, difference.tag_text) == ("(0009,1001)", "(0009,1001)")
    assert (difference.archived, difference.incoming) == ("before", "after")


def test_real_files_in_two_transfer_syntaxes() -> None:
    """pydicom's MR_small as explicit VR and as RLE: same header, re-encoded pixels."""
    diff = diff_files(TEST_FILES / "MR_small.dcm", TEST_FILES / "MR_small_RLE.dcm")
    assert diff.transfer_syntax_differs and diff.pixel_data_differs
    assert (diff.archived_transfer_syntax, diff.incoming_transfer_syntax) == (
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.5",
    )
    assert (diff.archived_pixel_bytes, diff.incoming_pixel_bytes) == (8192, 6128)
    # Only the file meta written by another tool differs in the header.
    assert all(d.tag >> 16 == 0x0002 for d in diff.differences), keywords(diff)
    assert summary(diff).startswith(
        "differs: transfer syntax (Explicit VR Little Endian vs RLE Lossless), "
        "pixel data (8,192 bytes vs 6,128 bytes), FileMetaInformationGroupLength"
    )
    assert detail_lines(diff)[0] == (
        "transfer syntax: Explicit VR Little Endian (1.2.840.10008.1.2.1) vs "
        "RLE Lossless (1.2.840.10008.1.2.5)"
    )


def test_real_files_implicit_vr_has_the_same_pixel_bytes() -> None:
    diff = diff_files(TEST_FILES / "MR_small.dcm", TEST_FILES / "MR_small_implicit.dcm")
    assert diff.transfer_syntax_differs and not diff.pixel_data_differs
    assert "DataSetTrailingPadding" in keywords(diff)  # after the pixels, compared too


def test_real_files_differing_in_a_sequence_and_in_frames() -> None:
    diff = diff_files(TEST_FILES / "rtdose.dcm", TEST_FILES / "rtdose_1frame.dcm")
    assert diff.pixel_data_differs and "NumberOfFrames" in keywords(diff)
    assert not diff.transfer_syntax_differs


def test_deflated_files_are_compared_too(tmp_path: Path) -> None:
    ds = make_instance()
    archived, incoming = tmp_path / "a.dcm", tmp_path / "b.dcm"
    write_dataset(ds, archived)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(archived, enforce_file_format=True)
    ds.PatientName = "Deflated^Other"
    ds.PixelData = bytes(len(ds.PixelData))
    ds.save_as(incoming, enforce_file_format=True)
    diff = diff_files(archived, incoming)
    assert diff.archived_transfer_syntax == DeflatedExplicitVRLittleEndian
    assert keywords(diff) == ["PatientName"] and diff.pixel_data_differs


def test_an_unreadable_file_gives_a_reason_not_an_exception(tmp_path: Path) -> None:
    archived, incoming = pair(tmp_path, PatientName="X")
    archived.write_bytes(b"garbage" * 100)
    diff = diff_files(archived, incoming)
    assert diff.unavailable.startswith("the archived copy: not a DICOM file")
    assert summary(diff).startswith("(diff unavailable: the archived copy: not a DICOM file")
    assert diff_files(archived, tmp_path / "gone.dcm").unavailable.startswith("the archived")
    assert diff_files(incoming, tmp_path / "gone.dcm").unavailable == "the incoming file is gone"


def test_a_bug_in_the_diff_is_still_only_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archived, incoming = pair(tmp_path, PatientName="X")

    def broken(*_: object) -> None:
        raise RuntimeError("boom\x1b[2J")

    monkeypatch.setattr(conflicts, "_compare", broken)
    assert diff_files(archived, incoming).unavailable == "RuntimeError: boom\\x1b[2J"


def test_large_files_are_compared_in_flat_memory(tmp_path: Path) -> None:
    """Pixel Data is hashed in chunks: 2 x 48 MB compared with a few MB of memory."""
    size = 48 * 1024 * 1024
    ds = make_instance(rows=4096, columns=6144, PixelData=bytes(size))
    archived = write_dataset(ds, tmp_path / "a.dcm")
    ds.PixelData = bytes(size - 1) + b"\x01"
    incoming = write_dataset(ds, tmp_path / "b.dcm")
    del ds
    tracemalloc.start()
    try:
        diff = diff_files(archived, incoming)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert diff.pixel_data_differs and diff.differences == ()
    assert peak < 8 * 1024 * 1024, peak


def test_importer_attaches_the_diff_to_conflicts_only(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = make_instance()
    first = write_dataset(ds, tmp_path / "first.dcm")
    ds.PatientName = "Other^Name"
    second = write_dataset(ds, tmp_path / "second.dcm")
    [imported] = import_paths(archive, [first])
    assert imported.conflict is None
    [conflict] = import_paths(archive, [second])
    assert conflict.outcome is Outcome.CONFLICT and conflict.conflict is not None
    assert keywords(conflict.conflict) == ["PatientName"]
    # An imported file or a duplicate never pays for a diff.
    calls: list[object] = []
    monkeypatch.setattr(
        "dicom_archive.archive.importer.diff_files", lambda *a, **k: calls.append(a)
    )
    [duplicate] = import_paths(archive, [first])
    assert duplicate.outcome is Outcome.DUPLICATE and duplicate.conflict is None
    ds2 = make_instance()
    [new] = import_paths(archive, [write_dataset(ds2, tmp_path / "new.dcm")])
    assert new.outcome is Outcome.IMPORTED and calls == []


def test_a_conflict_within_one_batch_is_explained(archive: Archive, tmp_path: Path) -> None:
    ds = make_instance()
    first = write_dataset(ds, tmp_path / "first.dcm")
    ds.StudyDate = "19991231"
    second = write_dataset(ds, tmp_path / "second.dcm")
    imported, conflict = import_paths(archive, [first, second])
    assert imported.outcome is Outcome.IMPORTED and conflict.outcome is Outcome.CONFLICT
    assert conflict.conflict is not None and keywords(conflict.conflict) == ["StudyDate"]


def test_a_conflict_whose_diff_fails_is_still_a_conflict(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = make_instance()
    first = write_dataset(ds, tmp_path / "first.dcm")
    ds.PatientName = "Other"
    second = write_dataset(ds, tmp_path / "second.dcm")
    list(import_paths(archive, [first]))

    def unreadable(path: Path) -> None:
        raise MemoryError("too big")

    monkeypatch.setattr(conflicts, "read_for_comparison", unreadable)
    [conflict] = import_paths(archive, [second])
    assert conflict.outcome is Outcome.CONFLICT and "different bytes" in conflict.reason
    assert conflict.conflict is not None
    assert conflict.conflict.unavailable == "MemoryError: too big"
