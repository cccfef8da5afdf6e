"""delete while an import of the same study runs: every instance ends up exactly once,
either archived (it arrived after the delete's selection) or in the trash."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

from tests.factory import new_uid, write_instance
from tests.reliability.helpers import CLI, REPO, cli, index_rows, sha256_of


def test_delete_during_an_import_of_the_same_study(tmp_path: Path) -> None:
    study, series = new_uid(), new_uid()
    sources = [
        write_instance(
            tmp_path / "in" / f"{n // 100}" / f"{n}.dcm",
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            InstanceNumber=n,
        )
        for n in range(1500)
    ]
    root = tmp_path / "archive"
    assert cli("init", "-p", root).returncode == 0
    importing = subprocess.Popen(
        [*CLI, "import", str(tmp_path / "in"), "-a", str(root), "--recursive", "--skip-duplicates"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deletes = 0
    while importing.poll() is None:
        result = cli("delete", "-a", root, "--study-uid", study, "--yes")
        assert result.returncode in (0, 1), result.stderr
        deletes += result.returncode == 0
    assert importing.wait() == 0, importing.stderr.read() if importing.stderr else ""
    assert deletes >= 1
    check = cli("check", "-a", root, "--verify-files")
    assert check.returncode == 0, check.stdout
    trashed = [p for p in (root / "trash").rglob("*.dcm")]
    archived = [root / path for path, _, _ in index_rows(root).values()]
    everything = Counter(sha256_of(p) for p in [*trashed, *archived])
    assert everything == Counter(sha256_of(p) for p in sources), "lost or duplicated"
    entries = json.loads(cli("trash", "list", "-a", root, "-f", "json").stdout)
    assert sum(e["instances"] for e in entries) == len(trashed)
