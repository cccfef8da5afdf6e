"""Every file pydicom ships gets the outcome it deserves."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pydicom
import pytest

from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.integrity import check_archive
from dicom_archive.archive.records import ImportOutcome, Outcome
from dicom_archive.archive.store import Archive
from tests.factory import iter_pydicom_files


@pytest.fixture(scope="module")
def corpus_outcomes(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Archive, list[ImportOutcome]]:
    from dicom_archive.archive.store import init_archive

    archive = init_archive(tmp_path_factory.mktemp("corpus") / "archive")
    files = list(iter_pydicom_files())
    results = list(import_paths(archive, files))
    yield archive, results  # type: ignore[misc]
    archive.close()


def by_name(results: list[ImportOutcome]) -> dict[str, ImportOutcome]:
    return {r.source.name: r for r in results}


def test_every_file_gets_one_outcome(corpus_outcomes: tuple[Archive, list[ImportOutcome]]) -> None:
    _, results = corpus_outcomes
    assert len(results) == len(list(iter_pydicom_files()))
    assert not [r for r in results if r.outcome is Outcome.FAILED]


@pytest.mark.skipif(not pydicom.__version__.startswith("3.0"), reason="counts are for pydicom 3.0")
def test_outcome_counts_for_pydicom_3_0(
    corpus_outcomes: tuple[Archive, list[ImportOutcome]],
) -> None:
    _, results = corpus_outcomes
    counts = Counter(r.outcome.value for r in results)
    assert counts == {"imported": 131, "duplicate": 1, "conflict": 29, "rejected": 33}
    reasons = Counter(
        r.reason.split(":")[0].split(" (")[0] for r in results if r.outcome is Outcome.REJECTED
    )
    assert reasons == {
        "not a DICOM file": 11,
        "missing SOP Instance UID, Study Instance UID, Series Instance UID": 8,
        "missing Study Instance UID, Series Instance UID": 4,
        "a DICOMDIR is a media directory, not an instance": 8,
        "truncated": 2,
    }


@pytest.mark.parametrize(
    ("name", "outcome", "reason"),
    [
        ("CT_small.dcm", Outcome.IMPORTED, ""),
        ("MR_truncated.dcm", Outcome.REJECTED, "truncated: Pixel Data is 62 bytes short"),
        ("rtplan_truncated.dcm", Outcome.REJECTED, "truncated"),
        ("README.txt", Outcome.REJECTED, "not a DICOM file (no DICM prefix)"),
        ("zipMR.gz", Outcome.REJECTED, "not a DICOM file"),
        ("chrH31.dcm", Outcome.IMPORTED, ""),
        ("SC_rgb_jpeg.dcm", Outcome.IMPORTED, ""),
        ("MR_small_padded.dcm", Outcome.CONFLICT, "different bytes"),
    ],
)
def test_known_files(
    corpus_outcomes: tuple[Archive, list[ImportOutcome]],
    name: str,
    outcome: Outcome,
    reason: str,
) -> None:
    result = by_name(corpus_outcomes[1])[name]
    assert result.outcome is outcome
    assert reason in result.reason


def test_archived_corpus_verifies_clean(
    corpus_outcomes: tuple[Archive, list[ImportOutcome]],
) -> None:
    """Every accepted file can be re-read and re-hashed from the archive."""
    archive, results = corpus_outcomes
    report = check_archive(archive, verify_files=True)
    assert report.clean, report.findings[:5]
    assert report.instances_checked == sum(r.outcome is Outcome.IMPORTED for r in results)
    for result in results:
        if result.outcome is Outcome.IMPORTED:
            assert (archive.root / result.archived_path).read_bytes() == Path(
                result.source
            ).read_bytes()
