"""export copies in the kernel, hashes the copy and syncs once: the promises that
survive that (a damaged archived file is refused, never handed on; no temporary is
left; a stopped export stops) hold on both copy paths."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dicom_archive.archive import export as export_module
from dicom_archive.archive.export import Selector, export_instances
from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.store import Archive
from tests.factory import StudySpec, write_studies


@pytest.fixture
def filled(archive: Archive, tmp_path: Path) -> Archive:
    files = write_studies(
        tmp_path / "in", StudySpec(patients=1, series_per_study=2, instances_per_series=10)
    )
    assert all(o.outcome.value == "imported" for o in import_paths(archive, files))
    return archive


@pytest.fixture(params=["kernel", "user space"])
def copy_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of copying: copy_file_range, and read/hash/write where it is refused."""
    if request.param == "user space":

        def refused(*_args: object, **_kwargs: object) -> int:
            raise OSError(errno.EXDEV, "cross-device")

        monkeypatch.setattr(export_module.os, "copy_file_range", refused)
    return str(request.param)


def study(archive: Archive) -> str:
    return str(
        archive.index.connection.execute("SELECT study_instance_uid FROM studies").fetchone()[0]
    )


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_export_is_byte_identical(filled: Archive, tmp_path: Path, copy_path: str) -> None:
    out = tmp_path / "out"
    report = export_instances(filled, Selector(study_uid=study(filled)), out)
    assert report.copied == 20 and not report.errors
    exported = sorted(out.rglob("*.dcm"))
    assert len(exported) == 20 and not leftovers(out)
    for path in exported:
        assert path.read_bytes() == (filled.paths.data / path.relative_to(out)).read_bytes()


def test_a_damaged_archived_file_is_refused_not_exported(
    filled: Archive, tmp_path: Path, copy_path: str
) -> None:
    """One flipped byte, same size: that file is an error and absent; the rest is exported."""
    victim = sorted(filled.paths.data.rglob("*.dcm"))[5]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    out = tmp_path / "out"
    report = export_instances(filled, Selector(study_uid=study(filled)), out)
    assert report.copied == 19 and len(report.errors) == 1
    assert "differs from its index entry" in report.errors[0]
    assert str(victim.relative_to(filled.root)) in report.errors[0]
    assert not (out / victim.relative_to(filled.paths.data)).exists()
    assert not leftovers(out)


def test_a_grown_archived_file_is_refused(filled: Archive, tmp_path: Path, copy_path: str) -> None:
    """Bytes appended after import: the whole file is copied and hashed, so it differs."""
    victim = sorted(filled.paths.data.rglob("*.dcm"))[0]
    with open(victim, "ab") as handle:
        handle.write(b"\0" * 10)
    report = export_instances(filled, Selector(study_uid=study(filled)), tmp_path / "out")
    assert report.copied == 19 and len(report.errors) == 1


def test_an_existing_identical_file_is_skipped(filled: Archive, tmp_path: Path) -> None:
    out = tmp_path / "out"
    selector = Selector(study_uid=study(filled))
    export_instances(filled, selector, out)
    again = export_instances(filled, selector, out)
    assert again.skipped_identical == 20 and again.copied == 0 and not again.errors


def test_an_interrupted_export_stops_and_leaves_no_temporary(
    filled: Archive, tmp_path: Path
) -> None:
    """Ctrl-C while files are in flight: no new copies start, the workers are gone
    (the autouse fixture fails leaked threads), nothing half-written stays."""
    out = tmp_path / "out"
    heard: list[str] = []

    def on_file(_item: object, status: str) -> None:
        heard.append(status)
        if len(heard) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_instances(filled, Selector(study_uid=study(filled)), out, on_file=on_file)
    exported = list(out.rglob("*.dcm"))
    assert 2 <= len(exported) < 20
    assert not leftovers(out)
    for path in exported:  # what is there is whole
        assert path.read_bytes() == (filled.paths.data / path.relative_to(out)).read_bytes()


def test_on_file_hears_files_in_selection_order(filled: Archive, tmp_path: Path) -> None:
    heard: list[str] = []
    export_instances(
        filled,
        Selector(study_uid=study(filled)),
        tmp_path / "out",
        on_file=lambda item, _status: heard.append(item.file_path),
    )
    expected = [
        row[0]
        for row in filled.index.connection.execute(
            "SELECT i.file_path FROM instances i JOIN series se ON se.id = i.series_pk "
            "ORDER BY se.id, i.instance_number, i.id"
        )
    ]
    assert heard == expected


def test_flatten_and_layout_targets() -> None:
    from dicom_archive.archive.export import ExportItem, destination_for

    item = ExportItem("1.2", "data/P/ST/SE/1.2.dcm", 1, "")
    assert destination_for(item, Path("/o"), False) == Path("/o/P/ST/SE/1.2.dcm")
    assert destination_for(item, Path("/o"), True) == Path("/o/1.2.dcm")
    assert os.fspath(destination_for(item, Path("o/"), False)) == "o/P/ST/SE/1.2.dcm"
