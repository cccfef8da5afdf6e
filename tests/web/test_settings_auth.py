"""[web] settings, authentication and CORS, over real HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from dicom_archive.archive.store import init_archive
from dicom_archive.errors import ConfigError
from dicom_archive.web.settings import hash_password, parse_web_settings, verify_password
from tests.web.conftest import serve, stop_and_check

TOKEN = "s3cret-token-0123456789"


def _parse(**raw: object) -> object:
    return parse_web_settings(raw, "config.toml", Path("/a"))


def test_defaults_are_loopback_without_auth() -> None:
    settings = _parse()
    assert settings.bind == "127.0.0.1" and settings.port == 8042 and settings.auth == "none"


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"bind": "0.0.0.0"}, "web.bind"),
        ({"auth": "bearer"}, "web.token"),
        ({"auth": "bearer", "token": "short"}, "web.token"),
        ({"auth": "basic", "user": "u"}, "web.password_hash"),
        ({"auth": "basic", "user": "u", "password_hash": "md5$x"}, "web.password_hash"),
        ({"auth": "kerberos"}, "web.auth"),
        ({"port": 70000}, "web.port"),
        ({"cors_origins": 5}, "web.cors_origins"),
        ({"public_url": "ftp://x"}, "web.public_url"),
        ({"colour": "blue"}, "web.colour"),
    ],
)
def test_bad_settings_name_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _parse(**raw)
    assert f"config.toml: {key}:" in str(caught.value)
    assert "short" not in str(caught.value)


def test_non_loopback_needs_auth_or_an_explicit_switch() -> None:
    assert _parse(bind="0.0.0.0", auth="bearer", token=TOKEN).bind == "0.0.0.0"
    assert _parse(bind="0.0.0.0", allow_unauthenticated=True).auth == "none"
    assert _parse(bind="::1").bind == "::1"


def test_password_hashes() -> None:
    encoded = hash_password("pa:ss wörd", iterations=1000)
    assert verify_password("pa:ss wörd", encoded)
    assert not verify_password("pa:ss word", encoded)
    assert not verify_password("x", "garbage")


def test_secrets_stay_out_of_logs_and_reprs() -> None:
    settings = _parse(auth="basic", user="admin", password="hunter2-hunter2")
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.summary())
    bearer = _parse(auth="bearer", token=TOKEN)
    assert TOKEN not in repr(bearer)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    init_archive(tmp_path / "archive").close()
    return tmp_path / "archive"


def test_bearer_token(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = serve(root, auth="bearer", token=TOKEN)
    try:
        url = f"{server.url}/studies"
        denied = requests.get(url, timeout=30)
        assert denied.status_code == 401 and "Bearer" in denied.headers["WWW-Authenticate"]
        wrong = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=30)
        assert wrong.status_code == 401
        ok = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert ok.status_code == 200 and ok.json() == []
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(server.url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert client.search_for_studies() == []
    finally:
        stop_and_check(server)


def test_basic_auth_with_a_hash(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    encoded = hash_password("correct horse", iterations=1000)
    server = serve(root, auth="basic", user="viewer", password_hash=encoded)
    try:
        url = f"{server.url}/studies"
        assert requests.get(url, timeout=30).status_code == 401
        assert requests.get(url, auth=("viewer", "wrong"), timeout=30).status_code == 401
        assert requests.get(url, auth=("other", "correct horse"), timeout=30).status_code == 401
        for _ in range(3):  # the second and third are served from the accepted digest
            assert (
                requests.get(url, auth=("viewer", "correct horse"), timeout=30).status_code == 200
            )
        garbage = requests.get(url, headers={"Authorization": "Basic %%%"}, timeout=30)
        assert garbage.status_code == 401
    finally:
        stop_and_check(server)
    out = capsys.readouterr()
    assert "correct horse" not in out.out + out.err
    assert "Y29ycmVjdCBob3JzZQ" not in out.out + out.err  # nor its base64


def test_cors(root: Path) -> None:
    server = serve(root, cors_origins=("http://viewer.example",))
    try:
        url = f"{server.url}/studies"
        preflight = requests.options(
            url,
            headers={
                "Origin": "http://viewer.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "accept",
            },
            timeout=30,
        )
        assert preflight.status_code == 200
        assert preflight.headers["Access-Control-Allow-Origin"] == "http://viewer.example"
        simple = requests.get(url, headers={"Origin": "http://viewer.example"}, timeout=30)
        assert simple.headers["Access-Control-Allow-Origin"] == "http://viewer.example"
        other = requests.get(url, headers={"Origin": "http://evil.example"}, timeout=30)
        assert "Access-Control-Allow-Origin" not in other.headers
    finally:
        stop_and_check(server)
    plain = serve(root)
    try:
        response = requests.get(f"{plain.url}/studies", headers={"Origin": "http://x"}, timeout=30)
        assert "Access-Control-Allow-Origin" not in response.headers
    finally:
        stop_and_check(plain)


def test_cors_preflight_passes_auth_but_the_request_does_not(root: Path) -> None:
    server = serve(root, cors_origins=("*",), auth="bearer", token=TOKEN)
    try:
        preflight = requests.options(
            f"{server.url}/studies",
            headers={"Origin": "http://a", "Access-Control-Request-Method": "GET"},
            timeout=30,
        )
        assert preflight.status_code == 200
        assert requests.get(f"{server.url}/studies", timeout=30).status_code == 401
    finally:
        stop_and_check(server)


def test_access_log_has_no_query(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(root)
    try:
        requests.get(f"{server.url}/studies?PatientName=SECRET^PATIENT", timeout=30)
    finally:
        stop_and_check(server)
    out = capsys.readouterr()
    assert "/studies" in out.out + out.err
    assert "SECRET" not in out.out + out.err
