"""The daemon as a real subprocess on real folders, with a test sd_notify socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicom_archive.archive.store import init_archive

FAST_SETTINGS: dict[str, Any] = {
    "settle_time": "0.3s",
    "max_age": "3s",
    "retry_max_delay": "0.5s",
    "rescan_interval": "30s",
    "check_interval": 0,
    "verify_interval": 0,
    "snapshot_interval": "1s",
    "log_format": "json",
    "log_level": "debug",
}


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``condition`` until it is truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.05)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table: dicom = { port = 104, ... }
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


class DaemonProcess:
    def __init__(self, root: Path, **settings: Any) -> None:
        self.root = root
        self.archive = root / "archive"
        self.incoming = root / "incoming"
        self.rejected = root / "rejected"
        self.config_path = root / "daemon.toml"
        self.log_path = root / "daemon.log"
        self.settings = {**FAST_SETTINGS, **settings}
        if not self.archive.exists():
            init_archive(self.archive).close()
        self.incoming.mkdir(exist_ok=True)
        self.write_config()
        self.notify_path = root / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.sock.setblocking(False)
        self.messages: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, **changes: Any) -> None:
        self.settings.update(changes)
        lines = [
            f"archive = {toml_value(self.archive)}",
            f"incoming = {toml_value(self.incoming)}",
            f"rejected = {toml_value(self.rejected)}",
        ]
        lines += [f"{key} = {toml_value(value)}" for key, value in self.settings.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, env: dict[str, str] | None = None, wait_ready: bool = True) -> None:
        environment = {
            **os.environ,
            "NOTIFY_SOCKET": str(self.notify_path),
            "WATCHDOG_USEC": "1000000",
            **(env or {}),
        }
        self.messages.clear()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_archive", "daemon", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        log.close()
        if wait_ready:
            wait_until(lambda: self.seen("READY=1") or self.proc.poll() is not None, 30, "READY")
            assert self.proc.poll() is None, self.log_text()

    def receive(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            self.messages.append(data.decode())
        return self.messages

    def seen(self, field: str) -> bool:
        return any(field in m.split("\n") for m in self.receive())

    def send(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                "the daemon did not stop in time\n" + self.log_text()[-3000:]
            ) from None
        self.proc = None
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
        return events

    # -- what is where ----------------------------------------------------------------

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.archive / 'archive.db'}?mode=ro", uri=True, timeout=30)

    def instance_count(self) -> int:
        with self.db() as db:
            return int(db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])

    def sop_uids(self) -> list[str]:
        with self.db() as db:
            return [r[0] for r in db.execute("SELECT sop_instance_uid FROM instances")]

    def incoming_files(self) -> list[Path]:
        return sorted(p for p in self.incoming.rglob("*") if not p.is_dir() or p.is_symlink())

    def incoming_entries(self) -> list[Path]:
        return sorted(self.incoming.rglob("*"))

    def rejected_files(self) -> list[Path]:
        """Files set aside, without their reasons and without a reason still being
        written (``.NAME.reason.txt.tmp``, renamed into place when complete)."""
        return sorted(
            p
            for p in self.rejected.rglob("*")
            if (p.is_file() or p.is_symlink())
            and not p.name.endswith(".reason.txt")
            and not p.name.startswith(".")
        )

    def reason_of(self, rejected: Path) -> str:
        return Path(str(rejected) + ".reason.txt").read_text()

    def wait_archived(self, count: int, timeout: float = 60) -> None:
        wait_until(
            lambda: self.instance_count() >= count and not self.incoming_files(),
            timeout,
            f"{count} instances archived and incoming emptied "
            f"(have {self.instance_count()}, incoming {len(self.incoming_files())})",
        )
        assert self.instance_count() == count

    def wait_until_count(self, count: int, timeout: float = 30) -> None:
        wait_until(lambda: self.instance_count() >= count, timeout, f"{count} instances")

    def archived_path_of(self, position: int) -> str:
        with self.db() as db:
            rows = db.execute("SELECT file_path FROM instances ORDER BY id").fetchall()
        return str(rows[position][0])
