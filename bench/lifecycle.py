"""Issue 11's figures: ZIP export against ``zip -0 -r`` of the same files, and the ZIP
export's peak memory on a ~2 GB study against a small one (flat memory), both
measured in the same run as their baselines."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bench.corpus import CorpusInfo, CorpusSpec, generate
from bench.util import Report, Result, cli, median, remove, shell
from dicom_archive.archive.store import open_archive

#: ~2.1 GB in one study: 40 instances of 5,120 x 5,120 x 16 bits (52 MB each).
BIG = CorpusSpec(1, 1, 1, 40, rows=5120, columns=5120, seed=77)
SMALL = CorpusSpec(1, 1, 1, 20, rows=64, columns=64, seed=78)


#: The CLI run in a child that reports its own peak resident memory (VmHWM) on exit.
#: Not wait4's ru_maxrss: Linux carries the forking parent's resident size into the
#: child's figure, and this bench process has just generated 52 MB pixel arrays.
_MEASURED = """
import sys
from dicom_archive.cli import main
try:
    code = main(sys.argv[1:])
finally:
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    sys.stderr.write(f"\\nPEAK_RSS_KB {peak}\\n")
sys.exit(code)
"""


def _peak_rss_mb(*argv: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", _MEASURED, *argv], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return int(result.stderr.rpartition("PEAK_RSS_KB ")[2].strip()) / 1024


def _settle(work: Path) -> None:
    shell(f"sync -f '{work}'")


def _study_dir(archive: Path, study_uid: str) -> Path:
    with open_archive(archive) as opened:
        (path,) = opened.index.connection.execute(
            "SELECT i.file_path FROM instances i JOIN series se ON se.id = i.series_pk "
            "JOIN studies st ON st.id = se.study_pk WHERE st.study_instance_uid = ? LIMIT 1",
            (study_uid,),
        ).fetchone()
    return archive / Path(path).parent.parent


def zip_speed(
    report: Report, archive: Path, study_uid: str, files: int, size: int, work: Path, reps: int
) -> None:
    """Alternated runs of `zip -0 -r` (+ sync) and `export --zip` (which fsyncs)."""
    if shutil.which("zip") is None:
        report.skip(
            "export", "export --zip vs zip -0", "zip is not installed (apt-get install zip)"
        )
        return
    study = _study_dir(archive, study_uid)
    ours: list[float] = []
    theirs: list[float] = []
    target = work / "bench-export.zip"
    for _ in range(3 * reps):
        remove(target)
        _settle(work)
        theirs.append(
            shell(
                f"cd '{study.parent}' && zip -0 -r -q '{target}' '{study.name}' "
                f"&& sync -f '{target}'"
            ).seconds
        )
        remove(target)
        _settle(work)
        result = cli("export", "-a", str(archive), "--study-uid", study_uid, "--zip", str(target))
        if result.returncode != 0:
            raise RuntimeError(f"export --zip exited {result.returncode}")
        ours.append(result.seconds)
    remove(target)
    report.add(
        Result(
            "export",
            f"export --zip of a {files:,}-instance study ({size / 1e6:.0f} MB)",
            files / median(ours),
            "files/s",
            files / median(theirs),
            "zip -0 -r + sync",
            goal=0.70,
            target="≥ 0.70 × zip -0",
        )
    )


def zip_memory(report: Report, work: Path) -> None:
    """Peak RSS of `export --zip` for a ~2 GB study over that for a 20-file one."""
    archive = work / "zip-memory-archive"
    remove(archive)
    cli("init", "-p", str(archive))
    peaks: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for label, spec in (("small", SMALL), ("big", BIG)):
        corpus: CorpusInfo = generate(spec, work / f"zip-memory-{label}")
        imported = cli("import", "-a", str(archive), "--recursive", str(corpus.root))
        if imported.returncode != 0:
            raise RuntimeError(f"import for the memory figure exited {imported.returncode}")
        shutil.rmtree(corpus.root, ignore_errors=True)
        target = work / f"zip-memory-{label}.zip"
        peaks[label] = _peak_rss_mb(
            "export",
            "-a",
            str(archive),
            "--study-uid",
            corpus.study_uids[0],
            "--zip",
            str(target),
        )
        sizes[label] = target.stat().st_size
        remove(target)
    remove(archive)
    report.add(
        Result(
            "export",
            f"export --zip peak RSS, {sizes['big'] / 1e9:.1f} GB study vs "
            f"{sizes['small'] / 1e3:.0f} KB study",
            peaks["big"],
            "MB",
            peaks["small"],
            "the small study's peak",
            goal=1.15,
            higher_is_better=False,
            target="≤ 1.15 × (flat)",
        )
    )
