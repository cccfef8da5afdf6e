"""Durable file operations: fsync of files and folders, syncfs, no-replace links."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # loaded on first use
    import ctypes

_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        import ctypes

        # The C library this process already runs on: no search (ctypes.util's
        # find_library imports subprocess and may run ldconfig, ~30 ms per command).
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "syncfs"):
            import ctypes.util

            name = ctypes.util.find_library("c")
            if name is None:
                return None
            libc = ctypes.CDLL(name, use_errno=True)
        _libc = libc
    return _libc


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by path."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: Path) -> None:
    """Flush every dirty page of the filesystem holding ``path`` in one call.

    One ``syncfs`` per batch replaces an fsync per file (git's batch fsync idea);
    Python has no ``os.syncfs``, so it goes through libc. Where syncfs is missing
    the caller's per-file fsyncs are the fallback.
    """
    libc = _load_libc()
    if libc is None or not hasattr(libc, "syncfs"):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            import ctypes

            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages now, without waiting.

    A hint (``sync_file_range(SYNC_FILE_RANGE_WRITE)``), not durability: the disk
    works while the caller goes on, and the ``syncfs`` that follows has less left to
    wait for. Does nothing where the call is missing or refused.
    """
    libc = _load_libc()
    if libc is not None and hasattr(libc, "sync_file_range"):
        import ctypes

        whole = ctypes.c_longlong(0)  # offset 0, length 0: to the end of the file
        libc.sync_file_range(fd, whole, whole, _SYNC_FILE_RANGE_WRITE)


def make_dirs_durable(root: Path, relative_dir: Path) -> list[Path]:
    """Create ``root/relative_dir`` and return the folders whose entries changed.

    Each new folder and the folder holding it need an fsync (or a syncfs) before
    anything inside them can be called durable.
    """
    changed: list[Path] = []
    current = root
    for part in relative_dir.parts:
        parent = current
        current = current / part
        try:
            current.mkdir()
        except FileExistsError:
            continue
        changed.append(parent)
        changed.append(current)
    return changed


def link_no_replace(source: str | Path, destination: str | Path) -> bool:
    """Give ``source`` the extra name ``destination`` unless that name is taken.

    ``os.rename`` would silently replace an archived file; ``os.link`` fails with
    EEXIST instead. Returns False when the destination already exists.
    """
    try:
        os.link(source, destination)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # A filesystem without hard links: renameat2(RENAME_NOREPLACE) keeps the
        # promise and leaves no source name behind, which the caller tolerates.
        return _rename_no_replace(source, destination)
    return True


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_renameat2: Any = None


def move_no_replace(source: str, destination: str) -> bool:
    """Move the file named ``source`` to ``destination`` unless that name is taken.

    One ``renameat2(RENAME_NOREPLACE)``: atomic and, like ``os.link``, failing on an
    existing name, but it also drops the source name, so a temporary copy costs no
    separate unlink. Where renameat2 is missing (old libc, a filesystem without it),
    link then unlink. Returns False (nothing changed) when the destination exists.
    """
    import ctypes

    global _renameat2
    if _renameat2 is None:
        libc = _load_libc()
        _renameat2 = getattr(libc, "renameat2", False) if libc is not None else False
        if _renameat2:
            _renameat2.argtypes = [
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_uint,
            ]
            _renameat2.restype = ctypes.c_int
    if _renameat2:
        old, new = os.fsencode(source), os.fsencode(destination)
        if _renameat2(_AT_FDCWD, old, _AT_FDCWD, new, _RENAME_NOREPLACE) == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), destination)
        _renameat2 = False  # not on this filesystem: link and unlink from now on
    if not link_no_replace(Path(source), Path(destination)):
        return False
    try:
        os.unlink(source)
    except FileNotFoundError:
        pass  # link_no_replace fell back to a rename
    return True


def _rename_no_replace(source: str | Path, destination: str | Path) -> bool:
    libc = _load_libc()
    if libc is None or not hasattr(libc, "renameat2"):
        raise OSError(errno.ENOTSUP, "filesystem supports neither link nor renameat2")
    result = libc.renameat2(
        _AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination), _RENAME_NOREPLACE
    )
    if result == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err == errno.EEXIST:
        return False
    raise OSError(err, os.strerror(err), str(destination))
