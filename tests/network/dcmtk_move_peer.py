"""DCMTK on both ends of a C-MOVE: ``movescu`` asks us to move a study to ``storescp``.

storescp has no bind option, so the exchange runs in ``unshare -n`` (loopback only):
``python -m tests.network.dcmtk_move_peer WORK`` archives pydicom's files, starts our
listener and storescp, runs movescu, and prints one JSON line of what each side saw.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_archive.archive.importer import import_paths
from dicom_archive.archive.store import init_archive, open_archive
from dicom_archive.network.server import DicomServer
from dicom_archive.network.settings import DicomSettings, Peer

#: The moved study: one MR image stored in explicit little endian, RLE, JPEG 2000 and
#: big endian (pydicom's copies share a SOP Instance UID: each gets its own here).
MOVED = ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm")
#: Another study, which must stay where it is.
OTHER = "CT_small.dcm"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing on port {port}")


def _dataset_digest(path: Path) -> str:
    """SHA-256 of every top-level element of the data set as encoded (tag, VR and value
    bytes; sequences and encapsulated pixel data as raw bytes), but Data Set Trailing
    Padding, which a receiver may drop, and Pixel Data's VR: storescp writes
    encapsulated pixel data as OB, as PS3.5 A.4 requires, where pydicom's JPEG 2000
    file says OW."""
    digest = hashlib.sha256()
    for element in dcmread(path).elements():
        if element.tag == 0xFFFCFFFC:
            continue
        value = element.value if isinstance(element.value, bytes) else repr(element.value)
        vr = "" if element.tag == 0x7FE00010 else element.VR
        digest.update(f"{int(element.tag):08x}{vr}".encode())
        digest.update(value if isinstance(value, bytes) else value.encode())
    return digest.hexdigest()


def main(work: Path) -> dict[str, Any]:
    archive, received = work / "archive", work / "received"
    received.mkdir(parents=True)
    sources = [Path(get_testdata_file(OTHER))]
    for n, name in enumerate(MOVED):
        dataset = dcmread(get_testdata_file(name))
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.InstanceNumber = n + 1
        sources.append(work / "in" / name)
        sources[-1].parent.mkdir(exist_ok=True)
        dataset.save_as(sources[-1], enforce_file_format=True)
    with init_archive(archive) as opened:
        outcomes = [o.outcome.value for o in import_paths(opened, sources)]
    with open_archive(archive) as opened:
        rows = opened.index.connection.execute(
            "SELECT st.study_instance_uid, i.sop_instance_uid, i.file_path FROM instances i "
            "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk"
        ).fetchall()
    moved_study = str(dcmread(sources[1], stop_before_pixels=True).StudyInstanceUID)
    expected = {sop: _dataset_digest(archive / path) for study, sop, path in rows
                if study == moved_study}  # fmt: skip
    ours, theirs = _free_port(), _free_port()
    settings = DicomSettings(
        port=ours, peers=(Peer("MOVESCU", "127.0.0.1", 0), Peer("STORESCP", "127.0.0.1", theirs))
    )
    log = open(work / "storescp.log", "wb")
    storescp = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "+xa", "-od", str(received), str(theirs)],
        stdout=log,
        stderr=log,
    )
    try:
        _wait(theirs)
        with DicomServer(archive, settings):
            move = subprocess.run(
                ["movescu", "-S", "-aet", "MOVESCU", "-aec", "DICOM_ARCHIVE", "-aem", "STORESCP",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={moved_study}",
                 "127.0.0.1", str(ours)],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
    finally:
        storescp.terminate()
        storescp.wait(30)
        log.close()
    got = {}
    for path in received.iterdir():
        sop = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        got[sop] = _dataset_digest(path)
    return {
        "outcomes": outcomes,
        "movescu_exit": move.returncode,
        "movescu_output": (move.stdout + move.stderr)[-2000:],
        "expected": expected,
        "received": got,
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))), flush=True)
