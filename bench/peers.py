"""Peers measured in the same run: Orthanc (REST upload) and DCMTK storescu -> storescp.

Each peer runs inside a private network namespace (``unshare -n``) that holds only
the loopback interface, so nothing listens beyond this machine even though
storescp has no bind-address option. Where ``unshare`` is not permitted the peers
run directly, talking to 127.0.0.1 only (Orthanc with ``RemoteAccessAllowed``
false). ``python -m bench.peers orthanc|dcmtk ...`` is the child side: it prints
one JSON line with its timings.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.util import free_port, median, percentile

ORTHANC = "Orthanc"
STORESCP = "storescp"
STORESCU = "storescu"
INSTALL_HINT = "install with: apt-get install orthanc dcmtk"


def available(program: str) -> bool:
    return shutil.which(program) is not None


def _can_unshare() -> bool:
    if not available("unshare") or not available("ip"):
        return False
    probe = subprocess.run(
        ["unshare", "-n", "ip", "link", "set", "lo", "up"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return probe.returncode == 0


def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``python -m bench.peers ARGS`` (isolated when possible); its JSON answer."""
    command = [sys.executable, "-m", "bench", "--peer-child", *args]
    if _can_unshare():
        inner = " ".join(_quote(a) for a in command)
        command = ["unshare", "-n", "bash", "-c", f"ip link set lo up && exec {inner}"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"peer run failed ({result.returncode}): {' | '.join(tail)}")
    answer: dict[str, Any] = json.loads(lines[-1])
    answer["isolated"] = command[0] == "unshare"
    return answer


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _files(corpus: Path) -> list[Path]:
    return sorted(corpus.rglob("*.dcm"))


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- Orthanc ----------------------------------------------------------------------


def _orthanc_config(folder: Path, http_port: int) -> Path:
    config = {
        "Name": "dicom-archive-bench",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "HttpServerEnabled": True,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "StorageCompression": False,
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _post(connection: http.client.HTTPConnection, path: str, body: bytes, kind: str) -> bytes:
    connection.request("POST", path, body=body, headers={"Content-Type": kind})
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"Orthanc answered {response.status} to POST {path}: {data[:200]!r}")
    return data


def orthanc_child(corpus: Path, uploaders: int, finds: list[dict[str, Any]]) -> dict[str, Any]:
    files = _files(corpus)
    with tempfile.TemporaryDirectory(prefix="bench-orthanc-", dir=corpus.parent) as tmp:
        folder = Path(tmp)
        port = free_port()
        config = _orthanc_config(folder, port)
        log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed below
        process = subprocess.Popen([ORTHANC, str(config)], stdout=log, stderr=log)
        try:
            _wait_port(port, 60)
            errors: list[BaseException] = []

            def upload(share: list[Path]) -> None:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                try:
                    for path in share:
                        _post(connection, "/instances", path.read_bytes(), "application/dicom")
                except BaseException as exc:
                    errors.append(exc)
                finally:
                    connection.close()

            threads = [
                threading.Thread(target=upload, args=(files[i::uploaders],))
                for i in range(uploaders)
            ]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - started
            if errors:
                raise errors[0]
            latencies: dict[str, float] = {}
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for find in finds:
                body = json.dumps({"Level": "Study", "Query": find["query"]}).encode()
                _post(connection, "/tools/find", body, "application/json")
                samples = []
                for _ in range(int(find.get("reps", 20))):
                    begin = time.perf_counter()
                    _post(connection, "/tools/find", body, "application/json")
                    samples.append((time.perf_counter() - begin) * 1000)
                latencies[find["name"]] = percentile(samples, 0.5)
            connection.close()
        finally:
            _stop(process)
            log.close()
    return {"seconds": seconds, "files": len(files), "find_ms": latencies}


# -- DCMTK ----------------------------------------------------------------------------


#: DCMTK reads TCP_NODELAY from the environment; without it Nagle's algorithm meets
#: delayed ACKs on loopback and each C-STORE waits ~90 ms.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def start_storescp(out: Path, port: int) -> subprocess.Popen[bytes]:
    """DCMTK's storescp writing what it receives into ``out``; returns once it listens."""
    process = subprocess.Popen(
        [STORESCP, "-aet", "BENCH", "-od", str(out), "-dhl", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=DCMTK_ENV,
    )
    try:
        _wait_port(port, 30)
    except RuntimeError:
        _stop(process)
        raise
    return process


def dcmtk_child(corpus: Path) -> dict[str, Any]:
    files = _files(corpus)
    env = DCMTK_ENV
    with tempfile.TemporaryDirectory(prefix="bench-storescp-", dir=corpus.parent) as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        port = free_port()
        process = start_storescp(out, port)
        try:
            started = time.perf_counter()
            subprocess.run(
                [
                    STORESCU,
                    "-aec",
                    "BENCH",
                    "+sd",
                    "+r",
                    "-nh",
                    "127.0.0.1",
                    str(port),
                    str(corpus),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
                env=env,
            )
            seconds = time.perf_counter() - started
            received = sum(1 for _ in out.iterdir())
        finally:
            _stop(process)
    return {"seconds": seconds, "files": len(files), "received": received}


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench --peer-child")
    parser.add_argument("peer", choices=("orthanc", "dcmtk"))
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--uploaders", type=int, default=1)
    parser.add_argument("--finds", default="[]")
    args = parser.parse_args(argv)
    if args.peer == "orthanc":
        answer = orthanc_child(args.corpus, args.uploaders, json.loads(args.finds))
    else:
        answer = dcmtk_child(args.corpus)
    print(json.dumps(answer), flush=True)
    return 0


def orthanc_rate(
    corpus: Path, uploaders: int, reps: int, finds: list[dict[str, Any]]
) -> tuple[float, dict[str, float], bool]:
    """Median files/s over ``reps`` fresh Orthanc instances, the last run's find latencies."""
    rates = []
    answer: dict[str, Any] = {}
    for _ in range(reps):
        answer = run_child(
            ["orthanc", str(corpus), "--uploaders", str(uploaders), "--finds", json.dumps(finds)],
            timeout=3600,
        )
        rates.append(answer["files"] / answer["seconds"])
    return median(rates), answer.get("find_ms", {}), bool(answer.get("isolated"))


def dcmtk_rate(corpus: Path, reps: int) -> tuple[float, int]:
    rates = []
    received = 0
    for _ in range(reps):
        answer = run_child(["dcmtk", str(corpus)], timeout=3600)
        rates.append(answer["files"] / answer["seconds"])
        received = int(answer["received"])
    return median(rates), received


if __name__ == "__main__":  # pragma: no cover - the parent calls bench --peer-child
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(child_main(sys.argv[1:]))
