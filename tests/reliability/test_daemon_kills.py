"""The daemon SIGKILLed at random moments, and at each named step of an import, while
files keep arriving: every input is archived exactly once, byte-identical, index and
disk agree (``check --verify-files`` clean), and no source ever leaves incoming
without its exact bytes archived and indexed (proved at every kill, with the daemon
dead so nothing moves while we look).

Long form: ``SOAK_KILLS=200 SOAK_FILES=20000 make soak`` (or
``pytest -m slow tests/reliability/test_daemon_kills.py``).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from dicom_archive.archive.faults import ENV_AFTER, ENV_POINT, POINTS
from tests.integration.daemon_harness import DaemonProcess, wait_until
from tests.reliability.daemon_helpers import (
    Feeder,
    Proof,
    assert_archived_exactly_once,
    drop_all,
    events,
    kill_daemon,
    make_corpus,
    wait_all_archived,
)
from tests.reliability.helpers import KILLED


def random_kills(tmp_path: Path, kills: int, files: int, seed: int) -> None:
    rng = random.Random(seed)
    staging = tmp_path / "staging"
    hashes = make_corpus(staging, files)
    daemon = DaemonProcess(tmp_path)
    proof = Proof(daemon.archive)
    # Spread the drops over the kill phase (about 1.3 s a cycle), so kills land
    # while files arrive, while batches are read, committed and sources removed.
    feeder = Feeder(staging, daemon.incoming, hashes, rate=files / (kills * 1.3))
    done = 0
    started = time.monotonic()
    try:
        feeder.start()
        for cycle in range(kills):
            if rng.random() < 0.2:
                # Sometimes during start-up: the scan, the run record, the first batch.
                daemon.start(wait_ready=False)
                time.sleep(rng.uniform(0.1, 0.8))
            else:
                daemon.start()
                time.sleep(rng.uniform(0.02, 1.2))
            assert daemon.proc is not None
            assert daemon.proc.poll() is None, daemon.log_text()[-3000:]
            assert kill_daemon(daemon) == KILLED
            done = proof.assert_nothing_lost(feeder.snapshot(), daemon.incoming)
            if cycle % 10 == 0:
                print(f"kill {cycle + 1}/{kills}: {done} of {files} sources gone, all archived")
        feeder.hurry()
        feeder.finish()
        daemon.start()
        wait_all_archived(daemon, files, timeout=120 + files / 50)
        assert daemon.stop() == 0
    finally:
        feeder.abort()
        daemon.close()
    assert_archived_exactly_once(daemon.archive, set(hashes.values()))
    assert not daemon.rejected.exists() or not list(daemon.rejected.rglob("*"))
    elapsed = time.monotonic() - started
    print(
        f"random kills: {kills} SIGKILLs survived, {files} files, "
        f"{done} imported before the last kill, {elapsed:.0f} s"
    )


def test_random_sigkills_under_a_stream_of_drops(tmp_path: Path) -> None:
    """12 SIGKILLs at random moments (some during start-up) while 2,500 files arrive:
    at every kill no vanished source lacks its archived copy; at the end each file
    is archived once, byte-identical, and check is clean."""
    random_kills(tmp_path, kills=12, files=2500, seed=int(os.environ.get("SOAK_SEED", "1")))


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_soak_random_sigkills(tmp_path: Path) -> None:
    """Long form: SOAK_KILLS kills (default 200) over SOAK_FILES files (default 20,000)."""
    kills = int(os.environ.get("SOAK_KILLS", "200"))
    files = int(os.environ.get("SOAK_FILES", "20000"))
    random_kills(tmp_path, kills, files, seed=int(os.environ.get("SOAK_SEED", "7")))


#: How many times each point passes before it fires: a later batch (64 files each),
#: and for source-removed (once per file) a file in the second batch.
_AFTER = {"source-removed": 70}


def crash_at(tmp_path: Path, point: str, after: int, rounds: int) -> None:
    staging = tmp_path / "staging"
    # Enough files that every round reaches its kill: the daemon streams full batches
    # of 64, so a round killed in batch N+1 commits N batches first, and one killed at
    # the Nth source removal has removed N sources.
    per_round = after + 1 if point == "source-removed" else 64 * (after + 1)
    hashes = make_corpus(staging, max(400, per_round * rounds + 64))
    daemon = DaemonProcess(tmp_path)
    proof = Proof(daemon.archive)
    dropped = {}
    try:
        names = list(hashes)
        drop_all(staging, daemon.incoming, names)
        for n, name in enumerate(names):
            dropped[daemon.incoming / f"sender{n % 8}" / name] = hashes[name]
        for _ in range(rounds):
            daemon.start(env={ENV_POINT: point, ENV_AFTER: str(after)})
            assert daemon.proc is not None
            code = daemon.proc.wait(60)
            daemon.proc = None
            assert code == -signal.SIGKILL, daemon.log_text()[-3000:]
            proof.assert_nothing_lost(dropped, daemon.incoming)
        # The kills interrupted real work: files not yet archived, or (the daemon removes
        # sources on its own thread, behind the commits) sources not yet removed.
        assert daemon.instance_count() < len(hashes) or list(daemon.incoming.rglob("*.dcm"))
        daemon.start()
        wait_all_archived(daemon, len(hashes), timeout=60)
        assert daemon.stop() == 0
        assert not events(daemon, "conflict") and not events(daemon, "rejected")
    finally:
        daemon.close()
    assert_archived_exactly_once(daemon.archive, set(hashes.values()))


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_each_named_step_while_the_daemon_imports(tmp_path: Path, point: str) -> None:
    """The daemon kills itself at this step of a later batch, twice in a row; a clean
    restart archives every file once, byte-identical, and check is clean."""
    crash_at(tmp_path, point, _AFTER.get(point, 1), rounds=2)


@pytest.mark.slow
@pytest.mark.parametrize("after", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("point", POINTS)
def test_soak_sigkill_at_each_step_of_each_batch(tmp_path: Path, point: str, after: int) -> None:
    """Long form: each step of the first to sixth batch (each file for source-removed)."""
    crash_at(tmp_path, point, after * (60 if point == "source-removed" else 1), rounds=3)


def test_source_removed_crash_leaves_the_rest_of_the_batch_for_the_restart(
    tmp_path: Path,
) -> None:
    """Killed right after the first source of a committed batch is removed: the others
    of that batch are still in incoming and archived; the restart only deletes them
    (duplicates), never archives them a second time."""
    staging = tmp_path / "staging"
    hashes = make_corpus(staging, 64)
    daemon = DaemonProcess(tmp_path)
    try:
        drop_all(staging, daemon.incoming, list(hashes))
        daemon.start(env={ENV_POINT: "source-removed"})
        assert daemon.proc is not None
        assert daemon.proc.wait(60) == -signal.SIGKILL
        daemon.proc = None
        committed = daemon.instance_count()
        assert 1 <= committed <= 64
        assert len(list(daemon.incoming.rglob("*.dcm"))) == 63
        daemon.start()
        wait_until(lambda: not list(daemon.incoming.rglob("*.dcm")), 30, "incoming emptied")
        assert daemon.stop() == 0
        assert len(events(daemon, "duplicate")) == committed - 1
    finally:
        daemon.close()
    assert_archived_exactly_once(daemon.archive, set(hashes.values()))
