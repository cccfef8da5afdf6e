"""The daemon's configuration: a TOML file read once into a frozen, validated value.

Every key has a default, so the daemon can also run from command-line paths alone.
An unknown key, a wrong type or a bad duration is a ``ConfigError`` naming the file
and the key: a typo must never silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_archive.archive.retention import (
    RetentionSettings,
    TrashSettings,
    parse_retention,
    parse_trash,
)
from dicom_archive.errors import ConfigError
from dicom_archive.network.settings import DicomSettings, parse_settings
from dicom_archive.web.settings import WebSettings, parse_web_settings

DEFAULT_IGNORE = (".*", "*.part", "*.tmp", "*.crdownload")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "console", "json")


class AfterImport(enum.StrEnum):
    DELETE = "delete"
    MOVE = "move"


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Everything the daemon needs; durations in seconds (0 turns a periodic job off)."""

    archive: Path
    incoming: Path
    rejected: Path
    after_import: AfterImport = AfterImport.DELETE
    processed: Path | None = None
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    settle_time: float = 5.0
    max_age: float = 3600.0
    retry_max_delay: float = 300.0
    rescan_interval: float = 600.0
    polling: bool = False
    poll_interval: float = 10.0
    batch_size: int = 64
    queue_limit: int = 10_000
    remove_empty_folders: bool = True
    check_interval: float = 3600.0
    verify_interval: float = 7 * 86400.0
    snapshot_interval: float = 60.0
    log_level: str = "info"
    log_format: str = "auto"
    #: The DICOM listener, on when the file has a [dicom] table.
    dicom: DicomSettings | None = None
    # issue 11 (lifecycle): [trash] emptying delay, [retention] rules.
    trash: TrashSettings = dataclasses.field(default_factory=TrashSettings)
    retention: RetentionSettings = dataclasses.field(default_factory=RetentionSettings)
    #: The DICOMweb face, on when the file has a [web] table.
    web: WebSettings | None = None

    def summary(self) -> dict[str, Any]:
        """The effective settings, for the start-up log line."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, WebSettings):
                value = value.summary()  # never the token or a password
            elif isinstance(value, DicomSettings | TrashSettings | RetentionSettings):
                value = dataclasses.asdict(value)
            out[field.name] = value
        return out


_PATH_KEYS = ("archive", "incoming", "rejected", "processed")
_DURATION_KEYS = (
    "settle_time",
    "max_age",
    "retry_max_delay",
    "rescan_interval",
    "poll_interval",
    "check_interval",
    "verify_interval",
    "snapshot_interval",
)
_KNOWN = {f.name for f in dataclasses.fields(DaemonConfig)}
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: object, source: str, key: str) -> float:
    """Seconds from ``30``, ``2.5``, ``"30s"``, ``"5m"``, ``"1h"``, ``"7d"`` or ``"250ms"``."""
    if isinstance(value, bool):
        raise ConfigError(source, key, 'expected a duration such as 30, "30s", "5m" or "1h"')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ConfigError(
            source,
            key,
            f"bad duration {value!r}: expected a number of seconds or a number with a unit "
            '(ms, s, m, h, d), e.g. "30s"',
        )
    if seconds < 0:
        raise ConfigError(source, key, f"bad duration {value!r}: must not be negative")
    return seconds


def load_config_file(path: Path) -> dict[str, Any]:
    """The raw table of a TOML file, with errors that name the file."""
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(path, "", "no such configuration file") from exc
    except OSError as exc:
        raise ConfigError(path, "", f"cannot be read ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML ({exc})") from exc
    # Relative paths in a file are relative to the file, not to wherever the daemon starts.
    base = path.resolve().parent
    for key in _PATH_KEYS:
        value = raw.get(key)
        if isinstance(value, str) and value:
            raw[key] = str(base / Path(value).expanduser())
    dicom = raw.get("dicom")
    if isinstance(dicom, dict):
        for key in ("tls_certificate", "tls_private_key", "tls_ca_certificates"):
            if isinstance(dicom.get(key), str) and dicom[key]:
                dicom[key] = str(base / Path(dicom[key]).expanduser())
    return raw


def build_config(
    raw: Mapping[str, Any], source: str, overrides: Mapping[str, Any] | None = None
) -> DaemonConfig:
    """Validate ``raw`` (a parsed file, possibly empty) plus command-line ``overrides``."""
    values: dict[str, Any] = {}
    merged = dict(raw)
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
    for key in merged:
        if key not in _KNOWN:
            hint = _suggest(key)
            suffix = f" (did you mean {hint!r}?)" if hint else ""
            raise ConfigError(source, key, "unknown key" + suffix)
    for key, value in merged.items():
        values[key] = _convert(key, value, source)
    for key in ("archive", "incoming", "rejected"):
        if key not in values:
            raise ConfigError(
                source, key, f"missing (set it in the file or pass --{key.replace('_', '-')})"
            )
    config = DaemonConfig(**values)
    if config.web is not None:  # the table is parsed before the archive is known
        config = dataclasses.replace(
            config, web=dataclasses.replace(config.web, archive_root=config.archive)
        )
    _check_consistency(config, source)
    return config


def _convert(key: str, value: Any, source: str) -> Any:
    if key in _PATH_KEYS:
        if not isinstance(value, str | Path) or not str(value):
            raise ConfigError(source, key, f"expected a folder path, got {value!r}")
        return Path(value).expanduser().absolute()
    if key in _DURATION_KEYS:
        return parse_duration(value, source, key)
    if key == "after_import":
        try:
            return AfterImport(value)
        except ValueError:
            raise ConfigError(source, key, f'expected "delete" or "move", got {value!r}') from None
    if key == "ignore":
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(source, key, 'expected a list of name patterns, e.g. ["*.part"]')
        return tuple(value)
    if key in ("polling", "remove_empty_folders"):
        if not isinstance(value, bool):
            raise ConfigError(source, key, f"expected true or false, got {value!r}")
        return value
    if key in ("batch_size", "queue_limit"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(source, key, f"expected a whole number of at least 1, got {value!r}")
        return value
    if key == "log_level":
        if value not in LOG_LEVELS:
            raise ConfigError(source, key, f"expected one of {', '.join(LOG_LEVELS)}")
        return value
    if key == "dicom":
        if not isinstance(value, Mapping):
            raise ConfigError(source, key, "expected a table: [dicom]")
        return parse_settings(value, source)
    if key == "trash":
        return parse_trash(value, source)
    if key == "retention":
        return parse_retention(value, source)
    if key == "web":
        if not isinstance(value, Mapping):
            raise ConfigError(source, key, "expected a table: [web]")
        return parse_web_settings(value, source, Path("."))
    if key == "log_format":
        if value not in LOG_FORMATS:
            raise ConfigError(source, key, f"expected one of {', '.join(LOG_FORMATS)}")
        return value
    raise AssertionError(f"unhandled key {key}")


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or child.is_relative_to(parent)


def _check_consistency(config: DaemonConfig, source: str) -> None:
    if config.after_import is AfterImport.MOVE and config.processed is None:
        raise ConfigError(source, "processed", 'required when after_import = "move"')
    incoming = config.incoming.resolve()
    # Anything the daemon writes must sit outside incoming, or it would import its own output.
    for key in ("archive", "rejected", "processed"):
        place = getattr(config, key)
        if place is not None and _inside(place.resolve(), incoming):
            raise ConfigError(source, key, f"{place} must not be inside the incoming folder")
    if _inside(incoming, config.archive.resolve()):
        raise ConfigError(source, "incoming", "must not be inside the archive")
    if config.settle_time <= 0:
        raise ConfigError(source, "settle_time", "must be more than 0")
    if config.polling and config.poll_interval <= 0:
        raise ConfigError(source, "poll_interval", "must be more than 0 when polling is on")


def _suggest(key: str) -> str:
    import difflib

    found = difflib.get_close_matches(key, sorted(_KNOWN), n=1)
    return found[0] if found else ""


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> DaemonConfig:
    """The validated configuration from ``path`` (or none) and command-line overrides."""
    if path is None:
        return build_config({}, "command line", overrides)
    return build_config(load_config_file(path), str(path), overrides)
