"""The DICOM network face: C-STORE receive against DCMTK's storescp and Orthanc, and
C-FIND latency at scale.

Receive: the same storescu senders (1 and 4 processes, TCP_NODELAY) push the same
corpus to three receivers in turn, all inside one private network namespace
(storescp and Orthanc have no bind option): our `dicom-archive listen` (durable:
Success only after fsync and COMMIT), `storescp` (writes files, no index, no
fsync) and Orthanc's DICOM server (its own index and storage). Each receiver
starts fresh for each run; the figure is the median files/s.

Find: a 100,000-instance index (built through Index.add_instances), our listener
on loopback, one pynetdicom association, study-level C-FIND by Patient Name
prefix; p50 over the requests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.peers import (
    DCMTK_ENV,
    ORTHANC,
    STORESCP,
    STORESCU,
    _stop,
    _wait_port,
    available,
    run_child,
    start_storescp,
)
from bench.util import Report, Result, free_port, median, percentile


def _senders(files: list[Path], port: int, called: str, senders: int) -> float:
    """Seconds for ``senders`` storescu processes to push ``files`` (split evenly)."""
    shares = [files[i::senders] for i in range(senders)]
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [
                STORESCU,
                "-aet",
                "BENCH",
                "-aec",
                called,
                "-nh",
                "127.0.0.1",
                str(port),
                *map(str, share),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=DCMTK_ENV,
        )
        for share in shares
        if share
    ]
    for process in processes:
        if process.wait(timeout=3600) != 0:
            raise RuntimeError("storescu failed")
    return time.perf_counter() - started


def _listener(archive: Path, port: int) -> subprocess.Popen[bytes]:
    """`dicom-archive listen` on loopback in its own process, as a deployment runs it."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dicom_archive",
            "listen",
            "-a",
            str(archive),
            "--port",
            str(port),
            "--peer",
            "BENCH=127.0.0.1:0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _ours(files: list[Path], folder: Path, senders: int) -> tuple[float, int]:
    archive = folder / "archive"
    subprocess.run(
        [sys.executable, "-m", "dicom_archive", "init", "-p", str(archive)],
        check=True,
        capture_output=True,
    )
    port = free_port()
    process = _listener(archive, port)
    try:
        _wait_port(port, 30)
        seconds = _senders(files, port, "DICOM_ARCHIVE", senders)
    finally:
        _stop(process)
    stored = subprocess.run(
        [sys.executable, "-m", "dicom_archive", "stats", "-a", str(archive), "-f", "json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return seconds, int(json.loads(stored.stdout)["instances"])


def _storescp(files: list[Path], folder: Path, senders: int) -> tuple[float, int]:
    out = folder / "out"
    out.mkdir()
    port = free_port()
    process = start_storescp(out, port)
    try:
        seconds = _senders(files, port, "BENCH", senders)
    finally:
        _stop(process)
    return seconds, sum(1 for _ in out.iterdir())


def _orthanc(files: list[Path], folder: Path, senders: int) -> tuple[float, int]:
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "StorageCompression": False,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=log)
    try:
        _wait_port(dicom_port, 60)
        seconds = _senders(files, dicom_port, "ORTHANC", senders)
        stored = sum(1 for p in (folder / "storage").rglob("*") if p.is_file())
    finally:
        _stop(process)
        log.close()
    return seconds, stored


_RECEIVERS: dict[str, Callable[[list[Path], Path, int], tuple[float, int]]] = {
    "ours": _ours,
    "storescp": _storescp,
    "orthanc": _orthanc,
}


#: Files sent per run: Orthanc takes ~50 ms a file, so the full corpora would take an hour.
RECEIVE_LIMIT = {"64x64": 1000, "512x512": 250}


def receive_child(
    corpus: Path, senders: int, receivers: list[str], limit: int | None = None
) -> dict[str, Any]:
    files = sorted(corpus.rglob("*.dcm"))[:limit]
    answer: dict[str, Any] = {"files": len(files)}
    for name in receivers:
        with tempfile.TemporaryDirectory(prefix=f"bench-net-{name}-", dir=corpus.parent) as tmp:
            seconds, stored = _RECEIVERS[name](files, Path(tmp), senders)
        answer[name] = {"seconds": seconds, "stored": stored}
    return answer


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench --network-child")
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--receivers", default="ours,storescp,orthanc")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args(argv)
    answer = receive_child(args.corpus, args.senders, args.receivers.split(","), args.limit)
    print(json.dumps(answer), flush=True)
    return 0


def receive_section(report: Report, corpora: dict[str, Any], reps: int) -> None:
    if not (available(STORESCU) and available(STORESCP)):
        report.skip("network", "C-STORE receive", "DCMTK not installed (apt-get install dcmtk)")
        return
    receivers = ["ours", "storescp"] + (["orthanc"] if available(ORTHANC) else [])
    if "orthanc" not in receivers:
        report.skip("network", "C-STORE receive vs Orthanc", "apt-get install orthanc")
    for label, corpus in corpora.items():
        for senders in (1, 4):
            rates: dict[str, list[float]] = {name: [] for name in receivers}
            for _ in range(reps):
                answer = run_child(
                    [
                        "--network-child",
                        str(corpus.root),
                        "--senders",
                        str(senders),
                        "--receivers",
                        ",".join(receivers),
                        "--limit",
                        str(RECEIVE_LIMIT.get(label, 1000)),
                    ],
                    timeout=3600,
                )
                for name in receivers:
                    got = answer[name]
                    if got["stored"] < answer["files"]:
                        raise RuntimeError(f"{name} stored {got['stored']} of {answer['files']}")
                    rates[name].append(answer["files"] / got["seconds"])
            ours = median(rates["ours"])
            what = f"C-STORE receive {label}, {senders} storescu"
            report.add(
                Result(
                    "network",
                    f"{what} vs DCMTK storescp (no fsync, no index)",
                    ours,
                    "files/s",
                    baseline=median(rates["storescp"]),
                    baseline_label="storescp",
                    goal=0.5,
                    target=">= 0.5x",
                )
            )
            if "orthanc" in rates:
                report.add(
                    Result(
                        "network",
                        f"{what} vs Orthanc",
                        ours,
                        "files/s",
                        baseline=median(rates["orthanc"]),
                        baseline_label="Orthanc",
                        goal=2.0,
                        target=">= 2x",
                    )
                )


def find_section(report: Report, work: Path, instances: int, reps: int) -> None:
    from pydicom.dataset import Dataset
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    from bench.scale import build_bulk_archive, scale_spec
    from dicom_archive.network.server import tune_connection

    root = work / "find-archive"
    built = build_bulk_archive(root, scale_spec(instances))
    model = StudyRootQueryRetrieveInformationModelFind
    port = free_port()
    # The listener in its own process, as a deployment runs it: in this one it would
    # share the GIL (and pynetdicom's polling loops) with the client being timed.
    listener = _listener(root, port)
    try:
        _wait_port(port, 30)
        ae = AE(ae_title="BENCH")
        ae.add_requested_context(model)
        # A viewer's socket, like ours, without Nagle's delay on small writes.
        assoc = ae.associate(
            "127.0.0.1",
            port,
            ae_title="DICOM_ARCHIVE",
            evt_handlers=[(evt.EVT_CONN_OPEN, tune_connection)],
        )
        samples: list[float] = []
        matches = 0
        for n in range(reps + 3):
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.PatientName = "DOE*"
            query.StudyInstanceUID = ""
            query.StudyDate = ""
            query.ModalitiesInStudy = ""
            query.NumberOfStudyRelatedInstances = ""
            began = time.perf_counter()
            answers = [r for st, r in assoc.send_c_find(query, model) if st and st.Status == 0xFF00]
            if n >= 3:  # the first requests warm the caches
                samples.append((time.perf_counter() - began) * 1000)
                matches = len(answers)
        assoc.release()
    finally:
        _stop(listener)
        shutil.rmtree(root, ignore_errors=True)
    report.add(
        Result(
            "network",
            f"C-FIND study DOE* p50 at {built:,} instances ({matches} studies)",
            percentile(samples, 0.5),
            "ms",
            baseline=20.0,
            baseline_label="20 ms",
            goal=1.0,
            higher_is_better=False,
            target="<= 20 ms",
        )
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(child_main(sys.argv[1:]))
