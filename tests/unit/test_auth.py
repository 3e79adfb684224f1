"""The authenticator's order of checks, API keys, mTLS identities and the bind rules of
the auth settings (JWT verification itself: test_auth_jwt.py)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from gateway.auth import DEV_PRINCIPAL, AuthFailure, Authenticator, Credentials
from gateway.auth.apikeys import ApiKeyRing, hash_api_key, new_api_key
from gateway.auth.mtls import parse_client_certificate
from gateway.config import ApiKeyEntry, AuthSettings, Settings, TlsSettings
from gateway.errors import TokenExpired, Unauthenticated
from tests.pki import CertificateAuthority

SCOPES = ["tasks:read"]


def _entry(key: str, **extra: object) -> dict[str, object]:
    return {"hash": hash_api_key(key), "principal": "ci", "tenant": "acme", "scopes": SCOPES, **extra}


def _failure(auth: Authenticator, credentials: Credentials) -> AuthFailure:
    with pytest.raises(AuthFailure) as err:
        auth.authenticate(credentials)
    return err.value


def test_api_keys_are_256_random_bits_stored_as_sha256() -> None:
    key = new_api_key()
    assert key.startswith("mgw_") and len(key) == 47 and key != new_api_key()
    assert hash_api_key(key) == "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def test_api_key_ring_refuses_malformed_unknown_revoked_and_expired_keys() -> None:
    good, revoked, expired = new_api_key(), new_api_key(), new_api_key()
    ring = ApiKeyRing([
        ApiKeyEntry(**_entry(good)),
        ApiKeyEntry(**_entry(revoked, revoked=True)),
        ApiKeyEntry(**_entry(expired, expires_at=int(time.time()) - 1)),
    ])
    principal = ring.verify(good)
    assert (principal.id, principal.tenant, principal.scopes, principal.auth_scheme) == ("ci", "acme", ("tasks:read",),
                                                                                        "bearer")
    for key, error, reason in ((good[:-1], Unauthenticated, "malformed_api_key"),
                               (new_api_key(), Unauthenticated, "unknown_api_key"),
                               (revoked, Unauthenticated, "revoked_api_key"),
                               (expired, TokenExpired, "expired")):
        with pytest.raises(error) as err:
            ring.verify(key)
        assert err.value.details == {"reason": reason}


def test_the_credential_is_named_by_its_hash_never_shown() -> None:
    key = new_api_key()
    auth = Authenticator(AuthSettings(api_keys=[_entry(key)]), TlsSettings())
    principal = auth.authenticate(Credentials(authorization=f"Bearer {key}"))
    assert principal.credential_sha256 == hash_api_key(key).removeprefix("sha256:")

    failure = _failure(auth, Credentials(authorization=f"Bearer {key[:-2]}xx"))
    assert failure.reason == "unknown_api_key" and failure.scheme == "bearer"
    assert failure.credential_sha256 == hashlib.sha256(f"{key[:-2]}xx".encode()).hexdigest()
    assert key[4:] not in str(failure.error.to_dict())


@pytest.mark.parametrize("header, reason, scheme", [
    ("Basic dXNlcjpwYXNz", "unsupported_scheme", "other"),
    ("Bearer", "malformed_token", "bearer"),
    ("Bearer " + "x" * 20000, "malformed_token", "bearer"),
    ("Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig", "jwt_not_configured", "bearer"),
])
def test_bad_authorization_headers_are_refused(header: str, reason: str, scheme: str) -> None:
    auth = Authenticator(AuthSettings(api_keys=[_entry(new_api_key())]), TlsSettings())
    failure = _failure(auth, Credentials(authorization=header))
    assert (failure.reason, failure.scheme, failure.error.code) == (reason, scheme, 1001)


def test_dev_mode_only_covers_calls_without_credentials() -> None:
    auth = Authenticator(AuthSettings(dev_mode=True), TlsSettings())
    assert auth.authenticate(Credentials()) is DEV_PRINCIPAL
    assert _failure(auth, Credentials(authorization=f"Bearer {new_api_key()}")).reason == "unknown_api_key"
    strict = Authenticator(AuthSettings(api_keys=[_entry(new_api_key())]), TlsSettings())
    assert _failure(strict, Credentials()).reason == "missing_credentials"


def test_update_swaps_keys_at_once_but_not_dev_mode() -> None:
    old, new = new_api_key(), new_api_key()
    auth = Authenticator(AuthSettings(api_keys=[_entry(old)]), TlsSettings())
    auth.update(AuthSettings(api_keys=[_entry(new)], dev_mode=True))
    assert _failure(auth, Credentials(authorization=f"Bearer {old}")).reason == "unknown_api_key"
    assert auth.authenticate(Credentials(authorization=f"Bearer {new}")).id == "ci"
    assert not auth.dev_mode  # what may bind where is decided at start


def _mtls(tmp_path: Path) -> tuple[Authenticator, CertificateAuthority, str]:
    """An authenticator requiring client certificates (two mapped identities) plus one API key."""
    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.issue("server", server=True)
    auth = AuthSettings(client_certs=[
        {"subject": "CN=ci-bot,O=acme", "principal": "ci-bot", "tenant": "acme", "scopes": SCOPES},
        {"san": "uri:spiffe://acme/agent", "principal": "agent", "tenant": "acme", "scopes": SCOPES},
    ], api_keys=[_entry(key := new_api_key())])
    tls = TlsSettings(cert_file=server.cert, key_file=server.key, client_ca_file=ca.cert)
    return Authenticator(auth, tls), ca, key


def test_client_certificates_map_by_subject_or_san(tmp_path: Path) -> None:
    auth, ca, _ = _mtls(tmp_path)
    bot = ca.issue("ci-bot", organization="acme")
    agent = ca.issue("whoever", uris=("spiffe://acme/agent",))
    stranger = ca.issue("stranger")

    principal = auth.authenticate(Credentials(client_cert=bot.cert.read_bytes()))
    assert (principal.id, principal.auth_scheme) == ("ci-bot", "mtls")
    der = bot.certificate.public_bytes(serialization.Encoding.DER)
    assert principal.credential_sha256 == hashlib.sha256(der).hexdigest()
    assert auth.authenticate(Credentials(client_cert=der)).id == "ci-bot"  # DER as HTTPS hands it
    assert auth.authenticate(Credentials(client_cert=agent.cert.read_bytes())).id == "agent"
    failure = _failure(auth, Credentials(client_cert=stranger.cert.read_bytes()))
    assert (failure.reason, failure.scheme) == ("unmapped_client_certificate", "mtls")
    assert parse_client_certificate(agent.cert.read_bytes()).sans == ("uri:spiffe://acme/agent",)


def test_with_a_client_ca_a_certificate_is_required_even_with_a_key(tmp_path: Path) -> None:
    auth, ca, key = _mtls(tmp_path)
    failure = _failure(auth, Credentials(authorization=f"Bearer {key}"))
    assert failure.reason == "client_certificate_required"
    bot = ca.issue("ci-bot", organization="acme")
    both = auth.authenticate(Credentials(authorization=f"Bearer {key}", client_cert=bot.cert.read_bytes()))
    assert (both.id, both.auth_scheme) == ("ci", "bearer")  # the bearer credential names the principal


@pytest.mark.parametrize("settings, message", [
    ({"host": "0.0.0.0"}, "without authentication configured"),
    ({"host": "0.0.0.0", "auth": {"dev_mode": True}}, "in dev mode"),
    ({"host": "10.1.2.3", "auth": {"api_keys": [_entry(new_api_key())]}}, "without TLS"),
    ({"auth": {"client_certs": [{"subject": "CN=x", "principal": "x", "tenant": "t", "scopes": SCOPES}]}},
     "needs tls.client_ca_file"),
    ({"auth": {"api_keys": [_entry("k"), _entry("k")]}}, "same key hash twice"),
    ({"auth": {"api_keys": [_entry("k", scopes=["tasks:everything"])]}}, "unknown scopes"),
    ({"auth": {"api_keys": [_entry("k", roles=["admin\n"])]}}, "bad role names"),
    ({"auth": {"jwt": {"hs256_secret": "short", "issuer": "i", "audience": "a"}}}, "at least 32 bytes"),
    ({"auth": {"jwt": {"jwks_url": "https://idp/jwks"}}}, "needs 'issuer' and 'audience'"),
    ({"auth": {"client_certs": [{"principal": "x", "tenant": "t", "scopes": SCOPES}]}}, "exactly one of"),
])
def test_unsafe_or_broken_auth_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**settings)


def test_a_non_loopback_bind_with_credentials_and_tls_is_allowed(tmp_path: Path) -> None:
    tls = {"cert_file": tmp_path / "c.pem", "key_file": tmp_path / "k.pem"}
    assert Settings(host="0.0.0.0", auth={"api_keys": [_entry(new_api_key())]}, tls=tls).tls.enabled
    upstream = Settings(host="0.0.0.0", auth={"api_keys": [_entry(new_api_key())]}, tls={"terminated_upstream": True})
    assert not upstream.tls.enabled
