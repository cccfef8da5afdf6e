"""Orthanc as a real peer of our listener, run inside a private network namespace.

Orthanc has no bind option, so the whole exchange runs in ``unshare -n`` (loopback
only): ``python -m tests.network.orthanc_peer WORK`` starts our listener and Orthanc,
then (1) Orthanc C-STOREs pydicom's files into us, (2) Orthanc C-FINDs us, (3) we
C-MOVE a study to Orthanc. It prints one JSON line of what each side saw.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore

from dicom_archive.archive.store import init_archive, open_archive
from dicom_archive.network.server import DicomServer
from dicom_archive.network.settings import DicomSettings, Peer

FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing on port {port}")


def _rest(port: int, method: str, path: str, body: Any = None) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body)
    connection.request(method, path, body=data)
    response = connection.getresponse()
    text = response.read()
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"Orthanc {method} {path}: {response.status} {text[:200]!r}")
    return json.loads(text) if text else None


def main(work: Path) -> dict[str, Any]:
    archive = work / "archive"
    init_archive(archive).close()
    ours, orthanc_dicom, orthanc_http = _free_port(), _free_port(), _free_port()
    config = {
        "Name": "peer",
        "StorageDirectory": str(work / "orthanc-storage"),
        "IndexDirectory": str(work / "orthanc-index"),
        "HttpPort": orthanc_http,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": orthanc_dicom,
        "DicomAlwaysAllowStore": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "DicomModalities": {"archive": ["DICOM_ARCHIVE", "127.0.0.1", ours]},
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    log = open(work / "orthanc.log", "wb")
    orthanc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], stdout=log, stderr=log)
    settings = DicomSettings(
        port=ours,
        peers=(Peer("ORTHANC", "127.0.0.1", orthanc_dicom), Peer("MOVER", "127.0.0.1", 0)),
    )
    result: dict[str, Any] = {}
    try:
        _wait(orthanc_http)
        with DicomServer(archive, settings):
            # 1. Orthanc C-STOREs real files into us.
            sent = {}
            for name in FILES:
                raw = Path(get_testdata_file(name)).read_bytes()
                answer = _rest(orthanc_http, "POST", "/instances", raw)
                sent[answer["ID"]] = hashlib.sha256(raw).hexdigest()
            store = _rest(orthanc_http, "POST", "/modalities/archive/store", list(sent))
            result["orthanc_store"] = store
            with open_archive(archive) as opened:
                result["archived"] = opened.index.instance_count()
            # 2. Orthanc C-FINDs us at study level.
            query = _rest(
                orthanc_http,
                "POST",
                "/modalities/archive/query",
                {
                    "Level": "Study",
                    "Query": {"PatientName": "*", "StudyDate": "", "ModalitiesInStudy": ""},
                },
            )
            answers = _rest(orthanc_http, "GET", f"/queries/{query['ID']}/answers?expand")
            result["found"] = sorted(a.get("0010,0010", {}).get("Value", "") for a in answers)
            # 3. We C-MOVE the CT study to Orthanc, after Orthanc forgets its copy.
            for orthanc_id in sent:
                _rest(orthanc_http, "DELETE", f"/instances/{orthanc_id}")
            with open_archive(archive) as opened:
                study_uid = opened.index.connection.execute(
                    "SELECT st.study_instance_uid FROM studies st JOIN series se "
                    "ON se.study_pk = st.id WHERE se.modality = 'CT'"
                ).fetchone()[0]
            ae = AE(ae_title="MOVER")
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            assoc = ae.associate("127.0.0.1", ours, ae_title="DICOM_ARCHIVE")
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.StudyInstanceUID = study_uid
            statuses = [
                int(s.Status)
                for s, _ in assoc.send_c_move(
                    identifier, "ORTHANC", StudyRootQueryRetrieveInformationModelMove
                )
            ]
            assoc.release()
            result["move_statuses"] = statuses
            result["orthanc_has"] = len(_rest(orthanc_http, "GET", "/instances"))
    finally:
        orthanc.terminate()
        orthanc.wait(30)
        log.close()
    return result


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))), flush=True)
