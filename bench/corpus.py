"""A deterministic generator of synthetic DICOM studies.

Files are encoded directly (Explicit VR Little Endian, a full Part 10 file meta
group, about forty realistic header attributes and native 16-bit Pixel Data), so a
100,000-file corpus takes seconds instead of minutes. The same spec and seed give
byte-identical files on every machine. ``iter_headers`` yields the very same
attribute values as ``InstanceHeader`` objects, for building a large index without
writing files (the documented bulk path in ``bench.scale``).
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dicom_archive.archive.records import InstanceHeader

UID_ROOT = "1.2.826.0.1.3680043.10.1071.99"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1071.99.0.1"

SURNAMES = (
    "SMITH",
    "JOHNSON",
    "WILLIAMS",
    "BROWN",
    "JONES",
    "GARCIA",
    "MILLER",
    "DAVIS",
    "RODRIGUEZ",
    "MARTINEZ",
    "HERNANDEZ",
    "LOPEZ",
    "GONZALEZ",
    "WILSON",
    "ANDERSON",
    "THOMAS",
    "TAYLOR",
    "MOORE",
    "JACKSON",
    "MARTIN",
    "LEE",
    "PEREZ",
    "THOMPSON",
    "WHITE",
    "HARRIS",
    "SANCHEZ",
    "CLARK",
    "RAMIREZ",
    "LEWIS",
    "ROBINSON",
    "WALKER",
    "YOUNG",
    "ALLEN",
    "KING",
    "WRIGHT",
    "SCOTT",
    "TORRES",
    "NGUYEN",
    "HILL",
    "FLORES",
    "GREEN",
    "ADAMS",
    "NELSON",
    "BAKER",
    "HALL",
    "RIVERA",
    "CAMPBELL",
    "MITCHELL",
    "CARTER",
    "ROBERTS",
    "MÜLLER",
    "SCHMIDT",
    "SCHNEIDER",
    "FISCHER",
    "WEBER",
    "MEYER",
    "WAGNER",
    "BECKER",
    "SCHULZ",
    "HOFFMANN",
    "DUBOIS",
    "MOREAU",
    "LAURENT",
    "ROSSI",
    "RUSSO",
    "FERRARI",
    "ESPOSITO",
    "BIANCHI",
    "ROMANO",
    "COLOMBO",
    "OKAFOR",
    "TANAKA",
    "SUZUKI",
    "KIM",
    "PARK",
)
#: (surname, cumulative probability): about 0.3 % of patients are DOE or DOEBLER and
#: 0.3 % BRAINARD or MCBRAIN, so DOE* and *BRAIN* select a realistic handful.
RARE_SURNAMES = (("DOE", 0.002), ("DOEBLER", 0.003), ("BRAINARD", 0.005), ("MCBRAIN", 0.006))
GIVEN = (
    "JAMES",
    "MARY",
    "ROBERT",
    "PATRICIA",
    "JOHN",
    "JENNIFER",
    "MICHAEL",
    "LINDA",
    "DAVID",
    "ELIZABETH",
    "WILLIAM",
    "BARBARA",
    "JÖRG",
    "ANNA",
    "LUCA",
    "SOPHIE",
    "YUKI",
    "AMARA",
    "JANE",
    "OMAR",
)
PROTOCOLS = (
    ("CT", "HEAD", "CT HEAD W/O CONTRAST", ("AXIAL 5mm", "AXIAL 1.25mm", "CORONAL", "SAGITTAL")),
    ("CT", "CHEST", "CT CHEST ABDOMEN PELVIS", ("ARTERIAL", "PORTAL VENOUS", "LUNG", "BONE")),
    ("MR", "BRAIN", "MR BRAIN WITH CONTRAST", ("T1 SAG", "T2 AX", "FLAIR AX", "DWI")),
    ("CT", "ABDOMEN", "CT ABDOMEN", ("AXIAL", "CORONAL MPR", "SAGITTAL MPR", "SCOUT")),
    ("MR", "KNEE", "MR KNEE LEFT", ("PD FS COR", "T1 COR", "PD SAG", "T2 AX")),
    ("CT", "SPINE", "CT LUMBAR SPINE", ("BONE AXIAL", "SOFT AXIAL", "SAG REFORMAT", "COR")),
)


@dataclass(frozen=True, slots=True)
class CorpusSpec:
    """patients x studies x series x instances, with a pixel matrix of rows x columns."""

    patients: int
    studies_per_patient: int
    series_per_study: int
    instances_per_series: int
    rows: int = 64
    columns: int = 64
    seed: int = 1

    @property
    def instances(self) -> int:
        return (
            self.patients
            * self.studies_per_patient
            * self.series_per_study
            * self.instances_per_series
        )

    @property
    def pixel_bytes(self) -> int:
        return self.rows * self.columns * 2


@dataclass(frozen=True, slots=True)
class CorpusInfo:
    root: Path
    files: int
    bytes: int
    study_uids: tuple[str, ...]


def _uid(seed: int, *parts: int) -> str:
    return ".".join((UID_ROOT, str(seed), *(str(p) for p in parts)))


def patient_attributes(seed: int, patient: int) -> tuple[str, str, str, str]:
    """(Patient ID, Patient Name, Birth Date, Sex) of patient number ``patient``."""
    rng = random.Random(f"{seed}-p-{patient}")
    draw = rng.random()
    # A few rare surnames, so that DOE* and *BRAIN* select a realistic handful.
    rare = next((n for n, limit in RARE_SURNAMES if draw < limit), None)
    name = f"{rare or rng.choice(SURNAMES)}^{rng.choice(GIVEN)}"
    birth = f"{rng.randint(1930, 2015)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    return f"PID{seed:02d}{patient:07d}", name, birth, rng.choice("MF")


def study_attributes(seed: int, patient: int, study: int) -> tuple[str, str, str, int]:
    """(Study Date, Study Time, Accession Number, protocol number)."""
    rng = random.Random(f"{seed}-s-{patient}-{study}")
    day = rng.randint(0, 3650)
    year, rest = 2015 + day // 365, day % 365
    date = f"{year}{rest // 28 % 12 + 1:02d}{rest % 28 + 1:02d}"
    time = f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}"
    return date, time, f"A{seed:02d}{patient:07d}{study:02d}", rng.randrange(len(PROTOCOLS))


def iter_headers(spec: CorpusSpec) -> Iterator[InstanceHeader]:
    """The headers the generated files carry, in generation order."""
    for p, s, se, i in _positions(spec):
        yield _header(spec, p, s, se, i)


def _positions(spec: CorpusSpec) -> Iterator[tuple[int, int, int, int]]:
    for p in range(spec.patients):
        for s in range(spec.studies_per_patient):
            for se in range(spec.series_per_study):
                for i in range(spec.instances_per_series):
                    yield p, s, se, i


def _header(spec: CorpusSpec, p: int, s: int, se: int, i: int) -> InstanceHeader:
    patient_id, name, birth, sex = patient_attributes(spec.seed, p)
    date, time, accession, protocol = study_attributes(spec.seed, p, s)
    modality, body_part, description, series_names = PROTOCOLS[protocol]
    return InstanceHeader(
        sop_instance_uid=_uid(spec.seed, p, s, se, i + 1),
        sop_class_uid=CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE,
        study_instance_uid=_uid(spec.seed, p, s),
        series_instance_uid=_uid(spec.seed, p, s, se),
        transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
        patient_id=patient_id,
        patient_name=name,
        patient_birth_date=birth,
        patient_sex=sex,
        study_date=date,
        study_time=time,
        study_description=description,
        accession_number=accession,
        study_id=str(s + 1),
        referring_physician="HOUSE^GREGORY",
        modality=modality,
        series_description=series_names[se % len(series_names)],
        series_number=se + 1,
        body_part=body_part,
        instance_number=i + 1,
    )


# -- encoding ----------------------------------------------------------------

_LONG_VRS = {"OB", "OW", "SQ", "UN", "UT"}


def _pad(value: bytes, vr: str) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == "UI" or vr == "OB" else b" "
    return value


def _element(group: int, elem: int, vr: str, value: bytes) -> bytes:
    value = _pad(value, vr)
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHL", group, elem, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), len(value)) + value


def _text(group: int, elem: int, vr: str, value: str) -> bytes:
    return _element(group, elem, vr, value.encode("utf-8"))


def _us(group: int, elem: int, value: int) -> bytes:
    return _element(group, elem, "US", struct.pack("<H", value))


def encode(spec: CorpusSpec, header: InstanceHeader, pixels: bytes) -> bytes:
    """A complete Part 10 file for ``header`` with native 16-bit ``pixels``."""
    meta_body = b"".join(
        (
            _element(0x0002, 0x0001, "OB", b"\x00\x01"),
            _text(0x0002, 0x0002, "UI", header.sop_class_uid),
            _text(0x0002, 0x0003, "UI", header.sop_instance_uid),
            _text(0x0002, 0x0010, "UI", EXPLICIT_VR_LITTLE_ENDIAN),
            _text(0x0002, 0x0012, "UI", IMPLEMENTATION_UID),
            _text(0x0002, 0x0013, "SH", "DICOMARCH_BENCH"),
        )
    )
    meta = _element(0x0002, 0x0000, "UL", struct.pack("<L", len(meta_body))) + meta_body
    n = header.instance_number or 1
    position = f"-125.0\\-125.0\\{-n * 1.25:.2f}"
    spacing = f"{250.0 / spec.rows:.6f}\\{250.0 / spec.columns:.6f}"
    body = b"".join(
        (
            _text(0x0008, 0x0005, "CS", "ISO_IR 192"),
            _text(0x0008, 0x0008, "CS", "ORIGINAL\\PRIMARY\\AXIAL"),
            _text(0x0008, 0x0016, "UI", header.sop_class_uid),
            _text(0x0008, 0x0018, "UI", header.sop_instance_uid),
            _text(0x0008, 0x0020, "DA", header.study_date),
            _text(0x0008, 0x0021, "DA", header.study_date),
            _text(0x0008, 0x0030, "TM", header.study_time),
            _text(0x0008, 0x0050, "SH", header.accession_number),
            _text(0x0008, 0x0060, "CS", header.modality),
            _text(0x0008, 0x0070, "LO", "ACME MEDICAL"),
            _text(0x0008, 0x0080, "LO", "GENERAL HOSPITAL"),
            _text(0x0008, 0x0090, "PN", header.referring_physician),
            _text(0x0008, 0x1030, "LO", header.study_description),
            _text(0x0008, 0x103E, "LO", header.series_description),
            _text(0x0008, 0x1090, "LO", "SCANMASTER 3000"),
            _text(0x0010, 0x0010, "PN", header.patient_name),
            _text(0x0010, 0x0020, "LO", header.patient_id),
            _text(0x0010, 0x0030, "DA", header.patient_birth_date),
            _text(0x0010, 0x0040, "CS", header.patient_sex),
            _text(0x0018, 0x0015, "CS", header.body_part),
            _text(0x0018, 0x0050, "DS", "1.25"),
            _text(0x0018, 0x0060, "DS", "120"),
            _text(0x0020, 0x000D, "UI", header.study_instance_uid),
            _text(0x0020, 0x000E, "UI", header.series_instance_uid),
            _text(0x0020, 0x0010, "SH", header.study_id),
            _text(0x0020, 0x0011, "IS", str(header.series_number)),
            _text(0x0020, 0x0013, "IS", str(n)),
            _text(0x0020, 0x0032, "DS", position),
            _text(0x0020, 0x0037, "DS", "1\\0\\0\\0\\1\\0"),
            _text(0x0020, 0x1041, "DS", f"{-n * 1.25:.2f}"),
            _us(0x0028, 0x0002, 1),
            _text(0x0028, 0x0004, "CS", "MONOCHROME2"),
            _us(0x0028, 0x0010, spec.rows),
            _us(0x0028, 0x0011, spec.columns),
            _text(0x0028, 0x0030, "DS", spacing),
            _us(0x0028, 0x0100, 16),
            _us(0x0028, 0x0101, 12),
            _us(0x0028, 0x0102, 11),
            _us(0x0028, 0x0103, 0),
            _text(0x0028, 0x1050, "DS", "40"),
            _text(0x0028, 0x1051, "DS", "400"),
            _text(0x0028, 0x1052, "DS", "-1024"),
            _text(0x0028, 0x1053, "DS", "1"),
            _element(0x7FE0, 0x0010, "OW", pixels),
        )
    )
    return b"\x00" * 128 + b"DICM" + meta + body


def _pixels(spec: CorpusSpec, p: int, s: int, se: int, i: int) -> bytes:
    # Random bytes from a per-instance seed: incompressible like real noise, and
    # every file's content is distinct.
    return random.Random(hash_seed(spec.seed, p, s, se, i)).randbytes(spec.pixel_bytes)


def hash_seed(*parts: int) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def relative_file(p: int, s: int, se: int, i: int) -> str:
    return f"P{p:05d}/ST{s:02d}/SE{se:02d}/IM{i:05d}.dcm"


def generate(spec: CorpusSpec, out: Path) -> CorpusInfo:
    """Write the corpus under ``out`` (created); the same spec gives the same bytes."""
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    files = 0
    studies: list[str] = []
    made: set[Path] = set()
    for p, s, se, i in _positions(spec):
        header = _header(spec, p, s, se, i)
        if se == 0 and i == 0:
            studies.append(header.study_instance_uid)
        path = out / relative_file(p, s, se, i)
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        data = encode(spec, header, _pixels(spec, p, s, se, i))
        with open(path, "wb") as handle:
            handle.write(data)
        total += len(data)
        files += 1
    return CorpusInfo(out, files, total, tuple(studies))


def tree_bytes(root: Path) -> int:
    total = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            total += os.path.getsize(os.path.join(folder, name))
    return total


def iter_files(spec: CorpusSpec, root: Path) -> Iterator[tuple[Path, InstanceHeader]]:
    """(path under ``root``, header) of every file ``generate(spec, root)`` writes."""
    for p, s, se, i in _positions(spec):
        yield root / relative_file(p, s, se, i), _header(spec, p, s, se, i)
