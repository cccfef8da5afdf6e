"""The audit log: who did what to the archive's contents, when, and why.

One JSON object per line in ``ARCHIVE/audit.jsonl``, appended and never rewritten:
every delete, restore, trash empty, retention run, repair, rebuild and de-identified
export adds one line *after* the change it records is durable (a line never claims
something that did not happen; a crash between the two loses at most that line,
which ``check`` cannot miss because the trash journal and the index say what
happened).

Each line is written with one ``write`` on an ``O_APPEND`` descriptor under an
exclusive ``flock`` (two processes never interleave a line), then fsynced. The file
is created ``0600``: it names patients' studies and the people who removed them.
A line torn by a crash is left as it is and a newline is written before the next
one, so later lines stay whole; ``read_audit`` skips the torn one.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_archive.errors import ArchiveError

AUDIT_NAME = "audit.jsonl"

#: The actions the archive itself records (other modules may add their own names).
DELETE = "delete"
RESTORE = "restore"
TRASH_EMPTY = "trash-empty"
RETENTION = "retention"
REPAIR = "repair"
REBUILD = "rebuild"
PROTECT = "protect"
UNPROTECT = "unprotect"
DEIDENTIFIED_EXPORT = "deidentified-export"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: str
    action: str
    user: str
    host: str
    pid: int
    selection: str
    count: int
    reason: str | None = None
    details: Mapping[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "action": self.action,
            "user": self.user,
            "host": self.host,
            "pid": self.pid,
            "selection": self.selection,
            "count": self.count,
            "reason": self.reason,
            "details": dict(self.details),
        }


def audit_path(archive_root: Path) -> Path:
    return Path(archive_root) / AUDIT_NAME


def _utc_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def current_user() -> str:
    """The OS account of the process (not $USER, which anyone can set), and who
    ran sudo when it was sudo."""
    uid = os.getuid()
    try:
        import pwd

        name = pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        name = str(uid)
    sudo = os.environ.get("SUDO_USER")
    return f"{name} (sudo by {sudo})" if sudo and sudo != name else name


def append_audit(
    archive_root: Path,
    action: str,
    *,
    selection: str,
    count: int,
    reason: str | None = None,
    details: Mapping[str, object] | None = None,
) -> None:
    """Append one durable line to the archive's audit log.

    Call it after the change is durable. Raises ``ArchiveError`` when the line cannot
    be written (the caller's change stands; the message says the log missed it).
    """
    entry = AuditEntry(
        at=_utc_now(),
        action=action,
        user=current_user(),
        host=socket.gethostname(),
        pid=os.getpid(),
        selection=selection,
        count=count,
        reason=reason,
        details=dict(details or {}),
    )
    line = json.dumps(entry.to_json(), ensure_ascii=False, default=str) + "\n"
    path = audit_path(archive_root)
    try:
        _append_line(path, line.encode("utf-8"))
    except OSError as exc:
        raise ArchiveError(
            f"{path}: the audit log could not record {action} of {selection} "
            f"({exc.strerror or exc})"
        ) from exc


def _append_line(path: Path, data: bytes) -> None:
    import fcntl

    created = not path.exists()
    # O_RDWR only to peek at the last byte; O_APPEND makes every write land at the end.
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_mode & 0o077:
            # Widened by hand or by an old umask: it names patients, keep it private.
            os.fchmod(fd, 0o600)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a torn line from a crash: the next one starts clean
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)  # also releases the flock
    if created:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_audit(archive_root: Path) -> Iterator[AuditEntry]:
    """Every whole entry, oldest first (a line torn by a crash is skipped)."""
    path = audit_path(archive_root)
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed by the with below; errors named first)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read the audit log ({exc.strerror or exc})") from exc
    with handle:
        for raw in handle:
            try:
                item = json.loads(raw)
                yield AuditEntry(
                    at=str(item["at"]),
                    action=str(item["action"]),
                    user=str(item.get("user", "")),
                    host=str(item.get("host", "")),
                    pid=int(item.get("pid", 0)),
                    selection=str(item.get("selection", "")),
                    count=int(item.get("count", 0)),
                    reason=item.get("reason"),
                    details=dict(item.get("details") or {}),
                )
            except (ValueError, KeyError, TypeError):
                continue
