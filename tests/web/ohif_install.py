"""The prebuilt OHIF viewer (npm package ``@ohif/app``, its ``dist/``) in a cache
folder outside the repository, fetched once with ``npm pack`` (the tarball alone,
none of the package's build dependencies) and never committed.

``python -m tests.web.ohif_install`` installs it (``.ci/run`` calls this) and prints
the folder; the OHIF test calls ``installed()`` and skips when it is absent and npm
cannot fetch it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "3.13.2"
PACKAGE = "@ohif/app"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dicom-archive" / "ohif"


def dist_folder(version: str = VERSION) -> Path:
    return cache_root() / version / "dist"


def installed(version: str = VERSION) -> Path | None:
    dist = dist_folder(version)
    return dist if (dist / "index.html").is_file() else None


def install(version: str = VERSION) -> Path:
    """The dist folder of ``@ohif/app@version``, fetched if not yet cached. A partial
    download never looks installed: it is unpacked aside and renamed into place."""
    found = installed(version)
    if found is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed (apt-get install npm)")
    target = cache_root() / version
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{version}-") as work:
        subprocess.run(
            [npm, "pack", f"{PACKAGE}@{version}", "--pack-destination", work, "--silent"],
            check=True,
            cwd=work,
            stdout=subprocess.DEVNULL,
            timeout=900,
        )
        (tarball,) = Path(work).glob("*.tgz")
        unpacked = Path(work) / "unpacked"
        with tarfile.open(tarball) as archive:
            archive.extractall(unpacked, filter="data")
        (unpacked / "package" / "dist").rename(Path(work) / "dist")
        staged = Path(work) / "staged"
        staged.mkdir()
        (Path(work) / "dist").rename(staged / "dist")
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return dist_folder(version)


if __name__ == "__main__":
    try:
        print(install())
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        print(f"cannot install OHIF {VERSION}: {exc}", file=sys.stderr)
        sys.exit(1)
