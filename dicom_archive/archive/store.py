"""Creating and opening an archive: its root folder, index and data tree."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from dicom_archive.archive import snapshot
from dicom_archive.archive.fsutil import fsync_path
from dicom_archive.archive.index import Index
from dicom_archive.archive.layout import (
    DATA_DIR,
    INDEX_NAME,
    QUARANTINE_DIR,
    SNAPSHOT_NAME,
    TMP_DIR,
    ArchivePaths,
)
from dicom_archive.errors import ArchiveError, ArchiveExists, NotAnArchive, UnsafeInit

#: What ``init --force`` may remove: the things an archive consists of.
_ARCHIVE_ENTRIES = {
    INDEX_NAME,
    INDEX_NAME + "-wal",
    INDEX_NAME + "-shm",
    INDEX_NAME + "-journal",
    SNAPSHOT_NAME,
    DATA_DIR,
    TMP_DIR,
    QUARANTINE_DIR,
    # issue 11 (lifecycle)
    "audit.jsonl",
    "trash",
    # issue 11 (deid): the de-identification secret and pseudonym map
    "deid",
}


@dataclass(slots=True)
class Archive:
    """An open archive: its places and an open index (one per thread)."""

    paths: ArchivePaths
    index: Index

    @property
    def root(self) -> Path:
        return self.paths.root

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_archive(root: Path) -> bool:
    return (root / INDEX_NAME).is_file() and (root / DATA_DIR).is_dir()


def open_archive(root: Path | str) -> Archive:
    paths = ArchivePaths(Path(root))
    if not is_archive(paths.root):
        raise NotAnArchive(paths.root)
    archive = Archive(paths, Index.open(paths.index))
    from dicom_archive.archive import trash  # here: trash is built on this module

    # A delete, restore or empty killed part-way is finished before anything reads.
    # If it cannot be finished now (a full disk), the journal keeps it for the next
    # open: its state is consistent meanwhile, and no command is refused for it.
    if trash.unfinished(archive.index):
        try:
            trash.recover(archive)
        except (OSError, ArchiveError, sqlite3.Error):
            pass
    return archive


def init_archive(root: Path | str, *, force: bool = False) -> Archive:
    """Create an empty archive at ``root``.

    ``force`` replaces an existing archive's index and data with an empty archive;
    it refuses a folder holding anything that is not part of an archive, so a
    mistyped path never deletes someone's files.
    """
    paths = ArchivePaths(Path(root))
    if paths.root.exists() and not paths.root.is_dir():
        raise UnsafeInit(f"{paths.root} exists and is not a folder")
    if is_archive(paths.root) or paths.index.exists():
        if not force:
            raise ArchiveExists(paths.root)
        _remove_archive_entries(paths.root)
    elif paths.root.is_dir():
        strangers = sorted(e.name for e in paths.root.iterdir() if e.name not in _ARCHIVE_ENTRIES)
        if strangers:
            raise UnsafeInit(
                f"{paths.root} is not empty and not an archive (found {strangers[0]!r}); "
                "choose an empty or new folder"
            )
        if force:
            _remove_archive_entries(paths.root)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.data.mkdir(exist_ok=True)
    paths.tmp.mkdir(exist_ok=True)
    index = Index.create(paths.index)
    archive = Archive(paths, index)
    snapshot.write_snapshot(archive.paths, index)
    fsync_path(paths.root)
    return archive


def _remove_archive_entries(root: Path) -> None:
    strangers = sorted(e.name for e in root.iterdir() if e.name not in _ARCHIVE_ENTRIES)
    if strangers:
        raise UnsafeInit(
            f"{root} holds files that are not part of an archive (found {strangers[0]!r}); "
            "refusing to replace it"
        )
    for name in _ARCHIVE_ENTRIES:
        entry = root / name
        if entry.is_dir() and not entry.is_symlink():
            import shutil  # here: only init --force needs it

            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            os.unlink(entry)
