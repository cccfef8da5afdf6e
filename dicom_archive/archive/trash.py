"""Delete with undo: instances move (rename, same filesystem, no copy) to a trash
inside the archive, and their rows to a journal, until the trash is emptied.

``ARCHIVE/trash/<folder>/`` holds one entry's files at their archive paths
(``trash/000007-20260101T120000/data/PAT/STUDY/SERIES/SOP.dcm``) beside a
``manifest.json`` naming what was deleted, when, by whom and why.

The order of every step keeps two promises at any instant, whatever kills the
process: **no index row names a file that is not at its path** (rows leave the
index before their files move, and come back only after their files are back), and
**every file the journal names is in one of two places** (its archive path or its
trash path), so nothing is lost and a restart finishes the job:

delete
  1. one transaction (``BEGIN IMMEDIATE``): the selection is read, the entry and a
     full copy of each row are journaled (state ``moving``), the rows are dropped;
  2. ``manifest.json`` is written and fsynced;
  3. one transaction holding the write lock: each file is renamed into the trash,
     one ``syncfs``, the entry becomes ``trashed``. An importer that adopted an
     identical file left at its path between 1 and 3 (its row is back) keeps it:
     that item leaves the journal instead of moving.
restore
  1. the entry becomes ``restoring``;
  2. holding the write lock: each file is renamed back (never over another file),
     one ``syncfs``, the rows are added (import dates kept) and the restored items
     leave the journal, in one transaction.
empty
  1. the entry becomes ``emptying``;
  2. the journaled files (only those: nothing else in the folder is removed) are
     unlinked and their folders removed, one ``syncfs``;
  3. the entry and its items leave the journal.

An entry left ``moving``, ``restoring`` or ``emptying`` by a process that is gone is
rolled forward by ``recover`` (called when an archive is opened): the same steps
again, each one idempotent. An entry whose owner still runs is left to it.

While the daemon imports: an instance committed before step 1 is part of the
delete; one arriving later is a new arrival and is archived (its study appears again
with what arrived). Restoring a SOP Instance UID archived again meanwhile leaves that
item in the trash (reported), never replacing the newer file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_archive.archive.export import Selector
from dicom_archive.archive.faults import crash_point
from dicom_archive.archive.fsutil import make_dirs_durable, move_no_replace, syncfs
from dicom_archive.archive.index import SHOWN_STUDY_DATE, Index, NewInstance, now_iso
from dicom_archive.archive.records import InstanceHeader
from dicom_archive.archive.store import Archive
from dicom_archive.errors import ArchiveError

TRASH_DIR = "trash"
MANIFEST = "manifest.json"

MOVING = "moving"
TRASHED = "trashed"
RESTORING = "restoring"
EMPTYING = "emptying"


class NothingSelected(ArchiveError):
    """A selector that matches nothing in the archive (or nothing in the trash)."""


class Protected(ArchiveError):
    """The selection holds a protected study or patient."""


#: What to delete: exactly one of study, series or patient (exact values), as export
#: selects them.
Selection = Selector


def _where(selection: Selection) -> tuple[str, tuple[str, ...]]:
    if selection.study_uid is not None:
        return "st.study_instance_uid = ?", (selection.study_uid,)
    if selection.series_uid is not None:
        return "se.series_instance_uid = ?", (selection.series_uid,)
    return "p.patient_id = ?", (selection.patient_id or "",)


@dataclass(frozen=True, slots=True)
class TrashEntry:
    id: int
    folder: str
    state: str
    created_at: str
    origin: str
    selection: str
    reason: str
    user: str
    instances: int
    bytes: int
    #: (Patient ID, Patient's Name, Study Instance UID, study date, description) of
    #: each study with instances in the entry.
    studies: tuple[tuple[str, str, str, str, str], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "folder": f"{TRASH_DIR}/{self.folder}",
            "state": self.state,
            "deletedAt": self.created_at,
            "origin": self.origin,
            "selection": self.selection,
            "reason": self.reason,
            "user": self.user,
            "instances": self.instances,
            "bytes": self.bytes,
            "studies": [
                {
                    "patientID": s[0],
                    "patientName": s[1],
                    "studyInstanceUID": s[2],
                    "studyDate": s[3],
                    "studyDescription": s[4],
                }
                for s in self.studies
            ],
        }


@dataclass(frozen=True, slots=True)
class RestoreResult:
    entry_id: int
    restored: int
    #: SOP Instance UIDs archived again since the delete: left in the trash.
    left_in_trash: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EmptyResult:
    entries: tuple[int, ...]
    instances: int
    bytes: int
    #: Files found in an entry's folder that the journal does not name: left there.
    strangers: tuple[str, ...] = ()


#: The row columns, in InstanceHeader's order, then the file's own.
_ROW_SQL = """
SELECT i.sop_instance_uid, i.sop_class_uid, st.study_instance_uid, se.series_instance_uid,
       i.transfer_syntax_uid, p.patient_id, p.patient_name, st.patient_birth_date,
       st.patient_sex, st.study_date_raw, st.study_time, st.description,
       st.accession_number, st.study_id, st.referring_physician, se.modality,
       se.description, se.series_number, se.body_part, i.instance_number,
       i.file_path, i.file_size, i.sha256, i.imported_at
FROM instances i
JOIN series se ON se.id = i.series_pk
JOIN studies st ON st.id = se.study_pk
JOIN patients p ON p.id = st.patient_pk
WHERE {where}
ORDER BY st.id, se.id, i.instance_number, i.id
"""
_HEADER_FIELDS = [f.name for f in dataclasses.fields(InstanceHeader)]


@dataclass(frozen=True, slots=True)
class _Item:
    pk: int
    header: InstanceHeader
    file_path: str
    file_size: int
    sha256: str
    imported_at: str


def trash_root(archive: Archive) -> Path:
    return archive.root / TRASH_DIR


def _owner() -> tuple[int, str]:
    return os.getpid(), socket.gethostname()


def _user() -> str:
    from dicom_archive.archive.audit import current_user

    return current_user()


# -- delete --------------------------------------------------------------------


def protected_in(connection: sqlite3.Connection, where: str, params: Sequence[str]) -> list[str]:
    """The protected studies and patients a selection touches, described."""
    rows = connection.execute(
        "SELECT DISTINCT pr.kind, pr.value, pr.reason FROM instances i "
        "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk "
        "JOIN patients p ON p.id = st.patient_pk JOIN protected pr ON "
        "(pr.kind = 'study' AND pr.value = st.study_instance_uid) OR "
        f"(pr.kind = 'patient' AND pr.value = p.patient_id) WHERE {where}",
        tuple(params),
    ).fetchall()
    return [f"{kind} {value}" + (f" ({reason})" if reason else "") for kind, value, reason in rows]


def delete(
    archive: Archive,
    selection: Selection,
    *,
    reason: str | None = None,
    origin: str = "delete",
) -> TrashEntry:
    """Move the selected instances to the trash; raises when nothing matches or when
    the selection holds a protected study or patient."""
    started = time.perf_counter()
    where, params = _where(selection)
    made = trash_where(archive, where, params, selection.describe(), reason=reason, origin=origin)
    refresh_snapshot(archive, time.perf_counter() - started)
    from dicom_archive.archive.audit import DELETE, append_audit

    append_audit(
        archive.root,
        DELETE,
        selection=selection.describe(),
        count=made.instances,
        reason=reason,
        details={"trashId": made.id, "bytes": made.bytes, "origin": origin},
    )
    return made


@dataclass(frozen=True, slots=True)
class Preview:
    """What a delete would move: shown before asking."""

    studies: tuple[tuple[str, str, str, str, str, int], ...]
    instances: int
    bytes: int
    protected: tuple[str, ...]


def preview(archive: Archive, selection: Selection) -> Preview:
    where, params = _where(selection)
    connection = archive.index.connection
    studies = connection.execute(
        "SELECT p.patient_id, p.patient_name, st.study_instance_uid, "
        f"{SHOWN_STUDY_DATE}, st.description, COUNT(i.id), SUM(i.file_size) FROM instances i "
        "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk "
        f"JOIN patients p ON p.id = st.patient_pk WHERE {where} GROUP BY st.id ORDER BY st.id",
        params,
    ).fetchall()
    return Preview(
        tuple(tuple(row[:6]) for row in studies),
        sum(row[5] for row in studies),
        sum(row[6] for row in studies),
        tuple(protected_in(connection, where, params)),
    )


def trash_where(
    archive: Archive,
    where: str,
    params: Sequence[str],
    described: str,
    *,
    reason: str | None,
    origin: str,
) -> TrashEntry:
    """Move the instances a SQL condition selects (aliases i, se, st, p) to a new
    trash entry. No audit line: the callers write one per command or run."""
    index = archive.index
    pid, host = _owner()
    with index.write() as connection:
        protected = protected_in(connection, where, params)
        if protected:
            raise Protected(
                f"{described} includes protected {', '.join(protected[:3])}"
                + (f" and {len(protected) - 3} more" if len(protected) > 3 else "")
                + "; unprotect it first (dicom-archive unprotect)"
            )
        rows = connection.execute(_ROW_SQL.format(where=where), tuple(params)).fetchall()
        if not rows:
            raise NothingSelected(f"nothing in the archive matches {described}")
        created = now_iso()
        cursor = connection.execute(
            "INSERT INTO trash_entries(folder, state, created_at, origin, selection, reason, "
            "user, owner_pid, owner_host) VALUES ('', ?, ?, ?, ?, ?, ?, ?, ?)",
            (MOVING, created, origin, described, reason or "", _user(), pid, host),
        )
        entry_pk = int(cursor.lastrowid or 0)
        stamp = created.replace("-", "").replace(":", "").rstrip("Z")
        folder = f"{entry_pk:06d}-{stamp}"
        connection.execute("UPDATE trash_entries SET folder = ? WHERE id = ?", (folder, entry_pk))
        connection.executemany(
            "INSERT INTO trash_items(entry_pk, sop_instance_uid, file_path, file_size, sha256, "
            "imported_at, header) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    entry_pk,
                    row[0],
                    row[20],
                    row[21],
                    row[22],
                    row[23],
                    json.dumps(dict(zip(_HEADER_FIELDS, row[:20], strict=True))),
                )
                for row in rows
            ],
        )
        index.remove_instances(connection, [row[20] for row in rows])
    crash_point("trash-journaled")
    try:
        _write_manifest(archive, entry_pk)
        crash_point("trash-manifest")
        _finish_moving(archive, entry_pk)
    except OSError as exc:
        # The rows are out and journaled: nothing is inconsistent, only unfinished.
        _release(archive, entry_pk)
        raise ArchiveError(
            f"{described}: the delete stopped part-way ({exc.strerror or exc}); its files "
            "are journaled as trash entry "
            f"{entry_pk} and the next command on the archive finishes moving them"
        ) from exc
    return entry(archive, entry_pk)


def _release(archive: Archive, entry_pk: int) -> None:
    """Hand an unfinished entry to whoever opens the archive next (owner pid 0 is no
    running process), rather than leave it to this one until it exits."""
    with contextlib.suppress(sqlite3.Error, ArchiveError), archive.index.write() as connection:
        connection.execute("UPDATE trash_entries SET owner_pid = -1 WHERE id = ?", (entry_pk,))


def refresh_snapshot(archive: Archive, seconds: float) -> bool:
    """The import's rule (see snapshot.refresh_if_cheap): rewritten when cheap next to
    the work, else left stale for the daemon or ``dicom-archive snapshot``."""
    from dicom_archive.archive.snapshot import refresh_if_cheap

    return refresh_if_cheap(archive.paths, archive.index, seconds)


def _write_manifest(archive: Archive, entry_pk: int) -> None:
    """A record for a person (and for a rebuilt index) of what the folder holds."""
    found = entry(archive, entry_pk)
    folder = trash_root(archive) / found.folder
    changed = make_dirs_durable(archive.root, Path(TRASH_DIR) / found.folder)
    items = [
        {
            "filePath": item.file_path,
            "fileSize": item.file_size,
            "sha256": item.sha256,
            "importDate": item.imported_at,
            **{_camel(k): v for k, v in dataclasses.asdict(item.header).items()},
            # As the journal keeps it, so that a rebuilt index can adopt the entry.
            "header": dataclasses.asdict(item.header),
        }
        for item in _items(archive.index.connection, entry_pk)
    ]
    document = dict(found.as_json(), items=items)
    target = folder / MANIFEST
    temporary = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as out:
        json.dump(document, out, ensure_ascii=False, indent=1)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, target)
    for path in {*changed, folder}:
        _fsync_dir(path)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.upper() if part == "uid" else part.title() for part in rest)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _items(connection: sqlite3.Connection, entry_pk: int) -> list[_Item]:
    return [
        _Item(pk, InstanceHeader(**json.loads(header)), path, size, sha, imported)
        for pk, path, size, sha, imported, header in connection.execute(
            "SELECT id, file_path, file_size, sha256, imported_at, header FROM trash_items "
            "WHERE entry_pk = ? ORDER BY id",
            (entry_pk,),
        )
    ]


def _finish_moving(archive: Archive, entry_pk: int) -> None:
    """Step 3 of a delete (also the roll-forward of one interrupted there)."""
    root = archive.root
    with archive.index.write() as connection:
        state = _state(connection, entry_pk)
        if state != MOVING:
            return
        folder = _folder(connection, entry_pk)
        adopted: list[int] = []
        made: set[str] = set()
        touched: set[str] = set()
        for item in _items(connection, entry_pk):
            if connection.execute(
                "SELECT 1 FROM instances WHERE file_path = ?", (item.file_path,)
            ).fetchone():
                adopted.append(item.pk)  # archived again by an importer: it stays
                continue
            source = root / item.file_path
            target = root / TRASH_DIR / folder / item.file_path
            if not os.path.lexists(source):
                continue  # moved before an interruption (or lost before the delete)
            parent = os.path.dirname(item.file_path)
            if parent not in made:
                make_dirs_durable(root / TRASH_DIR / folder, Path(parent))
                made.add(parent)
            if not move_no_replace(str(source), str(target)):
                raise ArchiveError(f"{target}: already exists in the trash; not replaced")
            touched.add(parent)
            crash_point("trash-moved-one")
        syncfs(root)
        crash_point("trash-moved")
        if adopted:
            connection.executemany(
                "DELETE FROM trash_items WHERE id = ?", [(pk,) for pk in adopted]
            )
        connection.execute(
            "UPDATE trash_entries SET state = ?, owner_pid = 0 WHERE id = ?", (TRASHED, entry_pk)
        )
        # Folders left empty go while the lock is held: no importer is placing a file.
        for parent in touched:
            _remove_empty_dirs(root, parent, stop=root / "data")
        if not _items(connection, entry_pk):
            connection.execute("DELETE FROM trash_entries WHERE id = ?", (entry_pk,))
            _remove_tree_of_ours(root / TRASH_DIR / folder, [])


def _remove_empty_dirs(root: Path, relative_dir: str, stop: Path) -> None:
    current = root / relative_dir
    while current != stop and current.is_relative_to(stop):
        try:
            current.rmdir()
        except OSError:
            return  # not empty (or gone): nothing above it is empty either
        current = current.parent


def _state(connection: sqlite3.Connection, entry_pk: int) -> str | None:
    row = connection.execute("SELECT state FROM trash_entries WHERE id = ?", (entry_pk,)).fetchone()
    return str(row[0]) if row else None


def _folder(connection: sqlite3.Connection, entry_pk: int) -> str:
    row = connection.execute(
        "SELECT folder FROM trash_entries WHERE id = ?", (entry_pk,)
    ).fetchone()
    return str(row[0])


# -- listing -------------------------------------------------------------------


def entries(archive: Archive, *, entry_id: int | None = None) -> list[TrashEntry]:
    connection = archive.index.connection
    where = "WHERE e.id = ?" if entry_id is not None else ""
    params: tuple[int, ...] = (entry_id,) if entry_id is not None else ()
    found = []
    for row in connection.execute(
        "SELECT e.id, e.folder, e.state, e.created_at, e.origin, e.selection, e.reason, e.user, "
        "COUNT(t.id), COALESCE(SUM(t.file_size), 0) FROM trash_entries e "
        f"LEFT JOIN trash_items t ON t.entry_pk = e.id {where} GROUP BY e.id ORDER BY e.id",
        params,
    ).fetchall():
        studies: dict[str, tuple[str, str, str, str, str]] = {}
        for (header,) in connection.execute(
            "SELECT header FROM trash_items WHERE entry_pk = ? ORDER BY id", (row[0],)
        ):
            h = json.loads(header)
            studies.setdefault(
                h["study_instance_uid"],
                (
                    h["patient_id"],
                    h["patient_name"],
                    h["study_instance_uid"],
                    h["study_date"],
                    h["study_description"],
                ),
            )
        found.append(
            TrashEntry(
                id=int(row[0]),
                folder=str(row[1]),
                state=str(row[2]),
                created_at=str(row[3]),
                origin=str(row[4]),
                selection=str(row[5]),
                reason=str(row[6]),
                user=str(row[7]),
                instances=int(row[8]),
                bytes=int(row[9]),
                studies=tuple(studies.values()),
            )
        )
    return found


def entry(archive: Archive, entry_id: int) -> TrashEntry:
    found = entries(archive, entry_id=entry_id)
    if not found:
        raise NothingSelected(f"no trash entry {entry_id} (see: dicom-archive trash list)")
    return found[0]


# -- restore -------------------------------------------------------------------


def restore(archive: Archive, entry_id: int) -> RestoreResult:
    """Put an entry's files and rows back; SOPs archived again meanwhile stay in the trash."""
    pid, host = _owner()
    with archive.index.write() as connection:
        state = _state(connection, entry_id)
        if state is None:
            raise NothingSelected(f"no trash entry {entry_id} (see: dicom-archive trash list)")
        if state != TRASHED:
            raise ArchiveError(
                f"trash entry {entry_id} is still {state} (another process is at it; "
                "if none is, any command on the archive finishes the job)"
            )
        connection.execute(
            "UPDATE trash_entries SET state = ?, owner_pid = ?, owner_host = ? WHERE id = ?",
            (RESTORING, pid, host, entry_id),
        )
    crash_point("restore-marked")
    started = time.perf_counter()
    result = _finish_restoring(archive, entry_id)
    if result.restored:
        refresh_snapshot(archive, time.perf_counter() - started)
    from dicom_archive.archive.audit import RESTORE, append_audit

    found = entries(archive, entry_id=entry_id)
    append_audit(
        archive.root,
        RESTORE,
        selection=f"trash {entry_id}",
        count=result.restored,
        details={
            "leftInTrash": len(result.left_in_trash),
            "deleted": found[0].selection if found else "",
        },
    )
    return result


def _finish_restoring(archive: Archive, entry_pk: int) -> RestoreResult:
    root = archive.root
    index = archive.index
    with index.write() as connection:
        if _state(connection, entry_pk) != RESTORING:
            return RestoreResult(entry_pk, 0, ())
        folder = _folder(connection, entry_pk)
        rows: list[NewInstance] = []
        restored: list[_Item] = []
        left: list[str] = []
        made: set[str] = set()
        for item in _items(connection, entry_pk):
            source = root / TRASH_DIR / folder / item.file_path
            target = root / item.file_path
            if index.find_instance(item.header.sop_instance_uid) is not None:
                left.append(item.header.sop_instance_uid)
                continue
            if os.path.lexists(source):
                parent = os.path.dirname(item.file_path)
                if parent not in made:
                    make_dirs_durable(root, Path(parent))
                    made.add(parent)
                if not move_no_replace(str(source), str(target)):
                    # An unindexed file under that name (an interrupted import):
                    # never replaced; the trashed copy stays.
                    left.append(item.header.sop_instance_uid)
                    continue
                crash_point("restore-moved-one")
            elif not os.path.lexists(target):
                left.append(item.header.sop_instance_uid)  # in neither place: say so
                continue
            rows.append(NewInstance(item.header, item.file_path, item.file_size, item.sha256))
            restored.append(item)
        syncfs(root)
        crash_point("restore-moved")
        index.add_instances(connection, rows)
        connection.executemany(
            "UPDATE instances SET imported_at = ? WHERE file_path = ?",
            [(item.imported_at, item.file_path) for item in restored],
        )
        connection.executemany(
            "DELETE FROM trash_items WHERE id = ?", [(item.pk,) for item in restored]
        )
        if _items(connection, entry_pk):
            connection.execute(
                "UPDATE trash_entries SET state = ?, owner_pid = 0 WHERE id = ?",
                (TRASHED, entry_pk),
            )
        else:
            connection.execute("DELETE FROM trash_entries WHERE id = ?", (entry_pk,))
            _remove_tree_of_ours(root / TRASH_DIR / folder, [])
    return RestoreResult(entry_pk, len(restored), tuple(left))


# -- empty ---------------------------------------------------------------------


def empty(
    archive: Archive,
    *,
    older_than_days: float | None = None,
    entry_ids: Sequence[int] | None = None,
    now: float | None = None,
    audit_selection: str | None = None,
) -> EmptyResult:
    """Remove trashed entries for good (all, those deleted more than N days ago, or
    the given ones). Only journaled files are unlinked."""
    moment = time.time() if now is None else now
    cutoff = (
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment - older_than_days * 86400))
        if older_than_days is not None
        else None
    )
    pid, host = _owner()
    chosen: list[int] = []
    with archive.index.write() as connection:
        for entry_pk, created in connection.execute(
            "SELECT id, created_at FROM trash_entries WHERE state = ? ORDER BY id", (TRASHED,)
        ).fetchall():
            if cutoff is not None and created > cutoff:
                continue
            if entry_ids is not None and entry_pk not in entry_ids:
                continue
            chosen.append(entry_pk)
        connection.executemany(
            "UPDATE trash_entries SET state = ?, owner_pid = ?, owner_host = ? WHERE id = ?",
            [(EMPTYING, pid, host, pk) for pk in chosen],
        )
    if entry_ids is not None and not chosen:
        raise NothingSelected(
            "no trashed entry " + ", ".join(str(i) for i in entry_ids) + " (see: trash list)"
        )
    instances = size = 0
    strangers: list[str] = []
    for entry_pk in chosen:
        n, b = _finish_emptying(archive, entry_pk, strangers)
        instances += n
        size += b
    if chosen:
        from dicom_archive.archive.audit import TRASH_EMPTY, append_audit

        append_audit(
            archive.root,
            TRASH_EMPTY,
            selection=audit_selection
            or (
                f"trash older than {older_than_days:g} days"
                if older_than_days is not None
                else "trash " + (", ".join(map(str, chosen)) if entry_ids else "all")
            ),
            count=instances,
            details={"entries": chosen, "bytes": size, "strangersLeft": len(strangers)},
        )
    return EmptyResult(tuple(chosen), instances, size, tuple(strangers))


def _finish_emptying(archive: Archive, entry_pk: int, strangers: list[str]) -> tuple[int, int]:
    connection = archive.index.connection
    if _state(connection, entry_pk) != EMPTYING:
        return 0, 0
    root = archive.root
    folder = root / TRASH_DIR / _folder(connection, entry_pk)
    items = _items(connection, entry_pk)
    for item in items:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / item.file_path)
        crash_point("empty-unlinked-one")
    _remove_tree_of_ours(folder, strangers)
    if root.joinpath(TRASH_DIR).is_dir():
        syncfs(root)
    with archive.index.write() as connection:
        connection.execute("DELETE FROM trash_items WHERE entry_pk = ?", (entry_pk,))
        connection.execute("DELETE FROM trash_entries WHERE id = ?", (entry_pk,))
    return len(items), sum(item.file_size for item in items)


def _remove_tree_of_ours(folder: Path, strangers: list[str]) -> None:
    """Remove the manifest and the empty folders of one entry; any other file found
    there is not ours to delete: it is named in ``strangers`` and left."""
    if not folder.is_dir():
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / MANIFEST)
    for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
        for name in filenames:
            strangers.append(os.path.join(dirpath, name))
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)
        del dirnames


# -- recovery ------------------------------------------------------------------


def unfinished(index: Index) -> list[tuple[int, str, int, str]]:
    """Entries part-way through a step: (id, state, owner pid, owner host)."""
    try:
        return [
            (int(r[0]), str(r[1]), int(r[2]), str(r[3]))
            for r in index.connection.execute(
                "SELECT id, state, owner_pid, owner_host FROM trash_entries WHERE state != ?",
                (TRASHED,),
            )
        ]
    except sqlite3.OperationalError:
        return []  # an index older than the trash (read-only, not migrated)


def _owner_gone(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return False  # another machine's process: it cannot be asked; leave it
    if pid == os.getpid():
        return False
    if pid < 0:
        return True  # released by a process that could not finish it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover(archive: Archive, *, on_entry: Callable[[int, str], None] | None = None) -> int:
    """Roll forward every entry left part-way by a process that is gone; how many."""
    done = 0
    for entry_pk, state, pid, host in unfinished(archive.index):
        if not _owner_gone(pid, host):
            continue
        if state == MOVING:
            if not (trash_root(archive) / _folder(archive.index.connection, entry_pk)).is_dir():
                _write_manifest(archive, entry_pk)
            _finish_moving(archive, entry_pk)
        elif state == RESTORING:
            _finish_restoring(archive, entry_pk)
        elif state == EMPTYING:
            _finish_emptying(archive, entry_pk, [])
        done += 1
        if on_entry is not None:
            on_entry(entry_pk, state)
    return done


def in_flight_paths(index: Index) -> set[str]:
    """Archive paths of files a running delete or restore is moving (not orphans)."""
    try:
        return {
            str(row[0])
            for row in index.connection.execute(
                "SELECT t.file_path FROM trash_items t JOIN trash_entries e ON e.id = t.entry_pk "
                "WHERE e.state IN (?, ?)",
                (MOVING, RESTORING),
            )
        }
    except sqlite3.OperationalError:
        return set()


def trash_totals(index: Index) -> tuple[int, int, int]:
    """(entries, instances, bytes) in the trash."""
    row = index.connection.execute(
        "SELECT COUNT(DISTINCT entry_pk), COUNT(*), COALESCE(SUM(file_size), 0) FROM trash_items"
    ).fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def adopt_manifests(root: Path, connection: sqlite3.Connection) -> int:
    """Journal again the trash entries a rebuilt index lacks, from their manifests:
    only the items whose files are still in the entry's folder (a partial restore
    took the others back). Inside the rebuild's write transaction; how many entries."""
    trash_dir = root / TRASH_DIR
    if not trash_dir.is_dir():
        return 0
    adopted = 0
    for folder in sorted(p for p in trash_dir.iterdir() if p.is_dir()):
        manifest = folder / MANIFEST
        if connection.execute(
            "SELECT 1 FROM trash_entries WHERE folder = ?", (folder.name,)
        ).fetchone():
            continue
        try:
            document = json.loads(manifest.read_text(encoding="utf-8"))
            items = [item for item in document["items"] if (folder / item["filePath"]).is_file()]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no usable manifest: the files stay where they are, for a person
        if not items:
            continue
        cursor = connection.execute(
            "INSERT INTO trash_entries(folder, state, created_at, origin, selection, reason, "
            "user) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                folder.name,
                TRASHED,
                str(document.get("deletedAt", now_iso())),
                str(document.get("origin", "delete")),
                str(document.get("selection", "")),
                str(document.get("reason", "")),
                str(document.get("user", "")),
            ),
        )
        connection.executemany(
            "INSERT INTO trash_items(entry_pk, sop_instance_uid, file_path, file_size, sha256, "
            "imported_at, header) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    cursor.lastrowid,
                    item["header"]["sop_instance_uid"],
                    item["filePath"],
                    item["fileSize"],
                    item["sha256"],
                    item["importDate"],
                    json.dumps(item["header"]),
                )
                for item in items
            ],
        )
        adopted += 1
    return adopted


def carry_protected(old_index: Path, connection: sqlite3.Connection) -> None:
    """Copy the protected studies and patients of a readable previous index."""
    try:
        # Not read-only: a read-only WAL reader leaves -wal/-shm files behind, which
        # would then sit beside the installed index. A normal close removes them.
        old = sqlite3.connect(old_index, timeout=30, isolation_level=None)
        try:
            rows = old.execute("SELECT kind, value, reason, at FROM protected").fetchall()
        finally:
            old.close()
    except sqlite3.Error:
        return
    connection.executemany(
        "INSERT OR IGNORE INTO protected(kind, value, reason, at) VALUES (?, ?, ?, ?)", rows
    )
