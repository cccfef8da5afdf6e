"""Moving sources aside (rejected, processed) without ever overwriting or losing one.

The daemon is the only writer in the rejected and processed folders, so "pick a
free name, then rename" cannot race with another writer. Across filesystems a
move is a copy, an fsync and only then the removal of the source.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from dicom_archive.archive.index import now_iso
from dicom_archive.text import strip_control

REASON_SUFFIX = ".reason.txt"


def is_ignored(relative: str, patterns: Iterable[str]) -> bool:
    """Whether any component of ``relative`` (a path under incoming) matches a pattern,
    so a sender may stage a whole ``.upload/`` folder or name a file ``x.part``."""
    parts = [p for p in relative.split(os.sep) if p]
    return any(fnmatch.fnmatchcase(part, pattern) for part in parts for pattern in patterns)


def relative_to(path: Path, top: Path) -> Path:
    """``path`` under ``top``; just the name for a path from elsewhere (an old incoming)."""
    try:
        return path.relative_to(top)
    except ValueError:
        return Path(path.name)


def free_destination(folder: Path, relative: Path) -> Path:
    """``folder/relative``, or ``name.1``, ``name.2``... when that (or its reason) exists."""
    target = folder / relative
    candidate = target
    n = 0
    while _taken(candidate):
        n += 1
        candidate = target.with_name(f"{target.name}.{n}")
    return candidate


def _taken(path: Path) -> bool:
    return os.path.lexists(path) or os.path.lexists(str(path) + REASON_SUFFIX)


def move_no_replace(source: Path, destination: Path) -> None:
    """Move ``source`` (a file or a symlink, never followed) to a free ``destination``."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, destination)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    info = os.lstat(source)
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(source), destination)
    else:
        partial = destination.with_name(f".{destination.name}.moving")
        shutil.copyfile(source, partial, follow_symlinks=False)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.rename(partial, destination)
    fsync_dir(destination.parent)
    os.unlink(source)


def write_reason(
    destination: Path,
    *,
    outcome: str,
    reason: str,
    source: Path,
    sop_instance_uid: str = "",
    differs: str = "",
    differences: Sequence[str] = (),
) -> Path:
    """The sidecar ``NAME.reason.txt`` saying why and when, written atomically.

    For a conflict, ``differs`` is the one-line summary of what differs from the
    archived file and ``differences`` its long form, one line each, indented under
    ``differences:``.
    """
    sidecar = Path(str(destination) + REASON_SUFFIX)
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"outcome: {outcome}",
        f"reason: {strip_control(reason)}",
        f"source: {strip_control(str(source))}",
        f"at: {now_iso()}",
    ]
    if sop_instance_uid:
        lines.append(f"sop_instance_uid: {strip_control(sop_instance_uid)}")
    if differs:
        lines.append(f"differs: {strip_control(differs.removeprefix('differs: '))}")
    if differences:
        lines.append("differences:")
        lines.extend(f"  {strip_control(line)}" for line in differences)
    partial = sidecar.with_name(f".{sidecar.name}.tmp")
    with open(partial, "w", encoding="utf-8", errors="replace") as handle:
        handle.write("\n".join(lines) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(partial, sidecar)
    return sidecar


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
