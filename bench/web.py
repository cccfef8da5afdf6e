"""The DICOMweb face: QIDO-RS latency at scale, series metadata cold and warm, WADO-RS
retrieval against reading the files, STOW-RS against the CLI import.

Every server is `dicom-archive web` in its own process on loopback (as a deployment
runs it: in this process it would share the GIL with the client being timed); the
client is one keep-alive `requests` session.

- QIDO: a 100,000-instance index (built through Index.add_instances, as the C-FIND
  figure), ``GET /studies?PatientName=DOE*``, p50 after three warm-up requests.
- Metadata: one series of 1,000 archived 64x64 instances. Cold: a fresh server and
  no cache file (every file parsed), wall time and the server's CPU time (on a
  machine shared with other work the two differ); from disk: a fresh server, the
  cache file left by the cold run; warm: the same server again (median).
- WADO-RS: a whole study of 512x512 files streamed as multipart to curl, MB/s,
  against reading the same files in 1 MiB chunks in this process (page cache warm
  for both, so the baseline is memory speed).
- STOW-RS: the 64x64 corpus posted in requests of 250 (then 50) instances by 2
  clients into an empty archive, files/s, against `dicom-archive import` of the same
  files into an empty archive, interleaved.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

from bench.corpus import CorpusInfo, CorpusSpec, generate
from bench.sections import cli_import, settle
from bench.util import Report, Result, cli, free_port, median, percentile, remove

_BOUNDARY = "bench-boundary"


def _server(archive: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dicom_archive", "web", "-a", str(archive), "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(url + "/studies?limit=1", timeout=5)
            return process, url
        except requests.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dicom-archive web did not start") from None
            time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def qido_section(report: Report, work: Path, instances: int, reps: int) -> None:
    from bench.scale import build_bulk_archive, scale_spec

    root = work / "qido-archive"
    built = build_bulk_archive(root, scale_spec(instances))
    process, url = _server(root)
    try:
        session = requests.Session()
        samples: list[float] = []
        matches = 0
        for n in range(reps + 3):
            began = time.perf_counter()
            response = session.get(url + "/studies", params={"PatientName": "DOE*"}, timeout=60)
            body = response.json()
            if n >= 3:
                samples.append((time.perf_counter() - began) * 1000)
                matches = len(body)
    finally:
        _stop(process)
        shutil.rmtree(root, ignore_errors=True)
    report.add(
        Result(
            "web",
            f"QIDO-RS /studies?PatientName=DOE* p50 at {built:,} instances ({matches} studies)",
            percentile(samples, 0.5),
            "ms",
            baseline=20.0,
            baseline_label="20 ms",
            goal=1.0,
            higher_is_better=False,
            target="<= 20 ms",
        )
    )


def metadata_section(report: Report, work: Path, reps: int) -> None:
    corpus = generate(CorpusSpec(1, 1, 1, 1000, 64, 64, seed=1000), work / "corpus-series1000")
    archive = work / "metadata-archive"
    cli_import(corpus.root, archive, work, keep=True)
    cold: list[float] = []
    cold_cpu: list[float] = []
    from_disk: list[float] = []
    warm: list[float] = []
    count = 0
    try:
        for _ in range(reps):
            shutil.rmtree(archive / "cache", ignore_errors=True)
            for samples in (cold, from_disk):
                process, url = _server(archive)
                try:
                    session = requests.Session()
                    [study] = session.get(url + "/studies", timeout=60).json()
                    study_uid = study["0020000D"]["Value"][0]
                    [series] = session.get(f"{url}/studies/{study_uid}/series", timeout=60).json()
                    path = f"{url}/studies/{study_uid}/series/{series['0020000E']['Value'][0]}"
                    began, cpu = time.perf_counter(), _cpu_seconds(process.pid)
                    body = session.get(path + "/metadata", timeout=120).content
                    samples.append(time.perf_counter() - began)
                    count = len(json.loads(body))  # after the clock: the client's cost
                    if samples is cold:
                        cold_cpu.append(_cpu_seconds(process.pid) - cpu)
                    if samples is from_disk:
                        for _ in range(10):
                            began = time.perf_counter()
                            session.get(path + "/metadata", timeout=120).content  # noqa: B018
                            warm.append(time.perf_counter() - began)
                finally:
                    _stop(process)
    finally:
        remove(archive)
        shutil.rmtree(corpus.root, ignore_errors=True)
    for name, samples, limit in (
        ("cold (every file parsed)", cold, 0.5),
        ("cold, the server's CPU time (what a busy machine stretches)", cold_cpu, None),
        ("from the cache file, fresh server", from_disk, None),
        ("warm", warm, 0.05),
    ):
        report.add(
            Result(
                "web",
                f"WADO-RS series metadata, {count:,} instances, {name}",
                median(samples),
                "s",
                baseline=limit,
                baseline_label=f"{limit} s" if limit else "",
                goal=1.0 if limit else None,
                higher_is_better=False,
                target=f"<= {limit} s" if limit else "",
            )
        )


def _read_files(files: list[Path]) -> float:
    began = time.perf_counter()
    total = 0
    for path in files:
        with open(path, "rb") as handle:
            while chunk := handle.read(1024 * 1024):
                total += len(chunk)
    return time.perf_counter() - began


def retrieve_section(report: Report, corpus: CorpusInfo, work: Path, reps: int) -> None:
    archive = work / "wado-archive"
    cli_import(corpus.root, archive, work, keep=True)
    files = sorted((archive / "data").rglob("*.dcm"))
    size = sum(p.stat().st_size for p in files)
    process, url = _server(archive)
    ours: list[float] = []
    theirs: list[float] = []
    try:
        study = corpus.study_uids[0]
        _read_files(files)  # the page cache warm for both sides
        for _ in range(reps):
            theirs.append(_read_files(files))
            # curl as the client: a Python client here would measure itself.
            began = time.perf_counter()
            done = subprocess.run(
                ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", "-H",
                 'Accept: multipart/related; type="application/dicom"; transfer-syntax=*',
                 f"{url}/studies/{study}"],
                capture_output=True, text=True, check=True, timeout=600,
            )  # fmt: skip
            ours.append(time.perf_counter() - began)
            if int(done.stdout) < size:
                raise RuntimeError(f"WADO-RS sent {done.stdout} bytes of {size}")
    finally:
        _stop(process)
        remove(archive)
    mb = size / 1e6
    report.add(
        Result(
            "web",
            f"WADO-RS study retrieval, {len(files)} files of {size // len(files) // 1024} KiB",
            mb / median(ours),
            "MB/s",
            mb / median(theirs),
            "reading the files (1 MiB reads)",
            goal=0.7,
            target=">= 0.70 x reading the files",
        )
    )


def _post_batches(url: str, batches: list[list[Path]]) -> None:
    session = requests.Session()
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={_BOUNDARY}'}

    def body(batch: list[Path]):  # type: ignore[no-untyped-def]
        for path in batch:
            yield f"--{_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            yield path.read_bytes()
            yield b"\r\n"
        yield f"--{_BOUNDARY}--\r\n".encode()

    for batch in batches:
        response = session.post(f"{url}/studies", data=body(batch), headers=headers, timeout=600)
        if response.status_code != 200:
            raise RuntimeError(f"STOW-RS answered {response.status_code}: {response.text[:200]}")


def stow_section(
    report: Report, corpus: CorpusInfo, work: Path, reps: int, per_request: int
) -> None:
    files = sorted(corpus.root.rglob("*.dcm"))
    batches = [files[i : i + per_request] for i in range(0, len(files), per_request)]
    archive = work / "stow-archive"
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(reps):
        theirs.append(cli_import(corpus.root, work / "stow-cli-archive", work))
        remove(archive)
        cli("init", "-p", str(archive))
        process, url = _server(archive)
        try:
            settle(work)
            began = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                list(pool.map(_post_batches, [url, url], [batches[0::2], batches[1::2]]))
            ours.append(time.perf_counter() - began)
        finally:
            _stop(process)
            remove(archive)
    report.add(
        Result(
            "web",
            f"STOW-RS of {len(files):,} 64x64 files, {per_request} per request, 2 clients",
            len(files) / median(ours),
            "files/s",
            len(files) / median(theirs),
            "dicom-archive import (CLI)",
            goal=0.7 if per_request >= 250 else None,
            target=">= 0.70 x CLI import" if per_request >= 250 else "",
            note="(each request durable before its answer: 2 syncfs a request)",
        )
    )


def web_section(
    report: Report,
    work: Path,
    corpora: dict[str, CorpusInfo],
    instances: int,
    reps: int,
    query_reps: int,
) -> None:
    steps = (
        ("QIDO-RS", lambda: qido_section(report, work, instances, query_reps)),
        ("metadata", lambda: metadata_section(report, work, reps)),
        ("WADO-RS", lambda: retrieve_section(report, corpora["512x512"], work, reps)),
        # A series a request (what dicomweb-client's store_instances sends for a
        # series), and smaller requests, which pay the two syncfs more often.
        ("STOW-RS", lambda: stow_section(report, corpora["64x64"], work, reps, 250)),
        ("STOW-RS", lambda: stow_section(report, corpora["64x64"], work, reps, 50)),
    )
    for name, step in steps:
        try:
            step()
        except (RuntimeError, requests.RequestException, subprocess.SubprocessError) as exc:
            report.skip("web", name, str(exc))
