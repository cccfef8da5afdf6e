"""Settings of the DICOMweb face: where it listens, who may call it, what it accepts.

Safe by default: loopback only, and a non-loopback address is refused unless the
callers must authenticate (or the operator says, in so many words, that anyone on
the network may read and write the archive).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_archive.errors import ConfigError

DEFAULT_PORT = 8042
#: One STOW-RS request body, all parts together.
DEFAULT_MAX_UPLOAD = 4 * 1024**3
#: QIDO-RS results without a ``limit``: more are there, and a Warning header says so.
DEFAULT_MAX_RESULTS = 10_000
_HASH_SCHEME = "pbkdf2_sha256"
_HASH_ITERATIONS = 200_000
AUTH_MODES = ("none", "bearer", "basic")


@dataclass(frozen=True, slots=True)
class WebSettings:
    archive_root: Path
    bind: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    #: Origins allowed by CORS (``*`` for any); empty: no CORS headers at all.
    cors_origins: tuple[str, ...] = field(default=())
    auth: str = "none"
    #: ``auth = "bearer"``: the token callers send as ``Authorization: Bearer TOKEN``.
    token: str = field(default="", repr=False)
    #: ``auth = "basic"``: the user name and either a password hash made by
    #: ``dicom-archive web --hash-password`` or the plain password.
    user: str = ""
    password_hash: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    #: Serve without authentication on a non-loopback address.
    allow_unauthenticated: bool = False
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    max_results: int = DEFAULT_MAX_RESULTS
    #: The URL callers reach the server by, for URLs in answers (RetrieveURL,
    #: BulkDataURI) when a reverse proxy stands in front, e.g. "https://pacs.example/dicomweb".
    public_url: str = ""

    def summary(self) -> dict[str, Any]:
        """What is logged at start: never a token or a password."""
        return {
            "bind": self.bind,
            "port": self.port,
            "auth": self.auth,
            "cors_origins": list(self.cors_origins),
            "max_upload_bytes": self.max_upload_bytes,
        }

    def check_password(self, user: str, password: str) -> bool:
        if not hmac.compare_digest(user.encode(), self.user.encode()):
            return False
        if self.password_hash:
            return verify_password(password, self.password_hash)
        return hmac.compare_digest(password.encode(), self.password.encode())


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def hash_password(password: str, *, iterations: int = _HASH_ITERATIONS) -> str:
    """``pbkdf2_sha256$ITERATIONS$SALT$HASH`` (base64): what ``password_hash`` takes."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return "$".join(
        (
            _HASH_SCHEME,
            str(iterations),
            base64.b64encode(salt).decode(),
            base64.b64encode(digest).decode(),
        )
    )


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, digest = encoded.split("$")
        if scheme != _HASH_SCHEME:
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


_KEYS = {
    "bind",
    "port",
    "cors_origins",
    "auth",
    "token",
    "token_file",
    "user",
    "password",
    "password_hash",
    "allow_unauthenticated",
    "max_upload_mb",
    "max_results",
    "public_url",
}


def parse_web_settings(
    raw: Mapping[str, Any], source: str, archive_root: Path, section: str = "web"
) -> WebSettings:
    """``[web]`` of a config file (or command-line values) into settings; every error
    names the file and the key, and never repeats a secret."""

    def key(name: str) -> str:
        return f"{section}.{name}"

    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(source, key(unknown[0]), "unknown key")
    values: dict[str, Any] = {}
    if "bind" in raw:
        if not isinstance(raw["bind"], str) or not raw["bind"]:
            raise ConfigError(source, key("bind"), 'expected an address, e.g. "127.0.0.1"')
        values["bind"] = raw["bind"]
    for name, low, high in (("port", 0, 65535), ("max_results", 1, 10_000_000)):
        if name in raw:
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(source, key(name), f"expected a whole number {low}-{high}")
            values[name] = value
    if "max_upload_mb" in raw:
        value = raw["max_upload_mb"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(source, key("max_upload_mb"), "expected a whole number of MB")
        values["max_upload_bytes"] = value * 1024 * 1024
    if "cors_origins" in raw:
        origins = raw["cors_origins"]
        if isinstance(origins, str):
            origins = [origins]
        if not isinstance(origins, list) or not all(isinstance(o, str) and o for o in origins):
            raise ConfigError(
                source,
                key("cors_origins"),
                'expected a list of origins, e.g. ["http://localhost:3000"]',
            )
        values["cors_origins"] = tuple(origins)
    if "allow_unauthenticated" in raw:
        if not isinstance(raw["allow_unauthenticated"], bool):
            raise ConfigError(source, key("allow_unauthenticated"), "expected true or false")
        values["allow_unauthenticated"] = raw["allow_unauthenticated"]
    auth = raw.get("auth", "none")
    if auth not in AUTH_MODES:
        raise ConfigError(source, key("auth"), 'expected "none", "bearer" or "basic"')
    values["auth"] = auth
    for name in ("token", "user", "password", "password_hash"):
        if name in raw:
            if not isinstance(raw[name], str) or not raw[name]:
                raise ConfigError(source, key(name), "expected a non-empty string")
            values[name] = raw[name]
    if "public_url" in raw:
        url = raw["public_url"]
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(source, key("public_url"), 'expected "http://..." or "https://..."')
        values["public_url"] = url
    if "token_file" in raw:
        path = Path(str(raw["token_file"])).expanduser()
        try:
            values["token"] = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(source, key("token_file"), f"{path}: {exc.strerror}") from exc
    if auth == "bearer" and not values.get("token"):
        raise ConfigError(source, key("token"), 'auth = "bearer" needs a token or token_file')
    if auth == "bearer" and len(values["token"]) < 16:
        raise ConfigError(source, key("token"), "a token needs at least 16 characters")
    if auth == "basic":
        if not values.get("user"):
            raise ConfigError(source, key("user"), 'auth = "basic" needs a user')
        if not values.get("password_hash") and not values.get("password"):
            raise ConfigError(
                source, key("password_hash"), 'auth = "basic" needs password_hash (or password)'
            )
        if values.get("password_hash", "").split("$")[0] not in ("", _HASH_SCHEME):
            raise ConfigError(
                source,
                key("password_hash"),
                "expected a hash from dicom-archive web --hash-password",
            )
    settings = WebSettings(archive_root=archive_root, **values)
    if auth == "none" and not is_loopback(settings.bind) and not settings.allow_unauthenticated:
        raise ConfigError(
            source,
            key("bind"),
            f'{settings.bind} is not a loopback address and auth is "none": anyone who can '
            'reach it could read and write the archive; set auth = "bearer" or "basic" '
            "(or allow_unauthenticated = true behind a proxy that authenticates)",
        )
    return settings
