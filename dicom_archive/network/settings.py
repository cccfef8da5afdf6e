"""Settings of the DICOM listener: who we are, where we listen, whom we serve.

Safe by default: loopback only, and only callers on the allow-list may query,
retrieve or store (storing from anyone is a documented switch, because many
modalities cannot be given a fixed AE title).
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_archive.errors import ConfigError

DEFAULT_AE_TITLE = "DICOM_ARCHIVE"
DEFAULT_PORT = 11112
#: AE titles are 1-16 characters of the default repertoire, no backslash or controls.
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")


@dataclass(frozen=True, slots=True)
class Peer:
    """A known remote application entity: allowed to call us, and a C-MOVE destination."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class DicomSettings:
    ae_title: str = DEFAULT_AE_TITLE
    bind: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    peers: tuple[Peer, ...] = field(default=())
    #: Accept C-STORE from callers that are not peers (queries and retrieves never).
    store_from_anyone: bool = False
    #: Refuse an association whose called AE title is not ours.
    check_called_ae: bool = True
    max_associations: int = 16
    max_pdu: int = 262_144
    #: Seconds without a PDU before an association is aborted.
    idle_timeout: float = 60.0
    #: TLS (DICOM PS3.15 B.9, BCP 195): our certificate chain and key (PEM). When a
    #: CA bundle is given, callers must present a certificate it signed.
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_ca_certificates: Path | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server side TLS context, or None for plain TCP."""
        if self.tls_certificate is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.tls_certificate, self.tls_private_key)
        if self.tls_ca_certificates is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.tls_ca_certificates)
        return context

    def client_ssl_context(self) -> ssl.SSLContext | None:
        """For `send` and C-MOVE: verify the peer against our CA bundle and present our
        certificate; None for plain TCP (no CA bundle configured)."""
        if self.tls_ca_certificates is None:
            return None
        context = ssl.create_default_context(cafile=self.tls_ca_certificates)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.tls_certificate is not None:
            context.load_cert_chain(self.tls_certificate, self.tls_private_key)
        return context

    def peer(self, ae_title: str) -> Peer | None:
        for peer in self.peers:
            if peer.ae_title == ae_title:
                return peer
        return None

    def allows(self, ae_title: str, address: str, *, storing: bool) -> bool:
        """A caller is known when its AE title is a peer's and it calls from that peer's
        host (a host of ``*`` accepts any address)."""
        peer = self.peer(ae_title)
        if peer is not None and (peer.host == "*" or _same_host(peer.host, address)):
            return True
        return storing and self.store_from_anyone


def _same_host(configured: str, address: str) -> bool:
    if configured == address:
        return True
    try:
        return ipaddress.ip_address(configured) == ipaddress.ip_address(address)
    except ValueError:
        return configured == "localhost" and address in ("127.0.0.1", "::1")


def valid_ae_title(value: object) -> bool:
    return isinstance(value, str) and bool(_AE_TITLE.fullmatch(value)) and bool(value.strip())


_KEYS = {
    "ae_title",
    "bind",
    "port",
    "peers",
    "store_from_anyone",
    "check_called_ae",
    "max_associations",
    "max_pdu",
    "idle_timeout",
    "tls_certificate",
    "tls_private_key",
    "tls_ca_certificates",
}


def parse_settings(raw: Mapping[str, Any], source: str, section: str = "dicom") -> DicomSettings:
    """``[dicom]`` of a config file (or command-line values) into settings; every error
    names the file and the key."""

    def key(name: str) -> str:
        return f"{section}.{name}"

    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(source, key(unknown[0]), "unknown key")
    values: dict[str, Any] = {}
    if "ae_title" in raw:
        if not valid_ae_title(raw["ae_title"]):
            raise ConfigError(source, key("ae_title"), "expected 1-16 printable characters")
        values["ae_title"] = raw["ae_title"].strip()
    if "bind" in raw:
        if not isinstance(raw["bind"], str) or not raw["bind"]:
            raise ConfigError(source, key("bind"), 'expected an address, e.g. "127.0.0.1"')
        values["bind"] = raw["bind"]
    for name, low, high in (
        ("port", 1, 65535),
        ("max_associations", 1, 1000),
        ("max_pdu", 4096, 16 * 1024 * 1024),
    ):
        if name in raw:
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(source, key(name), f"expected a whole number {low}-{high}")
            values[name] = value
    for name in ("store_from_anyone", "check_called_ae"):
        if name in raw:
            if not isinstance(raw[name], bool):
                raise ConfigError(source, key(name), "expected true or false")
            values[name] = raw[name]
    if "idle_timeout" in raw:
        value = raw["idle_timeout"]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(source, key("idle_timeout"), "expected a number of seconds")
        values["idle_timeout"] = float(value)
    if "peers" in raw:
        values["peers"] = _parse_peers(raw["peers"], source, key("peers"))
    for name in ("tls_certificate", "tls_private_key", "tls_ca_certificates"):
        if name in raw:
            if not isinstance(raw[name], str | Path) or not str(raw[name]):
                raise ConfigError(source, key(name), "expected the path of a PEM file")
            path = Path(raw[name]).expanduser()
            if not path.is_file():
                raise ConfigError(source, key(name), f"{path}: no such file")
            values[name] = path
    if ("tls_certificate" in values) != ("tls_private_key" in values):
        raise ConfigError(source, key("tls_private_key"), "TLS needs both certificate and key")
    return DicomSettings(**values)


def _parse_peers(raw: object, source: str, key: str) -> tuple[Peer, ...]:
    """``{ "AE" = "host:port", ... }``; port 0 for a caller that is never a destination."""
    if not isinstance(raw, Mapping):
        raise ConfigError(source, key, 'expected a table, e.g. { ORTHANC = "127.0.0.1:4242" }')
    peers = []
    for ae_title, where in raw.items():
        if not valid_ae_title(ae_title):
            raise ConfigError(source, f"{key}.{ae_title}", "not a valid AE title")
        host, _, port = str(where).rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(source, f"{key}.{ae_title}", 'expected "host:port"')
        peers.append(Peer(ae_title, host.strip("[]"), int(port)))
    return tuple(peers)
