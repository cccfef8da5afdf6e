"""The archive's de-identification secret, the keyed values made from it, and the map.

Every replacement value (UID, Patient ID, date offset) is an HMAC-SHA256 of the
original under a per-archive secret, so the same original always becomes the same
pseudonym, across exports and processes, with nothing to coordinate: two exports
running at once compute the same values. The map (``deid/pseudonyms.db``) records what
was handed out, for the person allowed to re-identify; it is a record, not the source
of the values, and lives in its own SQLite file so that writing it never waits on the
importer's lock on ``archive.db``. Both files are created 0600 inside a 0700 folder:
whoever reads them can undo the pseudonyms.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dicom_archive.archive.fsutil import fsync_path, link_no_replace
from dicom_archive.errors import ArchiveError

DEID_DIR = "deid"
SECRET_NAME = "secret.key"  # noqa: S105 (the file's name, not a secret)
MAP_NAME = "pseudonyms.db"
_SECRET_BYTES = 32
_UID_BITS = 128
_PATIENT_CODE_CHARS = 12  # 60 bits of base32
#: Dates move back by 1 to 3,650 days: far enough that the real date cannot be read
#: off, and only backwards so that no shifted date lies in the future.
MAX_SHIFT_DAYS = 3650

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pseudonyms (
    project TEXT NOT NULL,
    kind TEXT NOT NULL,
    original TEXT NOT NULL,
    pseudonym TEXT NOT NULL,
    first_export TEXT NOT NULL,
    PRIMARY KEY (project, kind, original)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pseudonyms_by_value ON pseudonyms (project, pseudonym);
"""


class DeidStoreError(ArchiveError):
    """The secret or the map cannot be read or made (permissions, a damaged file)."""


def deid_folder(archive_root: Path) -> Path:
    return archive_root / DEID_DIR


def load_or_create_secret(archive_root: Path) -> bytes:
    """The archive's secret, created on first use (0600, durable before it is used).

    Two processes creating it at once race on one no-replace link: the loser reads the
    winner's, so no value is ever made under a secret that is then lost.
    """
    folder = deid_folder(archive_root)
    path = folder / SECRET_NAME
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        temporary = folder / f".{SECRET_NAME}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, secrets.token_hex(_SECRET_BYTES).encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            link_no_replace(temporary, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        fsync_path(folder)
        fsync_path(archive_root)
        return _read_secret(path)
    except OSError as exc:
        raise DeidStoreError(f"{path}: cannot create the secret: {exc.strerror or exc}") from exc


def _read_secret(path: Path) -> bytes:
    try:
        text = path.read_text("ascii").strip()
    except UnicodeDecodeError as exc:
        raise DeidStoreError(f"{path}: not a dicom-archive secret") from exc
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DeidStoreError(f"{path}: cannot read the secret: {exc.strerror or exc}") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise DeidStoreError(f"{path}: not a dicom-archive secret") from exc
    if len(key) < 16:
        raise DeidStoreError(f"{path}: secret too short ({len(key)} bytes)")
    return key


@dataclass(frozen=True, slots=True)
class Keyer:
    """Keyed replacement values for one project under one archive's secret."""

    secret: bytes
    project: str

    def _digest(self, kind: str, value: str) -> bytes:
        message = "\0".join((kind, self.project, value)).encode("utf-8", "surrogatepass")
        return hmac.new(self.secret, message, hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """``2.25.<128-bit decimal>``: at most 44 characters, a valid UID (PS3.5 B.2)."""
        number = int.from_bytes(self._digest("uid", original)[: _UID_BITS // 8], "big")
        return f"2.25.{number}"

    def patient_id(self, patient_key: str) -> str:
        code = base64.b32encode(self._digest("patient", patient_key)).decode("ascii")
        return f"ANON-{code[:_PATIENT_CODE_CHARS]}"

    def date_offset_days(self, patient_key: str) -> int:
        """How many days this patient's dates move back (1..MAX_SHIFT_DAYS)."""
        number = int.from_bytes(self._digest("dates", patient_key)[:8], "big")
        return 1 + number % MAX_SHIFT_DAYS


class PseudonymMap:
    """``deid/pseudonyms.db``: (project, kind, original) -> pseudonym, first export time.

    Safe to use from several processes at once: rows are only ever inserted, and an
    insert of a row that exists changes nothing (the values are deterministic).
    """

    def __init__(self, archive_root: Path) -> None:
        folder = deid_folder(archive_root)
        self.path = folder / MAP_NAME
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            # Created 0600 before SQLite opens it: SQLite gives its -wal and -shm
            # files the permissions of the database file.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            self.connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=FULL")
            self.connection.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise DeidStoreError(f"{self.path}: cannot open the pseudonym map: {exc}") from exc

    def record(self, project: str, rows: Iterable[tuple[str, str, str]]) -> None:
        """Insert (kind, original, pseudonym) rows in one durable transaction."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            self.connection.execute("BEGIN IMMEDIATE")
            self.connection.executemany(
                "INSERT OR IGNORE INTO pseudonyms VALUES (?, ?, ?, ?, ?)",
                ((project, kind, original, pseudonym, now) for kind, original, pseudonym in rows),
            )
            self.connection.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self.connection.execute("ROLLBACK")
            raise DeidStoreError(f"{self.path}: cannot record pseudonyms: {exc}") from exc

    def lookup(self, project: str, kind: str, original: str) -> str | None:
        row = self.connection.execute(
            "SELECT pseudonym FROM pseudonyms WHERE project = ? AND kind = ? AND original = ?",
            (project, kind, original),
        ).fetchone()
        return None if row is None else str(row[0])

    def originals_of(self, project: str, pseudonym: str) -> list[tuple[str, str]]:
        """(kind, original) rows that became ``pseudonym`` in ``project``."""
        rows = self.connection.execute(
            "SELECT kind, original FROM pseudonyms WHERE project = ? AND pseudonym = ?",
            (project, pseudonym),
        ).fetchall()
        return [(str(kind), str(original)) for kind, original in rows]

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> PseudonymMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
