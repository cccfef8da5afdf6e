"""Hostile and broken input: every file gets one clear outcome, nothing crashes,
nothing is written outside the archive, and large files stream in flat memory."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.config import disable_value_validation
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.records import Outcome
from dicom_archive.archive.store import init_archive
from tests.factory import make_instance, write_dataset, write_instance
from tests.reliability.helpers import cli, cli_measured, sha256_of, tree_listing

_rng = random.Random(4)


def _valid_bytes(tmp: Path, **overrides: object) -> bytes:
    overrides.setdefault("PixelData", bytes(8 * 8 * 2))
    with disable_value_validation():
        return write_instance(tmp / "valid.dcm", **overrides).read_bytes()


def _with_sequence(tmp: Path) -> bytes:
    ds = make_instance()
    items = []
    for n in range(3):
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = f"1.2.3.{n}"
        items.append(item)
    ds.ReferencedImageSequence = items
    data = write_dataset(ds, tmp / "seq.dcm").read_bytes()
    start = data.index(b"\x08\x00\x40\x11")
    return data[: start + 40]


def _cut_fraction(path: str, fraction: float) -> Callable[[Path], bytes]:
    def make(_tmp: Path) -> bytes:
        data = Path(get_testdata_file(path) or "").read_bytes()
        return data[: int(len(data) * fraction)]

    return make


def _non_utf8_name(tmp: Path) -> bytes:
    data = _valid_bytes(tmp, PatientName="QQQQ", SpecificCharacterSet="ISO_IR 192")
    return data.replace(b"QQQQ", b"\xff\xfe\xc3\x28", 1)


def _rle_without_delimiter(_tmp: Path) -> bytes:
    data = Path(get_testdata_file("MR_small_RLE.dcm") or "").read_bytes()
    return data[: data.rindex(b"\xfe\xff\xdd\xe0")]


#: name -> how to make its bytes; each must be rejected with a reason.
BROKEN: dict[str, Callable[[Path], bytes]] = {
    "zero-byte": lambda _t: b"",
    "text": lambda _t: b"This is not a DICOM file.\n" * 20,
    "random-bytes": lambda _t: _rng.randbytes(8192),
    "dicm-then-garbage": lambda _t: b"\0" * 128 + b"DICM" + _rng.randbytes(600),
    "dicm-only": lambda _t: b"\0" * 128 + b"DICM",
    "cut-in-meta": lambda t: _valid_bytes(t)[:150],
    "cut-in-header": lambda t: _valid_bytes(t)[:400],
    "cut-in-sequence": _with_sequence,
    "cut-in-native-pixels": lambda t: _valid_bytes(t)[:-37],
    "cut-in-rle-fragment": _cut_fraction("MR_small_RLE.dcm", 0.7),
    "rle-without-delimiter": _rle_without_delimiter,
    "cut-in-jpeg2000-fragment": _cut_fraction("JPEG2000.dcm", 0.95),
    "missing-sop-uid": lambda t: _valid_bytes(t, SOPInstanceUID=None),
    "missing-study-uid": lambda t: _valid_bytes(t, StudyInstanceUID=None),
    "missing-series-uid": lambda t: _valid_bytes(t, SeriesInstanceUID=None),
    "dicomdir": lambda _t: Path(get_testdata_file("DICOMDIR") or "").read_bytes(),
}

_LONG = "7" * 5000
#: name -> attribute overrides; hostile values that must never name a path.
HOSTILE_VALUES: dict[str, dict[str, object]] = {
    "patient-dotdot-x": {"PatientID": "../../x"},
    "patient-absolute": {"PatientID": "/etc/x"},
    "patient-dotdot": {"PatientID": ".."},
    "patient-dot": {"PatientID": "."},
    "patient-nul": {"PatientID": "a\x00b"},
    "patient-control": {"PatientID": "x\x1b[31m\r\nFAKE LOG LINE"},
    "patient-5000": {"PatientID": "P" * 5000},
    "patient-name-5000": {"PatientName": "N" * 5000},
    "study-dotdot-x": {"StudyInstanceUID": "../../x"},
    "series-absolute": {"SeriesInstanceUID": "/etc/x"},
    "sop-dotdot": {"SOPInstanceUID": ".."},
    "sop-nul": {"SOPInstanceUID": "1.2.3\x004.5"},
    "sop-control": {"SOPInstanceUID": "1.2.\n3\t4"},
    "sop-5000": {"SOPInstanceUID": _LONG},
    "study-5000": {"StudyInstanceUID": "1." + _LONG},
}

#: Valid files under awkward names: all imported.
AWKWARD_NAMES = [
    "with space.dcm",
    "new\nline.dcm",
    "ümlaut-名前-Ω.dcm",
    "-starts-with-dash.dcm",
    "tab\tand\x7fdel.dcm",
    "no-extension",
]


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder of hostile inputs; name -> expected outcome ("rejected" / "imported")."""
    folder = tmp_path / "in"
    folder.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    expected = {}
    for name, make in BROKEN.items():
        (folder / name).write_bytes(make(scratch))
        expected[name] = "rejected"
    for name, overrides in HOSTILE_VALUES.items():
        (folder / name).write_bytes(_valid_bytes(scratch, **overrides))
        expected[name] = "imported"
    (folder / "non-utf8-under-iso-ir-192").write_bytes(_non_utf8_name(scratch))
    expected["non-utf8-under-iso-ir-192"] = "imported"
    for name in AWKWARD_NAMES:
        write_instance(folder / name)
        expected[name] = "imported"
    return folder, expected


def assert_nothing_outside(archive: Path) -> None:
    root = archive.resolve()
    for path in archive.rglob("*"):
        assert path.resolve().is_relative_to(root), path
    for path in (archive / "data").rglob("*"):
        relative = path.relative_to(archive / "data")
        assert len(relative.parts) <= 4, relative
        for part in relative.parts:
            assert part not in (".", "..") and not part.startswith(".") and len(part) <= 68
            assert all(ch.isascii() and (ch.isalnum() or ch in "._-") for ch in part), part


def test_hostile_inputs_each_get_a_clear_outcome_through_the_cli(
    hostile: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    folder, expected = hostile
    archive = tmp_path / "deep" / "er" / "archive"
    assert cli("init", "-p", archive).returncode == 0
    outside_before = tree_listing(tmp_path)
    result = cli("import", folder, "-a", archive, "--verbose")
    assert result.returncode == 1
    assert "unexpected error" not in result.stderr and "Traceback" not in result.stderr
    rejected = sum(1 for v in expected.values() if v == "rejected")
    imported = len(expected) - rejected
    assert result.stdout.splitlines()[-1].startswith(
        f"{imported} imported, 0 duplicates, 0 conflicts, {rejected} rejected"
    ), result.stdout
    # Hostile metadata and names never reach the terminal raw.
    assert "\x1b" not in result.stdout + result.stderr
    assert "FAKE LOG LINE" not in result.stdout  # imported lines show paths, not IDs
    inside = str(archive.relative_to(tmp_path))

    def outside(listing: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        return {p: v for p, v in listing.items() if not p.startswith(inside)}

    assert outside(tree_listing(tmp_path)) == outside(outside_before)
    assert_nothing_outside(archive)
    for name in ("x", "etc"):
        assert not (tmp_path / "deep" / name).exists()
    check = cli("check", "-a", archive, "--verify-files")
    assert check.returncode == 0, check.stdout


def test_hostile_inputs_each_get_the_expected_outcome_through_the_api(
    hostile: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    folder, expected = hostile
    with init_archive(tmp_path / "archive") as archive:
        outcomes = {o.source.name: o for o in import_paths(archive, sorted(folder.iterdir()))}
    assert set(outcomes) == set(expected)
    wrong = {
        name: (o.outcome.value, o.reason)
        for name, o in outcomes.items()
        if o.outcome.value != expected[name]
    }
    assert wrong == {}
    for outcome in outcomes.values():
        if outcome.outcome is Outcome.REJECTED:
            assert outcome.reason and "\n" not in outcome.reason and len(outcome.reason) <= 200
    paths = [o.archived_path for o in outcomes.values() if o.outcome is Outcome.IMPORTED]
    assert len(set(paths)) == len(paths), "two different inputs share an archived path"
    assert_nothing_outside(tmp_path / "archive")


def _element_boundaries_before_pixels(data: bytes) -> list[int]:
    """Offsets where a top-level element ends, after the UIDs and before Pixel Data."""
    import io

    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    ends = []
    for tag in dataset.keys():
        raw = dataset.get_item(tag)
        if tag > 0x0020000E and raw.length != 0xFFFFFFFF:
            ends.append(raw.value_tell + raw.length)
    return ends


@pytest.mark.xfail(
    strict=True,
    reason="known limitation: a file cut exactly between two elements before its Pixel Data "
    "is indistinguishable from a complete header-only file, which real archives (and 60 of "
    "pydicom's own test files) hold and which DCMTK and Orthanc accept; the defence is the "
    "daemon's settle time and the write-then-rename convention (see RELIABILITY.md)",
)
def test_an_image_cut_at_an_element_boundary_before_its_pixels_is_rejected(
    tmp_path: Path,
) -> None:
    accepted = []
    for source in (Path(get_testdata_file("JPEG2000.dcm") or ""), write_instance(tmp_path / "v")):
        data = source.read_bytes()
        for end in _element_boundaries_before_pixels(data):
            cut = tmp_path / f"{source.name}-{end}"
            cut.write_bytes(data[:end])
            with init_archive(tmp_path / f"a-{source.name}-{end}") as archive:
                (outcome,) = import_paths(archive, [cut])
            if outcome.outcome is not Outcome.REJECTED:
                accepted.append(cut.name)
    assert accepted == []


def write_large_instance(path: Path, rows: int, columns: int) -> int:
    """A valid instance with ``rows × columns`` 16-bit pixels, streamed to disk (the
    test itself never holds the pixel data)."""
    ds = make_instance(rows=rows, columns=columns, PixelData=None)
    write_dataset(ds, path)
    length = rows * columns * 2
    chunk = bytes(range(256)) * 4096
    with open(path, "ab") as out:
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        left = length
        while left:
            piece = chunk[: min(left, len(chunk))]
            out.write(piece)
            left -= len(piece)
    return path.stat().st_size


def _import_large(tmp_path: Path, rows: int, columns: int) -> tuple[int, int]:
    source = tmp_path / "large.dcm"
    size = write_large_instance(source, rows, columns)
    archive = tmp_path / "archive"
    assert cli("init", "-p", archive).returncode == 0
    result = cli_measured("import", source, "-a", archive, "--verbose")
    assert result.returncode == 0, result.stderr
    archived = next((archive / "data").rglob("*.dcm"))
    assert sha256_of(archived) == sha256_of(source)
    truncated = tmp_path / "cut.dcm"
    with open(source, "rb") as src, open(truncated, "wb") as out:
        left = size // 2
        while left:
            piece = src.read(min(left, 1 << 20))
            out.write(piece)
            left -= len(piece)
    cut = cli_measured("import", truncated, "-a", archive)
    assert cut.returncode == 1 and "truncated" in cut.stderr, cut.stderr
    rebuilt = cli_measured("rebuild", "-a", archive)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    peaks = (result.max_rss_kb, cut.max_rss_kb, rebuilt.max_rss_kb)
    print(
        f"{size / 1e6:.0f} MB file: peak RSS MB import/truncated/rebuild",
        [p // 1024 for p in peaks],
    )
    return size, max(peaks) * 1024


def test_a_200_mb_file_streams_in_flat_memory(tmp_path: Path) -> None:
    """A 200 MB instance is archived byte-identical with a peak RSS far below its
    size; cut in half, it is rejected as truncated, also without loading it; and
    rebuild reads it back in flat memory too."""
    size, peak = _import_large(tmp_path, 10_000, 10_000)
    assert size > 200_000_000
    assert peak < size // 2, f"peak RSS {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"


@pytest.mark.slow
def test_a_2_gb_file_streams_in_flat_memory(tmp_path: Path) -> None:
    size, peak = _import_large(tmp_path, 32_000, 32_000)
    assert size > 2_000_000_000
    assert peak < 200_000_000, f"peak RSS {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"


def test_check_verify_files_streams_a_200_mb_file(tmp_path: Path) -> None:
    source = tmp_path / "large.dcm"
    size = write_large_instance(source, 10_000, 10_000)
    archive = tmp_path / "archive"
    cli("init", "-p", archive)
    assert cli("import", source, "-a", archive).returncode == 0
    verified = cli_measured("check", "-a", archive, "--verify-files")
    assert verified.returncode == 0
    assert verified.max_rss_kb * 1024 < size // 2
