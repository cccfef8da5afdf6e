"""The benchmark's corpus generator stays deterministic and writes valid DICOM."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pydicom

from bench.corpus import CorpusSpec, generate, iter_headers
from bench.util import Result
from dicom_archive.archive.dicomfile import read_header

SPEC = CorpusSpec(2, 1, 2, 2, rows=16, columns=16, seed=3)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.dcm"))
    }


def test_same_spec_gives_the_same_bytes(tmp_path: Path) -> None:
    """Two runs of the generator write byte-identical corpora."""
    first = generate(SPEC, tmp_path / "a")
    second = generate(SPEC, tmp_path / "b")
    assert first.files == SPEC.instances == 8
    assert _digests(first.root) == _digests(second.root)


def test_files_are_valid_dicom_carrying_the_documented_headers(tmp_path: Path) -> None:
    """pydicom and the archive both read the files, with the headers iter_headers promises."""
    info = generate(SPEC, tmp_path / "c")
    files = sorted(info.root.rglob("*.dcm"))
    expected = list(iter_headers(SPEC))
    assert len(files) == len(expected)
    for path, header in zip(files, expected, strict=True):
        dataset = pydicom.dcmread(path)
        assert dataset.SOPInstanceUID == header.sop_instance_uid
        assert len(dataset.PixelData) == SPEC.pixel_bytes
        data = path.read_bytes()
        assert read_header(io.BytesIO(data), len(data), str(path)) == header


def test_verdicts_follow_the_direction_of_the_goal() -> None:
    """Throughput must reach its goal ratio; latency must stay under it."""
    fast = Result("s", "rate", 900.0, "files/s", 1000.0, goal=0.7)
    slow = Result("s", "latency", 6.0, "ms", 5.0, goal=1.0, higher_is_better=False)
    assert fast.verdict == "PASS"
    assert slow.verdict == "MISS"
