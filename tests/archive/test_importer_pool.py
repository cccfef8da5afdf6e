"""The worker pool changes speed, never outcomes."""

from __future__ import annotations

from pathlib import Path

import pydicom.data
import pytest

from dicom_archive.archive import importer as importer_module
from dicom_archive.archive.importer import Importer
from dicom_archive.archive.records import Outcome
from dicom_archive.archive.store import init_archive
from tests.factory import write_instance

_DATA = Path(pydicom.data.__file__).parent


def _run(
    root: Path, files: list[Path], workers: int, prefetch: bool = True
) -> list[tuple[str, str, str, str]]:
    with init_archive(root) as archive, Importer(archive, workers=workers) as importer:
        importer.prefetch = prefetch
        outcomes = list(importer.import_files(files))
        leftovers = list(archive.paths.tmp.iterdir())
    assert leftovers == [], "no temporary copy outlives its batch"
    return [(str(o.source), o.outcome.value, o.archived_path, o.reason) for o in outcomes]


@pytest.mark.filterwarnings("ignore")
def test_pool_gives_the_same_outcomes_as_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pydicom's files (imports, duplicates, conflicts, rejections) read by worker
    processes, by a reader thread or in place give identical outcomes, reasons and
    archive paths."""
    monkeypatch.setattr(importer_module, "POOL_MIN_BATCH", 1)
    monkeypatch.setattr(importer_module, "POOL_MIN_FILE_SIZE", 0)
    files = sorted(p for p in _DATA.rglob("*") if p.is_file())
    alone = _run(tmp_path / "alone", files, workers=1, prefetch=False)
    pooled = _run(tmp_path / "pooled", files, workers=2)
    threaded = _run(tmp_path / "threaded", files, workers=1, prefetch=True)
    assert pooled == alone
    assert threaded == alone
    kinds = {outcome for _, outcome, _, _ in alone}
    assert {"imported", "duplicate", "conflict", "rejected"} <= kinds


def test_pool_reads_the_next_batch_while_committing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many batches through the pool: every file imported once, in order."""
    monkeypatch.setattr(importer_module, "POOL_MIN_BATCH", 1)
    monkeypatch.setattr(importer_module, "POOL_MIN_FILE_SIZE", 0)
    files = [write_instance(tmp_path / "in" / f"{i}.dcm") for i in range(40)]
    with (
        init_archive(tmp_path / "a") as archive,
        Importer(archive, batch_size=6, workers=2) as importer,
    ):
        outcomes = list(importer.import_files(files))
        assert archive.index.instance_count() == 40
    assert [o.source for o in outcomes] == files
    assert {o.outcome for o in outcomes} == {Outcome.IMPORTED}
