"""Copying a selection of the archive out, byte for byte.

Every file is hashed on its way out and compared with the index: a file damaged
in the archive is reported, not handed on. What is hashed is the copy itself (made in
the kernel with ``copy_file_range`` where possible, then read where it lies in the
page cache), a few files at a time on threads, and one ``syncfs`` makes the lot
durable before the export reports done. An existing identical file at the
destination is skipped; a different one is never overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dicom_archive.archive.fsutil import link_no_replace, start_writeback, syncfs
from dicom_archive.archive.layout import DATA_DIR
from dicom_archive.archive.store import Archive
from dicom_archive.errors import ExportError, UsageError

_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Selector:
    """Exactly one of study, series or patient."""

    study_uid: str | None = None
    series_uid: str | None = None
    patient_id: str | None = None

    def __post_init__(self) -> None:
        chosen = [v for v in (self.study_uid, self.series_uid, self.patient_id) if v is not None]
        if len(chosen) != 1:
            raise UsageError("choose exactly one of --study-uid, --series-uid, --patient-id")

    def describe(self) -> str:
        if self.study_uid is not None:
            return f"study {self.study_uid}"
        if self.series_uid is not None:
            return f"series {self.series_uid}"
        return f"patient {self.patient_id}"


@dataclass(frozen=True, slots=True)
class ExportItem:
    sop_instance_uid: str
    file_path: str
    file_size: int
    sha256: str


@dataclass(slots=True)
class ExportReport:
    selected: int = 0
    copied: int = 0
    skipped_identical: int = 0
    bytes_copied: int = 0
    errors: list[str] = field(default_factory=list)


def select_instances(archive: Archive, selector: Selector) -> list[ExportItem]:
    base = (
        "SELECT i.sop_instance_uid, i.file_path, i.file_size, i.sha256 FROM instances i "
        "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk "
        "JOIN patients p ON p.id = st.patient_pk WHERE "
    )
    if selector.study_uid is not None:
        where, value = "st.study_instance_uid = ?", selector.study_uid
    elif selector.series_uid is not None:
        where, value = "se.series_instance_uid = ?", selector.series_uid
    else:
        where, value = "p.patient_id = ?", selector.patient_id or ""
    rows = archive.index.connection.execute(
        base + where + " ORDER BY st.id, se.id, i.instance_number, i.id", (value,)
    ).fetchall()
    return [ExportItem(*row) for row in rows]


def destination_for(item: ExportItem, output: Path, flatten: bool) -> Path:
    return Path(_target_of(item.file_path, str(output), flatten))


def _target_of(file_path: str, output: str, flatten: bool) -> str:
    if flatten:
        return os.path.join(output, file_path.rsplit("/", 1)[-1])
    first, _, rest = file_path.partition("/")
    return os.path.join(output, rest if first == DATA_DIR and rest else file_path)


def export_instances(
    archive: Archive,
    selector: Selector,
    output: Path,
    *,
    flatten: bool = False,
    on_selected: Callable[[int], None] | None = None,
    on_file: Callable[[ExportItem, str], None] | None = None,
) -> ExportReport:
    """Copy the selected instances into ``output``; raises when nothing matches.

    ``on_selected`` hears how many instances were selected before the first copy;
    ``on_file`` hears of each file in selection order. Files are copied and hashed by
    a few threads (copy_file_range, hashlib and reads let go of the GIL), and made
    durable together by one ``syncfs`` of the destination before this returns.
    """
    items = select_instances(archive, selector)
    if not items:
        raise ExportError(f"nothing in the archive matches {selector.describe()}")
    if output.exists() and not output.is_dir():
        raise ExportError(f"{output} exists and is not a folder")
    output.mkdir(parents=True, exist_ok=True)
    if on_selected is not None:
        on_selected(len(items))
    report = ExportReport(selected=len(items))
    exporter = _Exporter(str(archive.root))
    out = str(output)
    pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="export")
    pending: deque[tuple[ExportItem, Future[tuple[str, str]]]] = deque()
    try:
        for item in items:
            target = _target_of(item.file_path, out, flatten)
            pending.append((item, pool.submit(exporter.export, item, target)))
            if len(pending) >= _IN_FLIGHT:
                _settle(pending.popleft(), report, on_file)
        while pending:
            _settle(pending.popleft(), report, on_file)
    finally:
        # On Ctrl-C or an error: what has not started never starts; what runs finishes
        # and removes its temporary file.
        pool.shutdown(wait=True, cancel_futures=True)
    syncfs(output)
    return report


#: Twice the cores: a worker often waits in the kernel (creating a file, allocating
#: its blocks) rather than hashing, and the measured times fell up to 2 x cores.
_WORKERS = min(8, 2 * (os.cpu_count() or 1))
_IN_FLIGHT = 8 * _WORKERS


def _settle(
    done: tuple[ExportItem, Future[tuple[str, str]]],
    report: ExportReport,
    on_file: Callable[[ExportItem, str], None] | None,
) -> None:
    item, future = done
    status, error = future.result()
    if status == "copied":
        report.copied += 1
        report.bytes_copied += item.file_size
    elif status == "skipped":
        report.skipped_identical += 1
    else:
        report.errors.append(error)
    if on_file is not None:
        on_file(item, status)


class _Exporter:
    """One export run: string paths and a cache of folders made (no pathlib or mkdir
    per file). Each file is copied under a temporary name, in the kernel where it can
    (``copy_file_range``, as ``cp`` does), then the copy itself is hashed: what is
    compared with the index is what is handed on. Only a copy that matches is linked
    to its name, and only if that name is free. Safe to call from several threads."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.folders: set[str] = set()
        self.pid = os.getpid()
        self.in_kernel = True
        self.local = threading.local()

    def buffer(self) -> bytearray:
        buffer: bytearray | None = getattr(self.local, "buffer", None)
        if buffer is None:
            buffer = self.local.buffer = bytearray(_CHUNK)
        return buffer

    def export(self, item: ExportItem, target: str) -> tuple[str, str]:
        """("copied" | "skipped" | "error", the error's message)."""
        try:
            if os.path.lexists(target):
                if _sha256_of(target, self.buffer()) == item.sha256:
                    return "skipped", ""
                return "error", f"{target}: a different file is already there (not overwritten)"
            folder, name = os.path.split(target)
            if folder not in self.folders:
                os.makedirs(folder, exist_ok=True)
                self.folders.add(folder)
            temporary = os.path.join(folder, f".{name}.{self.pid}.tmp")
            try:
                sha256 = self._copy(os.path.join(self.root, item.file_path), temporary)
                if sha256 != item.sha256:
                    return "error", (
                        f"{item.file_path}: archived file differs from its index entry "
                        "(run: dicom-archive check --verify-files); not exported"
                    )
                if not link_no_replace(temporary, target):
                    return "error", f"{target}: a file appeared there during export"
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
        except OSError as exc:
            return "error", f"{item.file_path}: {exc.strerror or exc}"
        return "copied", ""

    def _copy(self, source: str, target: str) -> str:
        """Copy ``source`` to the new file ``target``; the SHA-256 of what ``target`` holds."""
        src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            out = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                if self.in_kernel:
                    if _copy_in_kernel(src, out):
                        start_writeback(out)  # the disk writes while this thread hashes
                        return _sha256_of_own_file(out)
                    self.in_kernel = False  # not here (another filesystem, an old kernel)
                sha256 = _copy_hashing(src, out, self.buffer())
                start_writeback(out)
                return sha256
            finally:
                os.close(out)
        finally:
            os.close(src)


#: copy_file_range's ways of saying "not between these two files": copy in user space.
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def _copy_in_kernel(src: int, out: int) -> bool:
    """All of ``src`` into ``out`` by copy_file_range; False if it cannot start."""
    copied = 0
    while True:
        try:
            count = os.copy_file_range(src, out, _CHUNK)
        except OSError as exc:
            if copied == 0 and exc.errno in _NO_KERNEL_COPY:
                return False
            raise
        if count == 0:
            return True
        copied += count


def _copy_hashing(src: int, out: int, buffer: bytearray) -> str:
    digest = hashlib.sha256()
    view = memoryview(buffer)
    while count := os.readv(src, [buffer]):
        digest.update(view[:count])
        written = 0
        while written < count:
            written += os.write(out, view[written:count])
    return digest.hexdigest()


def _sha256_of_own_file(fd: int) -> str:
    """Hashed where it lies in the page cache (mapped, not copied out): only for a file
    this process made under a private name, which nobody else truncates meanwhile."""
    size = os.fstat(fd).st_size
    if size == 0:
        return hashlib.sha256().hexdigest()
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapped:
        return hashlib.sha256(mapped).hexdigest()


def _sha256_of_fd(fd: int, buffer: bytearray) -> str:
    digest = hashlib.sha256()
    view = memoryview(buffer)
    offset = 0
    while count := os.preadv(fd, [buffer], offset):
        digest.update(view[:count])
        offset += count
    return digest.hexdigest()


def _sha256_of(path: str, buffer: bytearray) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _sha256_of_fd(fd, buffer)
    finally:
        os.close(fd)
