"""The index: SQLite in WAL mode, the source of truth for queries.

One writer at a time (``BEGIN IMMEDIATE`` takes the write lock up front, so a
transaction never fails half-way on a lock upgrade); readers never block the
writer and never see a half-written batch. ``synchronous=FULL``: a committed row
survives a power cut, because a committed row licenses deleting the source.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dicom_archive.archive.dates import normalise_date
from dicom_archive.archive.records import InstanceHeader
from dicom_archive.errors import ArchiveError, IndexBusy, IndexError_

SCHEMA_VERSION = 5
BUSY_TIMEOUT_MS = 30_000

# Folded (lower-cased) copies of the searchable names sit beside the raw values:
# a case-insensitive wildcard becomes a GLOB on an indexed BINARY column, which
# SQLite serves from the index for a literal prefix (no scan of Python objects).
_SCHEMA_V1 = """
CREATE TABLE patients (
    id              INTEGER PRIMARY KEY,
    patient_id      TEXT NOT NULL UNIQUE,
    patient_id_fold TEXT NOT NULL,
    patient_name    TEXT NOT NULL DEFAULT '',
    name_fold       TEXT NOT NULL DEFAULT '',
    birth_date      TEXT NOT NULL DEFAULT '',
    sex             TEXT NOT NULL DEFAULT ''
);
CREATE INDEX patients_id_fold ON patients(patient_id_fold);
CREATE INDEX patients_name_fold ON patients(name_fold);

CREATE TABLE studies (
    id                  INTEGER PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL UNIQUE,
    patient_pk          INTEGER NOT NULL REFERENCES patients(id),
    study_date          TEXT NOT NULL DEFAULT '',
    study_time          TEXT NOT NULL DEFAULT '',
    description         TEXT NOT NULL DEFAULT '',
    accession_number    TEXT NOT NULL DEFAULT '',
    study_id            TEXT NOT NULL DEFAULT '',
    referring_physician TEXT NOT NULL DEFAULT ''
);
CREATE INDEX studies_patient ON studies(patient_pk);
CREATE INDEX studies_date ON studies(study_date);

CREATE TABLE series (
    id                  INTEGER PRIMARY KEY,
    series_instance_uid TEXT NOT NULL UNIQUE,
    study_pk            INTEGER NOT NULL REFERENCES studies(id),
    modality            TEXT NOT NULL DEFAULT '',
    modality_fold       TEXT NOT NULL DEFAULT '',
    description         TEXT NOT NULL DEFAULT '',
    series_number       INTEGER,
    body_part           TEXT NOT NULL DEFAULT '',
    -- kept per batch so that stats and counts never scan the instances
    instance_count      INTEGER NOT NULL DEFAULT 0,
    total_bytes         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX series_study ON series(study_pk);
CREATE INDEX series_modality ON series(modality_fold, study_pk);

CREATE TABLE instances (
    id                  INTEGER PRIMARY KEY,
    sop_instance_uid    TEXT NOT NULL UNIQUE,
    series_pk           INTEGER NOT NULL REFERENCES series(id),
    sop_class_uid       TEXT NOT NULL DEFAULT '',
    instance_number     INTEGER,
    transfer_syntax_uid TEXT NOT NULL DEFAULT '',
    file_path           TEXT NOT NULL UNIQUE,
    file_size           INTEGER NOT NULL,
    sha256              TEXT NOT NULL,
    imported_at         TEXT NOT NULL
);
CREATE INDEX instances_series ON instances(series_pk);
CREATE INDEX instances_imported_at ON instances(imported_at);

-- Small key/value facts: creation date, last change, daemon state.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Results of integrity checks, kept for `status` and for the record.
CREATE TABLE checks (
    id          INTEGER PRIMARY KEY,
    started_at  TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    verified    INTEGER NOT NULL,
    instances   INTEGER NOT NULL,
    findings    INTEGER NOT NULL,
    summary     TEXT NOT NULL
);
"""

# The watch-folder daemon's state, so `status` reads it without a socket.
_SCHEMA_V2 = """
-- One row per daemon run (the newest is the current or last one).
CREATE TABLE daemon_runs (
    id           INTEGER PRIMARY KEY,
    pid          INTEGER NOT NULL,
    hostname     TEXT NOT NULL DEFAULT '',
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    stopped_at   TEXT,
    state        TEXT NOT NULL,
    incoming     TEXT NOT NULL DEFAULT '',
    queue_depth  INTEGER NOT NULL DEFAULT 0,
    imported     INTEGER NOT NULL DEFAULT 0,
    duplicates   INTEGER NOT NULL DEFAULT 0,
    conflicts    INTEGER NOT NULL DEFAULT 0,
    rejected     INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0
);

-- Recent problems (rejections, conflicts, transient failures, daemon errors).
CREATE TABLE daemon_errors (
    id      INTEGER PRIMARY KEY,
    at      TEXT NOT NULL,
    kind    TEXT NOT NULL,
    path    TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL
);
"""

# `stats` groups the series by modality; a covering index answers it without
# touching the table or sorting (205 ms -> 60 ms at 1,000,000 instances).
_SCHEMA_V3 = """
CREATE INDEX series_stats ON series(modality, study_pk, instance_count, total_bytes);
"""

# Patient values belong to each study as its files state them (as Orthanc keeps
# per-study patient tags): a patient row is one (Patient ID, Patient's Name) pair,
# so two names under one ID, or studies with no ID, are never merged into whatever
# name arrived first. Birth date and sex travel with the study. Dates are kept
# normalised (YYYYMMDD, '' when unusable) beside the raw value.
# SQLite cannot drop a UNIQUE constraint: the patients table is rebuilt (with
# foreign keys off, see ``migrate``), then each study's values are restated from
# one of its own files by ``_restate_study_patients``.
_SCHEMA_V4 = """
CREATE TABLE patients_v4 (
    id              INTEGER PRIMARY KEY,
    patient_id      TEXT NOT NULL,
    patient_id_fold TEXT NOT NULL,
    patient_name    TEXT NOT NULL DEFAULT '',
    name_fold       TEXT NOT NULL DEFAULT '',
    UNIQUE (patient_id, patient_name)
);
INSERT INTO patients_v4(id, patient_id, patient_id_fold, patient_name, name_fold)
    SELECT id, patient_id, patient_id_fold, patient_name, name_fold FROM patients;
ALTER TABLE studies ADD COLUMN patient_birth_date TEXT NOT NULL DEFAULT '';
ALTER TABLE studies ADD COLUMN patient_sex TEXT NOT NULL DEFAULT '';
ALTER TABLE studies ADD COLUMN study_date_raw TEXT NOT NULL DEFAULT '';
UPDATE studies SET
    patient_birth_date = (SELECT birth_date FROM patients p WHERE p.id = studies.patient_pk),
    patient_sex = (SELECT sex FROM patients p WHERE p.id = studies.patient_pk),
    study_date_raw = study_date;
DROP TABLE patients;
ALTER TABLE patients_v4 RENAME TO patients;
CREATE INDEX patients_id_fold ON patients(patient_id_fold);
CREATE INDEX patients_name_fold ON patients(name_fold);
"""

# issue 11 (lifecycle): the trash journal and protected studies/patients.
# A trash entry is written (state 'moving') in the transaction that drops its rows,
# before any file moves, so at no instant does a row name a file that has gone to
# the trash; see archive/trash.py for the order of every step.
_SCHEMA_V5 = """
CREATE TABLE trash_entries (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    folder     TEXT NOT NULL UNIQUE,
    state      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    origin     TEXT NOT NULL,
    selection  TEXT NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    user       TEXT NOT NULL DEFAULT '',
    owner_pid  INTEGER NOT NULL DEFAULT 0,
    owner_host TEXT NOT NULL DEFAULT ''
);
CREATE INDEX trash_entries_state ON trash_entries(state);
CREATE TABLE trash_items (
    id               INTEGER PRIMARY KEY,
    entry_pk         INTEGER NOT NULL REFERENCES trash_entries(id),
    sop_instance_uid TEXT NOT NULL,
    file_path        TEXT NOT NULL,
    file_size        INTEGER NOT NULL,
    sha256           TEXT NOT NULL,
    imported_at      TEXT NOT NULL,
    header           TEXT NOT NULL
);
CREATE INDEX trash_items_entry ON trash_items(entry_pk);
CREATE INDEX trash_items_path ON trash_items(file_path);
CREATE TABLE protected (
    kind   TEXT NOT NULL,
    value  TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    at     TEXT NOT NULL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
"""

MIGRATIONS: dict[int, str] = {
    1: _SCHEMA_V1,
    2: _SCHEMA_V2,
    3: _SCHEMA_V3,
    4: _SCHEMA_V4,
    5: _SCHEMA_V5,
}
#: Migrations that rebuild a table another one references: run with foreign keys off
#: (SQLite ignores that pragma inside a transaction) and checked before COMMIT.
_REBUILDS_TABLES = {4}


#: A study's date as shown: normalised, or as its files state it when unusable.
SHOWN_STUDY_DATE = "(CASE st.study_date WHEN '' THEN st.study_date_raw ELSE st.study_date END)"


def fold(text: str) -> str:
    """The case-folded form stored for case-insensitive matching."""
    return text.casefold()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"


@dataclass(frozen=True, slots=True)
class NewInstance:
    """One instance row to add, with the header it was read from."""

    header: InstanceHeader
    file_path: str
    file_size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class StoredInstance:
    sop_instance_uid: str
    file_path: str
    file_size: int
    sha256: str


def _connect(path: Path) -> sqlite3.Connection:
    # autocommit via isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so
    # Python never opens a deferred transaction that would fail to upgrade its lock.
    connection = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    connection.execute("PRAGMA foreign_keys = ON")
    connection.execute("PRAGMA synchronous = FULL")
    return connection


class Index:
    """An open index. Not shared between threads: each thread opens its own."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.connection = connection
        self.path = path

    # -- opening ---------------------------------------------------------

    @classmethod
    def create(cls, path: Path) -> Index:
        connection = _connect(path)
        connection.execute("PRAGMA journal_mode = WAL")
        index = cls(connection, path)
        index.migrate()
        with index.write():
            now = now_iso()
            connection.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('created_at', ?)", (now,)
            )
            connection.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('modified_at', ?)", (now,)
            )
        return index

    @classmethod
    def open(cls, path: Path) -> Index:
        try:
            connection = _connect(path)
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise IndexError_(f"{path}: the index cannot be opened ({exc})") from exc
        if str(mode).lower() != "wal":
            connection.close()
            raise IndexError_(
                f"{path}: the index cannot use WAL mode (is it on a network filesystem?)"
            )
        index = cls(connection, path)
        index.migrate()
        return index

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        return int(self.connection.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise IndexError_(
                f"{self.path}: the index has schema version {current}, newer than this "
                f"dicom-archive understands ({SCHEMA_VERSION}); upgrade dicom-archive"
            )
        if current == SCHEMA_VERSION:
            return
        rebuilds = any(v in _REBUILDS_TABLES for v in range(current + 1, SCHEMA_VERSION + 1))
        if rebuilds:
            self.connection.execute("PRAGMA foreign_keys = OFF")
        try:
            with self.write():
                # Re-read inside the lock: another process may have migrated meanwhile.
                current = self.schema_version()
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in _split_statements(MIGRATIONS[version]):
                        self.connection.execute(statement)
                    if version == 4:
                        _restate_study_patients(self.connection, self.path.parent)
                    self.connection.execute(f"PRAGMA user_version = {version}")
                if rebuilds and self.connection.execute("PRAGMA foreign_key_check").fetchone():
                    raise IndexError_(f"{self.path}: migration left dangling references")
        finally:
            if rebuilds:
                self.connection.execute("PRAGMA foreign_keys = ON")

    # -- transactions ----------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken with ``BEGIN IMMEDIATE``."""
        try:
            self.connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise IndexBusy(
                    f"{self.path}: the index stayed locked by another process for "
                    f"{BUSY_TIMEOUT_MS // 1000} s"
                ) from exc
            raise
        try:
            yield self.connection
            self.connection.execute("COMMIT")
        except BaseException:
            # Also when COMMIT itself fails (disk full): never leave the lock held.
            if self.connection.in_transaction:
                self.connection.execute("ROLLBACK")
            raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs (one read transaction)."""
        self.connection.execute("BEGIN")
        try:
            yield self.connection
        finally:
            self.connection.execute("COMMIT")

    # -- instances -------------------------------------------------------

    def find_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        row = self.connection.execute(
            "SELECT sop_instance_uid, file_path, file_size, sha256 FROM instances "
            "WHERE sop_instance_uid = ?",
            (sop_instance_uid,),
        ).fetchone()
        return StoredInstance(*row) if row else None

    def find_instances(self, sop_instance_uids: Sequence[str]) -> dict[str, StoredInstance]:
        found: dict[str, StoredInstance] = {}
        for start in range(0, len(sop_instance_uids), 500):
            chunk = sop_instance_uids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.connection.execute(
                "SELECT sop_instance_uid, file_path, file_size, sha256 FROM instances "
                f"WHERE sop_instance_uid IN ({marks})",
                chunk,
            ):
                found[row[0]] = StoredInstance(*row)
        return found

    def add_instances(self, connection: sqlite3.Connection, rows: Sequence[NewInstance]) -> None:
        """Insert instances (and their patient/study/series) inside a write transaction.

        The caller has already excluded SOP Instance UIDs that are indexed.
        """
        imported_at = now_iso()
        patient_pks: dict[tuple[str, str], int] = {}
        study_pks: dict[str, int] = {}
        series_pks: dict[str, int] = {}
        series_totals: dict[int, list[int]] = {}
        instance_rows = []
        for row in rows:
            header = row.header
            study_pk = study_pks.get(header.study_instance_uid)
            if study_pk is None:
                study_pk = _find_study(connection, header.study_instance_uid)
                if study_pk is None:
                    # A new study states its own patient values; a known one keeps
                    # those of its first file.
                    patient_key = (header.patient_id, header.patient_name)
                    patient_pk = patient_pks.get(patient_key)
                    if patient_pk is None:
                        patient_pk = _upsert_patient(connection, *patient_key)
                        patient_pks[patient_key] = patient_pk
                    study_pk = _insert_study(connection, header, patient_pk)
                study_pks[header.study_instance_uid] = study_pk
            series_pk = series_pks.get(header.series_instance_uid)
            if series_pk is None:
                series_pk = _upsert_series(connection, header, study_pk)
                series_pks[header.series_instance_uid] = series_pk
            totals = series_totals.setdefault(series_pk, [0, 0])
            totals[0] += 1
            totals[1] += row.file_size
            instance_rows.append(
                (
                    header.sop_instance_uid,
                    series_pk,
                    header.sop_class_uid,
                    header.instance_number,
                    header.transfer_syntax_uid,
                    row.file_path,
                    row.file_size,
                    row.sha256,
                    imported_at,
                )
            )
        connection.executemany(
            "INSERT INTO instances(sop_instance_uid, series_pk, sop_class_uid, "
            "instance_number, transfer_syntax_uid, file_path, file_size, sha256, imported_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            instance_rows,
        )
        connection.executemany(
            "UPDATE series SET instance_count = instance_count + ?, "
            "total_bytes = total_bytes + ? WHERE id = ?",
            [(count, size, pk) for pk, (count, size) in series_totals.items()],
        )
        if rows:
            touch_modified(connection)

    def remove_instances(self, connection: sqlite3.Connection, file_paths: Sequence[str]) -> int:
        """Drop instance rows by file path, keeping the series totals and tree tidy."""
        removed = 0
        for file_path in file_paths:
            row = connection.execute(
                "SELECT id, series_pk, file_size FROM instances WHERE file_path = ?",
                (file_path,),
            ).fetchone()
            if row is None:
                continue
            instance_pk, series_pk, size = row
            connection.execute("DELETE FROM instances WHERE id = ?", (instance_pk,))
            connection.execute(
                "UPDATE series SET instance_count = instance_count - 1, "
                "total_bytes = total_bytes - ? WHERE id = ?",
                (size, series_pk),
            )
            removed += 1
        _drop_empty_parents(connection)
        if removed:
            touch_modified(connection)
        return removed

    def meta(self, key: str) -> str | None:
        row = self.connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def instance_count(self) -> int:
        row = self.connection.execute("SELECT COALESCE(SUM(instance_count), 0) FROM series")
        return int(row.fetchone()[0])


def touch_modified(connection: sqlite3.Connection) -> None:
    connection.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('modified_at', ?)", (now_iso(),)
    )


def _split_statements(script: str) -> list[str]:
    # executescript() would COMMIT our BEGIN IMMEDIATE; run statements one by one.
    statements = []
    for chunk in script.split(";"):
        lines = [line for line in chunk.splitlines() if not line.strip().startswith("--")]
        text = "\n".join(lines).strip()
        if text:
            statements.append(text)
    return statements


def _upsert_patient(connection: sqlite3.Connection, patient_id: str, patient_name: str) -> int:
    row = connection.execute(
        "SELECT id FROM patients WHERE patient_id = ? AND patient_name = ?",
        (patient_id, patient_name),
    ).fetchone()
    if row:
        return int(row[0])
    cursor = connection.execute(
        "INSERT INTO patients(patient_id, patient_id_fold, patient_name, name_fold) "
        "VALUES (?, ?, ?, ?)",
        (patient_id, fold(patient_id), patient_name, fold(patient_name)),
    )
    return int(cursor.lastrowid or 0)


def _find_study(connection: sqlite3.Connection, study_instance_uid: str) -> int | None:
    row = connection.execute(
        "SELECT id FROM studies WHERE study_instance_uid = ?", (study_instance_uid,)
    ).fetchone()
    return int(row[0]) if row else None


def _birth_date(value: str) -> str:
    # No raw column for it: an unusable value is kept as stated rather than lost.
    return normalise_date(value) or value.strip()


def _insert_study(connection: sqlite3.Connection, header: InstanceHeader, patient_pk: int) -> int:
    cursor = connection.execute(
        "INSERT INTO studies(study_instance_uid, patient_pk, study_date, study_date_raw, "
        "study_time, description, accession_number, study_id, referring_physician, "
        "patient_birth_date, patient_sex) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            header.study_instance_uid,
            patient_pk,
            normalise_date(header.study_date),
            header.study_date,
            header.study_time,
            header.study_description,
            header.accession_number,
            header.study_id,
            header.referring_physician,
            _birth_date(header.patient_birth_date),
            header.patient_sex,
        ),
    )
    return int(cursor.lastrowid or 0)


def _restate_study_patients(connection: sqlite3.Connection, root: Path) -> None:
    """Give every study the patient values and dates its own first file states.

    Before schema 4 one patient row per Patient ID held the values of whichever
    file came first, for every study of that ID. One header read per study; a
    study whose file cannot be read keeps the values it had.
    """
    from dicom_archive.archive.dicomfile import read_header  # pydicom only when migrating

    studies = connection.execute(
        "SELECT st.id, p.patient_id, p.patient_name, st.patient_birth_date, st.patient_sex, "
        "st.study_date_raw, (SELECT i.file_path FROM series se "
        "JOIN instances i ON i.series_pk = se.id WHERE se.study_pk = st.id "
        "ORDER BY i.id LIMIT 1) FROM studies st JOIN patients p ON p.id = st.patient_pk"
    ).fetchall()
    for study_pk, patient_id, name, birth, sex, date, file_path in studies:
        if file_path:
            try:
                with open(root / file_path, "rb") as handle:
                    header = read_header(handle, os.fstat(handle.fileno()).st_size, file_path)
            except (OSError, ArchiveError):
                pass
            else:
                patient_id, name = header.patient_id, header.patient_name
                birth, sex, date = header.patient_birth_date, header.patient_sex, header.study_date
        connection.execute(
            "UPDATE studies SET patient_pk = ?, patient_birth_date = ?, patient_sex = ?, "
            "study_date = ?, study_date_raw = ? WHERE id = ?",
            (
                _upsert_patient(connection, patient_id, name),
                _birth_date(birth),
                sex,
                normalise_date(date),
                date,
                study_pk,
            ),
        )
    _drop_empty_parents(connection)


def _upsert_series(connection: sqlite3.Connection, header: InstanceHeader, study_pk: int) -> int:
    row = connection.execute(
        "SELECT id FROM series WHERE series_instance_uid = ?", (header.series_instance_uid,)
    ).fetchone()
    if row:
        return int(row[0])
    cursor = connection.execute(
        "INSERT INTO series(series_instance_uid, study_pk, modality, modality_fold, "
        "description, series_number, body_part) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            header.series_instance_uid,
            study_pk,
            header.modality,
            fold(header.modality),
            header.series_description,
            header.series_number,
            header.body_part,
        ),
    )
    return int(cursor.lastrowid or 0)


def _drop_empty_parents(connection: sqlite3.Connection) -> None:
    connection.execute("DELETE FROM series WHERE instance_count <= 0")
    connection.execute(
        "DELETE FROM studies WHERE NOT EXISTS "
        "(SELECT 1 FROM series WHERE series.study_pk = studies.id)"
    )
    connection.execute(
        "DELETE FROM patients WHERE NOT EXISTS "
        "(SELECT 1 FROM studies WHERE studies.patient_pk = patients.id)"
    )
