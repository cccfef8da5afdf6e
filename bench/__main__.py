"""``python -m bench --quick|--full``: run the suite, print the table, write the results."""

from __future__ import annotations

import argparse
import compileall
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import network, peers, web
from bench.corpus import CorpusInfo, CorpusSpec, generate, patient_attributes
from bench.daemon import daemon_section
from bench.rendering import rendering_section
from bench.scale import build_bulk_archive, scale_spec
from bench.sections import (
    export,
    fixed_cost,
    import_flat,
    import_throughput,
    import_vs_parse,
    integrity,
    query_latency,
    settle,
)
from bench.util import REPO, Report, Result, cli, format_row, markdown, write_results

MODES = {
    "quick": {
        "c64": CorpusSpec(4, 2, 5, 50, 64, 64, seed=64),
        "c512": CorpusSpec(1, 1, 2, 250, 512, 512, seed=51),
        "check": CorpusSpec(10, 2, 5, 100, 64, 64, seed=65),
        "scale": 100_000,
        "reps": 3,
        "query_reps": 200,
        "peer_reps": 1,
        "latency_files": 1500,
    },
    "full": {
        "c64": CorpusSpec(10, 2, 5, 100, 64, 64, seed=64),
        "c512": CorpusSpec(1, 1, 4, 1250, 512, 512, seed=51),
        "check": CorpusSpec(50, 2, 10, 100, 64, 64, seed=65),
        "scale": 1_000_000,
        "reps": 3,
        "query_reps": 500,
        "peer_reps": 1,
        "latency_files": 6000,
    },
}
SECTIONS = ("import", "peers", "scale", "integrity", "daemon", "network", "web", "rendering")


def _environment(mode: str) -> dict[str, object]:
    def output(*command: str) -> str:
        try:
            return subprocess.run(
                command, capture_output=True, text=True, check=False, cwd=REPO
            ).stdout.strip()
        except OSError:
            return ""

    return {
        "mode": mode,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": output("git", "rev-parse", "--short", "HEAD"),
        "orthanc": shutil.which(peers.ORTHANC) or "",
        "storescp": shutil.which(peers.STORESCP) or "",
    }


def _corpus(name: str, spec: CorpusSpec, work: Path) -> CorpusInfo:
    started = time.perf_counter()
    info = generate(spec, work / f"corpus-{name}")
    print(
        f"  corpus {name}: {info.files:,} files, {info.bytes / 1e6:,.0f} MB "
        f"in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return info


def _peers(
    report: Report,
    corpora: dict[str, CorpusInfo],
    ours: dict[str, float],
    reps: int,
    specs: dict[str, CorpusSpec],
) -> None:
    if not peers.available(peers.ORTHANC):
        report.skip("peers", "Orthanc", f"Orthanc is not installed ({peers.INSTALL_HINT})")
    else:
        for label, corpus in corpora.items():
            spec = specs[label]
            finds = [
                {
                    "name": "exact PatientID",
                    "query": {"PatientID": patient_attributes(spec.seed, 0)[0]},
                },
                {"name": "PatientName DOE*", "query": {"PatientName": "DOE*"}},
            ]
            try:
                one, _, _ = peers.orthanc_rate(corpus.root, 1, reps, [])
                two, find_ms, isolated = peers.orthanc_rate(corpus.root, 2, reps, finds)
            except (RuntimeError, subprocess.SubprocessError) as exc:
                report.skip("peers", f"Orthanc {label}", str(exc))
                continue
            where = "private netns, loopback only" if isolated else "127.0.0.1"
            report.add(
                Result(
                    "peers",
                    f"import {label} vs Orthanc, 2 uploaders",
                    ours[label],
                    "files/s",
                    two,
                    "Orthanc 2 uploaders",
                    goal=2.0,
                    target="≥ 2 × Orthanc (2 uploaders)",
                    note=f"({where})",
                )
            )
            report.add(
                Result(
                    "peers",
                    f"import {label} vs Orthanc, 1 uploader",
                    ours[label],
                    "files/s",
                    one,
                    "Orthanc 1 uploader",
                )
            )
            for name, ms in find_ms.items():
                report.add(
                    Result(
                        "peers",
                        f"Orthanc /tools/find {name} on the {label} corpus, p50",
                        ms,
                        "ms",
                    )
                )
    if not (peers.available(peers.STORESCP) and peers.available(peers.STORESCU)):
        report.skip("peers", "DCMTK", f"storescu/storescp not installed ({peers.INSTALL_HINT})")
        return
    for label, corpus in corpora.items():
        try:
            rate, received = peers.dcmtk_rate(corpus.root, reps)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            report.skip("peers", f"DCMTK {label}", str(exc))
            continue
        report.add(
            Result(
                "peers",
                f"import {label} vs DCMTK storescu -> storescp",
                ours[label],
                "files/s",
                rate,
                "storescp (writes files, no index, no fsync)",
                note=f"({received} files received)",
            )
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--peer-child", "--network-child"]:
        return network.child_main(argv[2:])
    if argv[:1] == ["--peer-child"]:
        return peers.child_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a few minutes (default)")
    size.add_argument("--full", action="store_true", help="the 1M-instance figures")
    parser.add_argument("--workdir", type=Path, help="where corpora and archives go (local disk)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}"
    )
    args = parser.parse_args(argv)
    mode = "full" if args.full else "quick"
    config = MODES[mode]
    wanted = {s.strip() for s in args.sections.split(",") if s.strip()}
    base = args.workdir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dicom-archive-bench-", dir=base))
    started = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    report = Report(mode, started, environment=_environment(mode))
    print(f"dicom-archive bench ({mode}) in {work}", flush=True)
    # An installed package has its bytecode compiled at install time; an editable one
    # run with PYTHONDONTWRITEBYTECODE (as on these machines) would compile every
    # module in every CLI run, about 0.1 s of each run's fixed cost.
    compileall.compile_dir(REPO / "dicom_archive", quiet=1)
    began = time.perf_counter()
    reps = int(config["reps"])  # type: ignore[call-overload]
    try:
        specs: dict[str, CorpusSpec] = {
            "64x64": config["c64"],  # type: ignore[dict-item]
            "512x512": config["c512"],  # type: ignore[dict-item]
        }
        corpora = {label: _corpus(label, spec, work) for label, spec in specs.items()}
        ours: dict[str, float] = {}
        copies: dict[str, float] = {}
        if wanted & {"import", "peers", "daemon"}:
            for label, corpus in corpora.items():
                mine, base = import_throughput(report, corpus, label, work, reps)
                ours[label], copies[label] = mine.files_per_s, base.files_per_s
        if "import" in wanted:
            import_vs_parse(report, corpora["64x64"], work, reps)
            fixed_cost(report, corpora["64x64"], specs["64x64"], work, reps)
        if "peers" in wanted:
            _peers(report, corpora, ours, int(config["peer_reps"]), specs)  # type: ignore[call-overload]
        if "scale" in wanted:
            count = int(config["scale"])  # type: ignore[call-overload]
            spec = scale_spec(count)
            root = work / "scale-archive"
            t0 = time.perf_counter()
            built = build_bulk_archive(root, spec)
            report.add(
                Result(
                    "query",
                    f"bulk index build ({built:,} rows via Index.add_instances)",
                    built / (time.perf_counter() - t0),
                    "rows/s",
                )
            )
            query_latency(report, root, spec, built, int(config["query_reps"]))  # type: ignore[call-overload]
            import_flat(report, corpora["64x64"], root, built, work, reps)
            shutil.rmtree(root, ignore_errors=True)
        check_corpus: CorpusInfo | None = None
        if wanted & {"integrity", "daemon"}:
            check_corpus = _corpus("check", config["check"], work)  # type: ignore[arg-type]
        if "integrity" in wanted and check_corpus is not None:
            archive = work / "check-archive"
            cli("init", "-p", str(archive))
            settle(work)
            imported = cli("import", "-a", str(archive), "--recursive", str(check_corpus.root))
            report.add(
                Result(
                    "import",
                    f"CLI import of {check_corpus.files:,} 64x64 files (check archive)",
                    check_corpus.files / imported.seconds,
                    "files/s",
                    note=f"(peak RSS {imported.max_rss_kb / 1024:.0f} MB)",
                )
            )
            cli("import", "-a", str(archive), "--recursive", str(corpora["512x512"].root))
            integrity(report, archive, check_corpus.files + corpora["512x512"].files, reps)
            export(report, archive, corpora["512x512"].study_uids[0], work, reps)
            shutil.rmtree(archive, ignore_errors=True)
        if "network" in wanted:
            network.receive_section(report, corpora, int(config["peer_reps"]))  # type: ignore[call-overload]
            network.find_section(report, work, 100_000, int(config["query_reps"]))  # type: ignore[call-overload]
        if "web" in wanted:
            web.web_section(
                report,
                work,
                corpora,
                100_000,
                reps,
                int(config["query_reps"]),  # type: ignore[call-overload]
            )
        if "rendering" in wanted:
            rendering_section(report, work, reps * 10)
        if "daemon" in wanted:
            daemon_section(
                report,
                work,
                corpora,
                specs,
                ours,
                copies,
                int(config["latency_files"]),  # type: ignore[call-overload]
                check_corpus,
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report.environment["seconds"] = round(time.perf_counter() - began, 1)
    json_path, md_path = write_results(report, REPO / "bench" / "results")
    print()
    print(markdown(report))
    print(f"{len(report.results)} figures in {report.environment['seconds']} s")
    print(f"written: {json_path.relative_to(REPO)} and {md_path.relative_to(REPO)}")
    misses = [r for r in report.results if r.verdict == "MISS"]
    for r in misses:
        print("MISS:", format_row(r).strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
