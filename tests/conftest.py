from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_archive.archive.store import Archive, init_archive


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """A test that leaves threads running fails: stoppable threads must be stopped."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for thread in leaked:
        thread.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads left running: {still}"


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    opened = init_archive(tmp_path / "archive")
    yield opened
    opened.close()
