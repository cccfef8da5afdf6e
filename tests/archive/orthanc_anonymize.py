"""Orthanc's ``/instances/{id}/anonymize``, a second de-identifier nobody here wrote.

Orthanc has no bind option, so this runs inside ``unshare -n`` (loopback only):
``python -m tests.archive.orthanc_anonymize OUT FILE...`` starts Orthanc, uploads each
file, asks for its anonymized copy (Orthanc's own Basic Profile table, from the
DICOM edition it names) and writes it to ``OUT/N.dcm``; it prints one JSON line:
``{"files": {"FILE": "OUT/N.dcm" or null}, "version": "..."}``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.network.orthanc_peer import _free_port, _rest, _wait


def _raw(port: int, method: str, path: str, body: bytes | str) -> bytes:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request(method, path, body=body)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"Orthanc {method} {path}: {response.status} {data[:200]!r}")
    return data


def main(out: Path, files: list[Path]) -> dict[str, object]:
    work = out / "orthanc"
    work.mkdir(parents=True, exist_ok=True)
    http_port = _free_port()
    config = {
        "Name": "anonymizer",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "HttpPort": http_port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    with open(work / "orthanc.log", "wb") as log:
        orthanc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], stdout=log, stderr=log)
        try:
            _wait(http_port)
            system = _rest(http_port, "GET", "/system")
            result: dict[str, str | None] = {}
            for number, path in enumerate(files):
                try:
                    answer = _rest(http_port, "POST", "/instances", path.read_bytes())
                    data = _raw(http_port, "POST", f"/instances/{answer['ID']}/anonymize", "{}")
                except RuntimeError:
                    result[str(path)] = None  # Orthanc refused it; the test says which
                    continue
                target = out / f"{number}.dcm"
                target.write_bytes(data)
                result[str(path)] = str(target)
        finally:
            orthanc.terminate()
            orthanc.wait(30)
    return {"files": result, "version": system.get("Version", "")}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])), flush=True)
