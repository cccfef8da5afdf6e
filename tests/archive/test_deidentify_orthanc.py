"""Our de-identification against Orthanc's ``/anonymize`` (a second implementation
nobody here wrote) on pydicom's files: which attributes each leaves, element by
element at every depth. Where they differ, ours must be what PS3.15 (2024e Table
E.1-1) says; each kind of difference is named below with the standard's reason.

Differences seen with Orthanc 1.10.1 (its table is the 2021b edition's):

- Orthanc keeps, we remove:
  - group lengths (gggg,0000): retired, and stale once values change; not a profile
    matter.
  - overlays (60xx): Overlay Data and Comments are X in Table E.1-1; Orthanc's table
    has no repeating groups. We remove the whole group with its data.
  - attributes 2024e lists as X that 2021b did not (Contrast/Bolus Start and Stop Time).
- We keep, Orthanc removes:
  - attributes with a compound action (X/Z, X/D, X/Z/D; Series Date, Institution Name,
    Protocol Name...): "X unless Z/D is needed for IOD conformance". Orthanc removes;
    we keep them emptied or dummied, which is valid in every IOD (see deidentify.py).
  - Content Sequence and Verifying Observer Sequence: D in 2024e (X in 2021b). We keep
    their structure with every text, name, code, date and time replaced by a dummy.
  - what we add: De-identification Method Code Sequence (CID 7050 codes),
    Longitudinal Temporal Information Modified, and Patient ID/Name where the input had
    none (Type 2 in the Patient Module).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.dataelem import DataElement

from dicom_archive.archive.deid_export import export_deidentified
from dicom_archive.archive.deidentify import DeidOptions, load_profile, resolve_action
from dicom_archive.archive.export import Selector
from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.store import init_archive
from tests.archive.deid_helpers import keyer_of, read, walk
from tests.factory import iter_pydicom_files
from tests.network.test_dicom_server import _can_unshare

REPO = Path(__file__).resolve().parents[2]

#: X in 2024e, absent from the 2021b table Orthanc 1.10 applies.
NEWER_THAN_ORTHANCS_TABLE = {"ContrastBolusStartTime", "ContrastBolusStopTime"}
#: D sequences in 2024e that Orthanc removes whole.
D_SEQUENCES = {"ContentSequence", "VerifyingObserverSequence"}
WE_ADD = {
    "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
    "PatientID",
    "PatientName",
}


def _paths(path: Path) -> dict[str, tuple[str, DataElement]]:
    """Element paths with item numbers dropped -> (top-level keyword, element)."""
    found: dict[str, tuple[str, DataElement]] = {}
    for where, _, elem in walk(read(path)):
        top = where.split("[")[0].split(".")[0]
        found[re.sub(r"\[\d+\]", "[]", where)] = (top, elem)
    return found


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="apt-get install orthanc")
@pytest.mark.skipif(not _can_unshare(), reason="Orthanc has no bind option: needs unshare -n")
def test_we_leave_only_what_the_standard_allows_where_orthanc_differs(tmp_path: Path) -> None:
    profile = load_profile()
    options = DeidOptions()
    with init_archive(tmp_path / "archive") as archive:
        list(import_paths(archive, list(iter_pydicom_files())))
        rows = archive.index.connection.execute(
            "SELECT i.sop_instance_uid, i.file_path, p.patient_id FROM instances i "
            "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk "
            "JOIN patients p ON p.id = st.patient_pk"
        ).fetchall()
        for patient_id in sorted({r[2] for r in rows}):
            export_deidentified(
                archive, Selector(patient_id=patient_id), tmp_path / "ours", options
            )
        keyer = keyer_of(archive)
        sources = [str(archive.root / relative) for _, relative, _ in rows]
    script = (
        f"ip link set lo up && exec {sys.executable} -m tests.archive.orthanc_anonymize "
        f"{tmp_path / 'orthanc'} " + " ".join(sources)
    )
    run = subprocess.run(["unshare", "-n", "bash", "-c", script], cwd=REPO,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    theirs_by_source = json.loads(lines[-1])["files"]
    compared = 0
    unexplained: list[str] = []
    seen_kinds: set[str] = set()
    for sop, relative, _ in rows:
        theirs = theirs_by_source.get(str(tmp_path / "archive" / relative))
        ours = list((tmp_path / "ours").rglob(keyer.uid(sop) + ".dcm"))
        if theirs is None or not ours:
            continue  # refused by one of the two (the same broken file), said elsewhere
        compared += 1
        mine, other = _paths(ours[0]), _paths(Path(theirs))
        for where in sorted(set(other) - set(mine)):
            _, elem = other[where]
            tag = elem.tag
            rule = profile.rule_for(tag)
            if tag.element == 0:
                seen_kinds.add("group length")
            elif 0x6000 <= tag.group <= 0x60FF:
                seen_kinds.add("overlay")
            elif (
                rule is not None
                and elem.keyword in NEWER_THAN_ORTHANCS_TABLE
                and resolve_action(rule, options, is_sequence=False) == "X"
            ):
                seen_kinds.add("newer table")
            else:
                unexplained.append(f"{ours[0].name}: Orthanc keeps {where}, we do not")
        for where in sorted(set(mine) - set(other)):
            top, elem = mine[where]
            keyword = elem.keyword
            rule = profile.rule_for(elem.tag)
            top_keyword = mine[top][1].keyword if top in mine else ""
            if rule is not None and "/" in rule.basic:
                seen_kinds.add("compound kept")
            elif where == top and keyword in WE_ADD:
                seen_kinds.add("added")
            elif top_keyword in WE_ADD:
                seen_kinds.add("added")
            elif top_keyword in D_SEQUENCES:
                seen_kinds.add("D sequence")
                if elem.VR in ("LO", "LT", "PN", "SH", "ST", "UT", "DA", "DT", "TM"):
                    assert elem.value in ("", None) or str(elem.value).startswith(
                        ("ANONYMIZED", "1900", "0000")
                    ), f"{ours[0].name}: {where} is not a dummy: {elem.value!r}"
            else:
                unexplained.append(f"{ours[0].name}: we keep {where}, Orthanc does not")
    assert compared >= 120
    assert not unexplained, "\n".join(unexplained[:40])
    # Every documented kind of difference was met: the comparison saw real files.
    assert seen_kinds >= {"group length", "overlay", "compound kept", "added", "D sequence"}
