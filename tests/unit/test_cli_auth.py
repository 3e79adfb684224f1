"""``mcp-gateway token keygen | jwks | issue`` and ``mcp-gateway apikey create``
(gateway/cli.py over gateway/auth/tokens.py and gateway/auth/apikeys.py)."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from gateway.auth.apikeys import hash_api_key
from gateway.auth.tokens import jwk_thumbprint, public_jwk
from gateway.cli import main
from gateway.config import ApiKeyEntry, AuthSettings
from gateway.models import SCOPES
from tests.pki import jwks as pki_jwks
from tests.pki import signing_keys

ALGS = ("RS256", "ES256", "EdDSA")
TASK_AND_FILE_SCOPES = "tasks:execute tasks:read tasks:cancel files:read files:write"
KEY_RE = re.compile(r"^mgw_[A-Za-z0-9_-]{43}$")
ISSUER, AUDIENCE = "https://issuer.test", "mcp-gateway-test"


@pytest.fixture(autouse=True)
def _no_jwt_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_GATEWAY_AUTH__JWT__ISSUER", raising=False)
    monkeypatch.delenv("MCP_GATEWAY_AUTH__JWT__AUDIENCE", raising=False)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _keygen(capsys: pytest.CaptureFixture[str], tmp_path: Path, alg: str) -> tuple[Path, dict[str, Any]]:
    key = tmp_path / f"{alg}.pem"
    rc, out, _ = _run(capsys, "token", "keygen", "--alg", alg, "--key", str(key))
    assert rc == 0
    return key, json.loads(out)


def _issue(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    rc, out, err = _run(capsys, "token", "issue", "--issuer", ISSUER, "--audience", AUDIENCE, *argv)
    assert rc == 0, err
    assert out.endswith("\n") and out.count("\n") == 1  # the token alone, on one line
    return out.strip()


def _decode(token: str, key: Any, alg: str, **options: Any) -> dict[str, Any]:
    return jwt.decode(token, key, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER, **options)


def test_rfc7638_thumbprint_example() -> None:
    # RFC 7638 section 3.1: the example RSA key and its thumbprint.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjB"
        "ZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8"
        "KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_"
        "xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    jwk = {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("alg", ALGS)
def test_keygen_writes_0600_key_and_jwks_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, alg: str) -> None:
    key, jwks_file = tmp_path / "signing.pem", tmp_path / "jwks.json"
    rc, out, err = _run(capsys, "token", "keygen", "--alg", alg, "--key", str(key), "--jwks", str(jwks_file))
    assert rc == 0 and out == ""
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    (jwk,) = json.loads(jwks_file.read_text())["keys"]
    assert jwk["alg"] == alg and jwk["use"] == "sig" and "d" not in jwk
    assert jwk["kid"] == jwk_thumbprint(jwk) and jwk["kid"] in err
    assert public_jwk(key.read_bytes()) == jwk
    jwt.PyJWKSet.from_dict({"keys": [jwk]})  # a JWKS PyJWT (and so the gateway) can load


def test_keygen_prints_jwks_without_jwks_flag_and_jwks_command_matches(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key, printed = _keygen(capsys, tmp_path, "ES256")  # default alg is ES256 too
    assert printed["keys"][0]["kty"] == "EC" and printed["keys"][0]["crv"] == "P-256"
    rc, out, _ = _run(capsys, "token", "jwks", "--key", str(key))
    assert rc == 0 and json.loads(out) == printed


def test_keygen_refuses_to_overwrite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key, jwks_file = tmp_path / "k.pem", tmp_path / "jwks.json"
    key.write_text("precious")
    rc, out, err = _run(capsys, "token", "keygen", "--key", str(key))
    assert rc == 2 and out == "" and "refusing to overwrite" in err
    assert key.read_text() == "precious"

    other = tmp_path / "new.pem"
    jwks_file.write_text("{}")
    rc, _, err = _run(capsys, "token", "keygen", "--key", str(other), "--jwks", str(jwks_file))
    assert rc == 2 and str(jwks_file) in err
    assert not other.exists() and jwks_file.read_text() == "{}"  # nothing written


@pytest.mark.parametrize("alg", ALGS)
def test_issued_token_verifies_against_the_jwks(capsys: pytest.CaptureFixture[str], tmp_path: Path, alg: str) -> None:
    key, jwks_doc = _keygen(capsys, tmp_path, alg)
    token = _issue(
        capsys, "--key", str(key), "--sub", "alice", "--tenant", "acme",
        "--role", "user", "--role", "admin", "--scope", "tasks:read", "--scope", "files:read files:write",
        "--ttl", "120",
    )
    header = jwt.get_unverified_header(token)
    kid = jwks_doc["keys"][0]["kid"]
    assert header["alg"] == alg and header["kid"] == kid and header["typ"] == "JWT"
    claims = _decode(token, jwt.PyJWKSet.from_dict(jwks_doc)[kid], alg)
    assert claims["sub"] == "alice" and claims["tenant"] == "acme"
    assert claims["roles"] == ["user", "admin"]
    assert claims["scope"] == "tasks:read files:read files:write"
    assert claims["iss"] == ISSUER and claims["aud"] == AUDIENCE
    assert claims["exp"] - claims["iat"] == 120 and claims["nbf"] == claims["iat"]
    assert abs(claims["iat"] - time.time()) < 60 and len(claims["jti"]) >= 16


def test_issue_defaults_env_issuer_and_not_before(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = signing_keys()["ES256"]  # a key made elsewhere, published under its own kid
    pem = tmp_path / "es.pem"
    pem.write_bytes(key.pem)
    monkeypatch.setenv("MCP_GATEWAY_AUTH__JWT__ISSUER", ISSUER)
    monkeypatch.setenv("MCP_GATEWAY_AUTH__JWT__AUDIENCE", AUDIENCE)
    rc, out, err = _run(
        capsys, "token", "issue", "--key", str(pem), "--sub", "bob", "--tenant", "t1",
        "--kid", key.kid, "--not-before", "600",
    )
    assert rc == 0, err
    token = out.strip()
    assert jwt.get_unverified_header(token)["kid"] == key.kid
    verifying = jwt.PyJWKSet.from_dict(pki_jwks(key))[key.kid]
    with pytest.raises(jwt.ImmatureSignatureError):
        _decode(token, verifying, "ES256")
    claims = _decode(token, verifying, "ES256", leeway=700)
    assert claims["roles"] == ["user"] and claims["scope"] == TASK_AND_FILE_SCOPES
    assert claims["exp"] - claims["iat"] == 3600 and claims["nbf"] - claims["iat"] == 600


def test_issue_hs256_verifies_with_the_secret(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    secret = b"s3cret-for-hs256-tests-0123456789abcdef"
    secret_file = tmp_path / "hs256.secret"
    secret_file.write_bytes(secret + b"\n")  # as `echo ... > file` leaves it
    token = _issue(capsys, "--hs256-secret-file", str(secret_file), "--sub", "carol", "--tenant", "acme")
    assert "kid" not in jwt.get_unverified_header(token)
    claims = _decode(token, secret, "HS256")
    assert claims["sub"] == "carol" and claims["scope"] == TASK_AND_FILE_SCOPES

    secret_file.write_bytes(b"too short")
    rc, out, err = _run(
        capsys, "token", "issue", "--hs256-secret-file", str(secret_file), "--sub", "c", "--tenant", "t",
        "--issuer", ISSUER, "--audience", AUDIENCE,
    )
    assert rc == 2 and out == "" and "at least 32" in err


def test_issue_needs_issuer_and_audience(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key, _ = _keygen(capsys, tmp_path, "EdDSA")
    rc, out, err = _run(capsys, "token", "issue", "--key", str(key), "--sub", "a", "--tenant", "t",
                        "--audience", AUDIENCE)
    assert rc == 2 and out == ""
    assert "--issuer" in err and "MCP_GATEWAY_AUTH__JWT__ISSUER" in err and "--audience" not in err


@pytest.mark.parametrize("command", ["token", "apikey"])
def test_unknown_scope_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str) -> None:
    if command == "token":
        key, _ = _keygen(capsys, tmp_path, "ES256")
        argv = ["token", "issue", "--key", str(key), "--sub", "a", "--tenant", "t",
                "--issuer", ISSUER, "--audience", AUDIENCE]
    else:
        argv = ["apikey", "create", "--principal", "a", "--tenant", "t"]
    rc, out, err = _run(capsys, *argv, "--scope", "tasks:read", "--scope", "tasks:everything")
    assert rc == 2 and out == ""
    assert "tasks:everything" in err and all(s in err for s in SCOPES)


def _parse_apikey_output(out: str) -> tuple[str, ApiKeyEntry]:
    key, blank, *rest = out.split("\n")
    assert KEY_RE.match(key) and blank == ""
    items = yaml.safe_load("\n".join(rest))
    assert isinstance(items, list) and len(items) == 1
    AuthSettings(api_keys=items)  # fits under auth.api_keys as it is
    return key, ApiKeyEntry.model_validate(items[0])


def test_apikey_create_prints_key_then_config_entry(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "apikey", "create", "--principal", "ci-bot", "--tenant", "acme")
    assert rc == 0 and "only" in err and "mgw_" not in err
    key, entry = _parse_apikey_output(out)
    assert entry.hash == hash_api_key(key)
    assert (entry.principal, entry.tenant, entry.roles) == ("ci-bot", "acme", ["user"])
    assert entry.scopes == TASK_AND_FILE_SCOPES.split()
    assert entry.name == "" and entry.expires_at is None and not entry.revoked

    rc, out, _ = _run(
        capsys, "apikey", "create", "--principal", "ops@acme", "--tenant", "acme", "--role", "admin",
        "--scope", "tasks:read", "--scope", "policy:read", "--name", "ops: 'on-call' #1", "--expires-in", "3600",
    )
    assert rc == 0
    key2, entry2 = _parse_apikey_output(out)
    assert key2 != key and entry2.hash == hash_api_key(key2)
    assert entry2.roles == ["admin"] and entry2.scopes == ["tasks:read", "policy:read"]
    assert entry2.name == "ops: 'on-call' #1"  # quoted by the YAML dumper, read back intact
    assert entry2.expires_at is not None and abs(entry2.expires_at - (time.time() + 3600)) < 60


def test_apikey_create_invalid_fields_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "apikey", "create", "--principal", "has space", "--tenant", "acme")
    assert rc == 2 and out == "" and "--principal" in err
    rc, out, err = _run(capsys, "apikey", "create", "--principal", "p", "--tenant", "acme", "--role", "bad role")
    assert rc == 2 and out == "" and "--role" in err


def test_console_script_apikey_create() -> None:
    script = Path(sys.executable).parent / "mcp-gateway"
    done = subprocess.run(
        [str(script), "apikey", "create", "--principal", "script-bot", "--tenant", "acme"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    key, entry = _parse_apikey_output(done.stdout)
    assert entry.hash == hash_api_key(key) and entry.principal == "script-bot"
    assert "only" in done.stderr
