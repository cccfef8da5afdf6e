"""Config: defaults, durations, and one-line errors naming the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dicom_archive.daemon.config import AfterImport, load_config, parse_duration
from dicom_archive.errors import ConfigError

BASE = 'archive = "a"\nincoming = "in"\nrejected = "rej"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(BASE + text)
    return path


def test_defaults_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.archive == tmp_path / "a"
    assert config.after_import is AfterImport.DELETE
    assert config.settle_time == 5.0 and "*.part" in config.ignore


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(30, 30.0), (2.5, 2.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "f", "k") == seconds


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("settle_tme = 3\n", "settle_tme", "unknown key (did you mean 'settle_time'?)"),
        ('max_age = "3 weeks"\n', "max_age", "bad duration"),
        ('polling = "yes"\n', "polling", "expected true or false"),
        ("batch_size = 0\n", "batch_size", "at least 1"),
        ('after_import = "move"\n', "processed", "required"),
        ('log_level = "loud"\n', "log_level", "expected one of"),
    ],
)
def test_bad_values_name_the_file_and_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: ") and words in message
    assert "\n" not in message


def test_rejected_inside_incoming_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text('archive = "a"\nincoming = "in"\nrejected = "in/rej"\n')
    with pytest.raises(ConfigError, match="rejected"):
        load_config(path)


def test_flags_override_and_no_file_is_needed(tmp_path: Path) -> None:
    config = load_config(
        None, {"archive": tmp_path / "x", "incoming": tmp_path / "i", "rejected": tmp_path / "r"}
    )
    assert config.incoming == tmp_path / "i"
    with pytest.raises(ConfigError, match="command line: incoming: missing"):
        load_config(None, {"archive": tmp_path / "x"})


def test_the_example_config_is_valid_and_complete() -> None:
    example = Path(__file__).parents[2] / "config.example.toml"
    config = load_config(example)
    text = example.read_text()
    for key in config.summary():
        assert f"{key} =" in text or f"[{key}]" in text, f"{key} is not documented"
    from dataclasses import fields

    from dicom_archive.network.settings import DicomSettings

    for field in fields(DicomSettings):
        assert f"#{field.name} =" in text, f"dicom.{field.name} is not documented"


def test_cli_reports_a_config_error_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'rescan_interval = "often"\n')
    result = subprocess.run(
        [sys.executable, "-m", "dicom_archive", "daemon", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "rescan_interval" in result.stderr
