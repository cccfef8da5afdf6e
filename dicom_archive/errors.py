"""The errors a user can cause, each with its exit code and a one-line message.

The CLI maps every ``ArchiveError`` to ``exit_code``; anything else is a bug and
shows a traceback only with ``--debug``.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2


class ArchiveError(Exception):
    """Base of every error the user can cause; ``str(exc)`` is the one-line message."""

    exit_code = EXIT_PROBLEMS


class UsageError(ArchiveError):
    """The command line asks for something that cannot be done as asked."""

    exit_code = EXIT_USAGE


class NotAnArchive(ArchiveError):
    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path} is not an archive (create one with: dicom-archive init --path {path})"
        )
        self.path = path


class ArchiveExists(ArchiveError):
    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} is already an archive (use --force to replace it)")
        self.path = path


class UnsafeInit(ArchiveError):
    """``init --force`` on a folder that holds things an archive does not."""


class IndexError_(ArchiveError):
    """The index cannot be opened or used (corrupt, newer schema, locked too long)."""


class IndexBusy(IndexError_):
    """Another process held the index lock for longer than the busy timeout."""


class RejectedFile(ArchiveError):
    """A file that cannot be archived: not DICOM, truncated, missing UIDs...

    ``reason`` is the short reason without the path, as stored in a rejection sidecar.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class TransientError(ArchiveError):
    """A failure that may go away by itself (disk full, permission, index busy).

    The source must be kept and the import retried later.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class ExportError(ArchiveError):
    """An export that cannot proceed (nothing selected, a different file in the way)."""


class InvalidQuery(UsageError):
    """A query value that is not well formed (a bad date range, for example)."""


class ConfigError(UsageError):
    """A daemon configuration that cannot be used; the message names the file and the key."""

    def __init__(self, source: Path | str, key: str, reason: str) -> None:
        where = f"{source}: {key}" if key else f"{source}"
        super().__init__(f"{where}: {reason}")
        self.source = str(source)
        self.key = key
        self.reason = reason


class DaemonAlreadyRunning(ArchiveError):
    """A second daemon on one archive (or one incoming folder) refuses to start."""

    def __init__(self, path: Path, holder: str = "") -> None:
        who = f" ({holder})" if holder else ""
        super().__init__(
            f"{path}: a dicom-archive daemon is already running on it{who}; "
            "stop it first (see: dicom-archive status)"
        )
        self.path = path
