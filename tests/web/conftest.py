from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient

from dicom_archive.archive.importer import Importer
from dicom_archive.archive.store import init_archive, open_archive
from dicom_archive.web.server import WebServer
from dicom_archive.web.settings import WebSettings
from tests.factory import StudySpec, write_instance, write_studies

#: pydicom files of several transfer syntaxes, vendors and character sets.
PYDICOM_FILES = (
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle_2frame.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "examples_ybr_color.dcm",
)


@dataclass
class Served:
    root: Path
    server: WebServer
    url: str
    sources: list[Path]

    def client(self) -> DICOMwebClient:
        return DICOMwebClient(self.url)


def import_files(root: Path, files: list[Path]) -> None:
    with open_archive(root) as archive, Importer(archive, workers=0) as importer:
        outcomes = list(importer.import_files(files))
    assert all(o.outcome.value in ("imported", "duplicate") for o in outcomes), [
        (o.source.name, o.reason) for o in outcomes if o.reason
    ]


def build_archive(tmp_path: Path) -> tuple[Path, list[Path]]:
    from pydicom.data import get_testdata_file

    root = tmp_path / "archive"
    init_archive(root).close()
    sources = write_studies(tmp_path / "in", StudySpec(patients=3, series_per_study=2))
    sources.append(
        write_instance(tmp_path / "in" / "nomod.dcm", Modality=None, PatientName="SMITH^ANNA")
    )
    for name in PYDICOM_FILES:
        target = tmp_path / "in" / "pydicom" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(get_testdata_file(name), target)
        sources.append(target)
    import_files(root, sources)
    return root, sources


def serve(root: Path, **options: object) -> WebServer:
    server = WebServer(WebSettings(archive_root=root, port=0, **options))  # type: ignore[arg-type]
    server.start()
    return server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp_path = tmp_path_factory.mktemp("web")
    root, sources = build_archive(tmp_path)
    server = serve(root)
    try:
        yield Served(root, server, server.url, sources)
    finally:
        stop_and_check(server)


_SERVER_THREADS = ("AnyIO worker thread",)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """As the suite's own check, except for the worker threads of a server that
    outlives the test (a module's server): ``served`` checks those end with it."""
    before = set(threading.enumerate())
    yield
    leaked = [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.daemon and t.name not in _SERVER_THREADS
    ]
    for thread in leaked:
        thread.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads left running: {still}"


def stop_and_check(server: WebServer) -> None:
    server.stop()
    workers = [t for t in threading.enumerate() if t.name in _SERVER_THREADS]
    for thread in workers:
        thread.join(timeout=20)
    assert not [t for t in workers if t.is_alive()], "the server's worker threads outlived it"
