"""TLS on the listener: certificates both ways, refused without one."""

from __future__ import annotations

import dataclasses
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_archive.archive.store import init_archive
from dicom_archive.network.server import DicomServer
from dicom_archive.network.settings import Peer, parse_settings

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=folder,
    )
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=folder,
        )
        (folder / f"{name}.ext").write_text(extension + "\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.crt",
            "-extfile",
            f"{name}.ext",
            cwd=folder,
        )
    return folder


@pytest.fixture
def server(tmp_path: Path, pki: Path) -> Iterator[DicomServer]:
    init_archive(tmp_path / "archive").close()
    settings = parse_settings(
        {
            "port": 1,
            "peers": {"SENDER": "127.0.0.1:0"},
            "tls_certificate": str(pki / "server.crt"),
            "tls_private_key": str(pki / "server.key"),
            "tls_ca_certificates": str(pki / "ca.crt"),
        },
        "test",
    )
    with DicomServer(tmp_path / "archive", dataclasses.replace(settings, port=0)) as running:
        yield running


def _echo(port: int, context: ssl.SSLContext | None) -> bool:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(Verification)
    tls_args = (context, "127.0.0.1") if context is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_ARCHIVE", tls_args=tls_args)
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return bool(ok)


@needs_openssl
def test_a_client_with_a_certificate_of_our_ca_is_served(server: DicomServer, pki: Path) -> None:
    context = ssl.create_default_context(cafile=pki / "ca.crt")
    context.load_cert_chain(pki / "client.crt", pki / "client.key")
    assert _echo(server.port, context)


@needs_openssl
def test_no_certificate_or_no_tls_is_refused_and_the_listener_lives(
    server: DicomServer, pki: Path
) -> None:
    anonymous = ssl.create_default_context(cafile=pki / "ca.crt")
    assert not _echo(server.port, anonymous)
    assert not _echo(server.port, None)
    context = ssl.create_default_context(cafile=pki / "ca.crt")
    context.load_cert_chain(pki / "client.crt", pki / "client.key")
    assert _echo(server.port, context)


@needs_openssl
@pytest.mark.skipif(shutil.which("echoscu") is None, reason="DCMTK not installed")
def test_dcmtk_echoscu_over_tls(server: DicomServer, pki: Path) -> None:
    result = subprocess.run(
        [
            "echoscu",
            "-aet",
            "SENDER",
            "-aec",
            "DICOM_ARCHIVE",
            "+tls",
            str(pki / "client.key"),
            str(pki / "client.crt"),
            "+cf",
            str(pki / "ca.crt"),
            "127.0.0.1",
            str(server.port),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_tls_settings_need_both_certificate_and_key(pki: Path) -> None:
    from dicom_archive.errors import ConfigError

    with pytest.raises(ConfigError, match="both certificate and key"):
        parse_settings({"tls_certificate": str(pki / "server.crt")}, "test")
    with pytest.raises(ConfigError, match="no such file"):
        parse_settings({"tls_certificate": "/nonexistent.pem", "tls_private_key": "x"}, "t")
    assert parse_settings({"peers": {"A": "h:1"}}, "t").peers == (Peer("A", "h", 1),)
