"""The de-identified export against the plain export of the same study, same run."""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.corpus import CorpusInfo
from bench.sections import settle
from bench.util import Report, Result, cli, median, remove

#: Each de-identified file is parsed, rewritten and serialised by pydicom (the plain
#: export copies in the kernel): a quarter of its speed is the floor we hold.
GOAL = 0.25


def deid_section(report: Report, corpus: CorpusInfo, work: Path, reps: int) -> None:
    archive = work / "deid-archive"
    cli("init", "-p", str(archive))
    imported = cli("import", "-a", str(archive), "--recursive", str(corpus.root))
    if imported.returncode != 0:
        raise RuntimeError(f"import exited {imported.returncode}: {imported.stderr[-300:]}")
    study_uid = corpus.study_uids[0]
    out = work / "deid-out"
    plain: list[float] = []
    deidentified: list[float] = []
    for _ in range(reps):  # alternated pairs: a shared disk's speed drifts
        settle(work)
        result = cli("export", "-a", str(archive), "--study-uid", study_uid, "-o", str(out))
        if result.returncode != 0:
            raise RuntimeError(f"export exited {result.returncode}")
        plain.append(result.seconds)
        files = len(list(out.rglob("*.dcm")))
        remove(out)
        settle(work)
        result = cli("export", "-a", str(archive), "--study-uid", study_uid, "-o", str(out),
                     "--deidentify", "--shift-dates")  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"export --deidentify exited {result.returncode}")
        deidentified.append(result.seconds)
        remove(out)
    report.add(
        Result(
            "deid",
            f"export --deidentify --shift-dates of a {files:,}-instance study",
            files / median(deidentified),
            "files/s",
            files / median(plain),
            "plain export (same study)",
            goal=GOAL,
            target=f"≥ {GOAL:.2f} × export",
        )
    )
    shutil.rmtree(archive, ignore_errors=True)
