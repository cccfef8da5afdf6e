"""Orthanc's DICOMweb plugin as a client of our server, in a private network namespace.

Orthanc has no bind option, so the exchange runs in ``unshare -n`` (loopback only):
``python -m tests.web.orthanc_dicomweb_peer WORK`` starts our web server (bearer
token on) and Orthanc with libOrthancDicomWeb.so, our server configured as its
DICOMweb peer. Orthanc (1) STOW-RSes pydicom's files into us, (2) QIDO-RSes us,
(3) WADO-RS-retrieves a study from us into its own store after forgetting its copy,
(4) fetches a series' metadata. It prints one JSON line of what each side saw.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydicom.data import get_testdata_file

from dicom_archive.archive.store import init_archive, open_archive
from dicom_archive.web.server import WebServer
from dicom_archive.web.settings import WebSettings
from tests.network.orthanc_peer import _free_port, _rest, _wait

PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm")
TOKEN = "orthanc-peer-token-0123456789"


def main(work: Path) -> dict[str, Any]:
    archive = work / "archive"
    init_archive(archive).close()
    ours, orthanc_http = _free_port(), _free_port()
    config = {
        "Name": "peer",
        "StorageDirectory": str(work / "orthanc-storage"),
        "IndexDirectory": str(work / "orthanc-index"),
        "HttpPort": orthanc_http,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [PLUGIN],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "Servers": {
                "archive": {
                    "Url": f"http://127.0.0.1:{ours}/",
                    "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"},
                }
            },
        },
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    log = open(work / "orthanc.log", "wb")
    orthanc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], stdout=log, stderr=log)
    server = WebServer(WebSettings(archive, port=ours, auth="bearer", token=TOKEN))
    result: dict[str, Any] = {}
    try:
        _wait(orthanc_http)
        server.start()
        sent: dict[str, str] = {}
        for name in FILES:
            raw = Path(get_testdata_file(name)).read_bytes()
            answer = _rest(orthanc_http, "POST", "/instances", raw)
            sent[answer["ID"]] = hashlib.sha256(raw).hexdigest()
        # 1. STOW-RS from Orthanc into us.
        _rest(orthanc_http, "POST", "/dicom-web/servers/archive/stow",
              {"Resources": list(sent), "Synchronous": True})  # fmt: skip
        with open_archive(archive) as opened:
            rows = opened.index.connection.execute(
                "SELECT i.sha256, st.study_instance_uid, se.series_instance_uid FROM instances i "
                "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk"
            ).fetchall()
        result["archived"] = len(rows)
        result["archived_as_sent"] = sorted(r[0] for r in rows) == sorted(sent.values())
        # 2. QIDO-RS through Orthanc.
        found = _rest(orthanc_http, "POST", "/dicom-web/servers/archive/qido",
                      {"Uri": "/studies", "Arguments": {"PatientName": "*"}})  # fmt: skip
        # Orthanc hands the answer back in its own JSON ("Value" one string).
        result["found"] = sorted(s["00100010"]["Value"] for s in found)
        # 3. WADO-RS: Orthanc forgets its copies and retrieves the CT study from us.
        for orthanc_id in sent:
            _rest(orthanc_http, "DELETE", f"/instances/{orthanc_id}")
        ct_study = next(
            s["0020000D"]["Value"] for s in found
            if "CT" in s.get("00080061", {}).get("Value", "").split("\\")
        )  # fmt: skip
        _rest(orthanc_http, "POST", "/dicom-web/servers/archive/retrieve",
              {"Resources": [{"Study": ct_study}], "Synchronous": True})  # fmt: skip
        instances = _rest(orthanc_http, "GET", "/instances")
        result["orthanc_has"] = len(instances)
        retrieved = []
        for orthanc_id in instances:
            connection = __import__("http.client").client.HTTPConnection(
                "127.0.0.1", orthanc_http, timeout=60
            )
            connection.request("GET", f"/instances/{orthanc_id}/file")
            retrieved.append(hashlib.sha256(connection.getresponse().read()).hexdigest())
            connection.close()
        result["retrieved_identical"] = all(h in sent.values() for h in retrieved)
        # 4. Series metadata through Orthanc's generic GET.
        series = next(r[2] for r in rows if r[1] == ct_study)
        metadata = _rest(orthanc_http, "POST", "/dicom-web/servers/archive/get",
                         {"Uri": f"/studies/{ct_study}/series/{series}/metadata"})  # fmt: skip
        result["metadata_instances"] = len(metadata)
        result["metadata_pixels"] = metadata[0]["7FE00010"].get("BulkDataURI", "")
    finally:
        server.stop()
        orthanc.terminate()
        orthanc.wait(30)
        log.close()
    return result


if __name__ == "__main__":
    started = time.monotonic()
    outcome = main(Path(sys.argv[1]))
    outcome["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(outcome), flush=True)
