"""``make run``: the daemon on a throw-away setup under ``./var/``.

Creates ``./var/archive`` (an empty archive) if missing, watches ``./var/incoming``
and sets rejects aside in ``./var/rejected``. Ctrl-C stops it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dicom_archive.archive.store import init_archive, is_archive
from dicom_archive.daemon.config import build_config
from dicom_archive.daemon.service import Daemon
from dicom_archive.errors import ArchiveError
from dicom_archive.logs import configure_logging


def main(base: Path = Path("var")) -> int:
    base = base.absolute()
    config = build_config(
        {
            "archive": str(base / "archive"),
            "incoming": str(base / "incoming"),
            "rejected": str(base / "rejected"),
            "settle_time": "2s",
            "max_age": "1m",
            "rescan_interval": "1m",
            "check_interval": "10m",
            "verify_interval": "1h",
            "snapshot_interval": "10s",
        },
        "make run",
    )
    try:
        if not is_archive(config.archive):
            init_archive(config.archive).close()
            print(f"Created an empty archive at {config.archive}", file=sys.stderr)
        print(
            f"Drop DICOM files or study folders into {config.incoming}\n"
            f"  rejected files (with NAME.reason.txt) go to {config.rejected}\n"
            f"  status: dicom-archive status --archive {config.archive}\n"
            "  stop with Ctrl-C",
            file=sys.stderr,
        )
        configure_logging(config.log_level, config.log_format)
        return Daemon(config).run()
    except ArchiveError as exc:
        print(f"dicom-archive: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
