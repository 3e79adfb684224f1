"""Development JWTs: make a signing key, publish its JWKS, mint tokens the gateway accepts.

What ``mcp-gateway token keygen | jwks | issue`` call. Nothing here runs in the gateway:
it verifies tokens (RFC 7519) against ``auth.jwt.jwks_file`` / ``jwks_url`` or the HS256
secret; these functions make the other side for development and tests.

Keys are PEM, PKCS#8, unencrypted. The algorithm follows from the key type, one per type,
the ones the gateway accepts (RFC 7518 section 3, RFC 8037):

====== ============================ ==========================
alg    private key                  public JWK (RFC 7517)
====== ============================ ==========================
RS256  RSA, at least 2048 bits      ``kty`` RSA, ``n``, ``e``
ES256  EC on P-256 (secp256r1)      ``kty`` EC, ``crv`` P-256
EdDSA  Ed25519                      ``kty`` OKP, ``crv`` Ed25519
====== ============================ ==========================

A public JWK carries ``kid`` = its RFC 7638 thumbprint (base64url SHA-256, no padding),
``alg`` and ``use: sig``; tokens name the same ``kid`` in their header, so a JWKS made from
the key finds it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = [
    "ALGORITHMS",
    "DEFAULT_SCOPES",
    "HS256_MIN_SECRET_BYTES",
    "generate_signing_key",
    "issue_token",
    "jwk_thumbprint",
    "public_jwk",
]

#: Asymmetric algorithms a key can be made for (the gateway's ``auth.jwt.algorithms``).
ALGORITHMS: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
#: Scopes a development token gets unless told otherwise: every task and file scope.
DEFAULT_SCOPES: tuple[str, ...] = ("tasks:execute", "tasks:read", "tasks:cancel", "files:read", "files:write")
#: Shortest HS256 secret, bytes (RFC 7518 section 3.2; the gateway refuses shorter ones too).
HS256_MIN_SECRET_BYTES = 32

_RSA_BITS = 2048
# RFC 7638 section 3.2: the required members of each key type, the only ones hashed.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
# RFC 6749 section 3.3 scope-token: printable ASCII except space, '"' and '\'.
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
_RESERVED_CLAIMS = frozenset({"sub", "tenant", "roles", "scope", "iss", "aud", "iat", "nbf", "exp", "jti"})


def generate_signing_key(alg: str = "ES256") -> tuple[bytes, dict[str, Any]]:
    """A new signing key for ``alg``: ``(private_pem, public_jwk)``.

    ``private_pem`` is PKCS#8 PEM, unencrypted (RSA 2048 bits for RS256, P-256 for ES256,
    Ed25519 for EdDSA); ``public_jwk`` is as :func:`public_jwk` returns it.

    Raises:
        ValueError: ``alg`` is not one of :data:`ALGORITHMS`.
    """
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unsupported algorithm {alg!r}; choose one of {', '.join(ALGORITHMS)}")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, _jwk(private, alg)


def public_jwk(private_pem: bytes) -> dict[str, Any]:
    """The public JWK of a private key PEM: the key type's members (table above) plus
    ``kid`` (RFC 7638 thumbprint), ``alg`` (from the key type) and ``use: sig``.

    Raises:
        ValueError: not an unencrypted private key PEM, or a key type / size / curve the
            gateway cannot verify (see the module docstring).
    """
    private, alg = _load(private_pem)
    return _jwk(private, alg)


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint of a public JWK: base64url (no padding) SHA-256 of the JSON
    object of the key type's required members only, keys sorted, no whitespace.

    Raises:
        ValueError: ``kty`` is not RSA, EC or OKP, or a required member is missing.
    """
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty", ""))
    if members is None:
        raise ValueError(f"no thumbprint rule for kty {jwk.get('kty')!r}")
    missing = [m for m in members if m not in jwk]
    if missing:
        raise ValueError(f"JWK lacks required members {missing}")
    canonical = json.dumps({m: jwk[m] for m in members}, sort_keys=True, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def issue_token(
    key: bytes,
    *,
    subject: str,
    tenant: str,
    issuer: str,
    audience: str,
    scopes: Sequence[str],
    roles: Sequence[str] = (),
    ttl_s: int = 3600,
    not_before_s: int = 0,
    kid: str | None = None,
    extra: Mapping[str, Any] | None = None,
    hs256: bool = False,
) -> str:
    """A compact JWS (RFC 7515) signed with ``key``: a private key PEM, the algorithm following
    from the key type (RS256, ES256 or EdDSA); or with ``hs256`` the shared secret
    (``auth.jwt.hs256_secret`` as UTF-8 bytes).

    Header: ``alg``, ``typ: JWT``, ``kid`` (default: the key's RFC 7638 thumbprint, as in
    :func:`public_jwk`; none for HS256 unless given). Claims: ``sub``, ``tenant``, ``roles``
    (list), ``scope`` (scopes joined by single spaces, RFC 8693), ``iss``, ``aud``, ``iat`` =
    now, ``nbf`` = now + ``not_before_s``, ``exp`` = now + ``ttl_s`` (unix seconds), ``jti``
    (128 random bits, base64url), then ``extra``. The claim names are the gateway's defaults
    (``auth.jwt.tenant_claim`` etc.); put other names in ``extra``.

    Raises:
        ValueError: a bad key (see :func:`public_jwk`), an HS256 secret shorter than
            :data:`HS256_MIN_SECRET_BYTES`, empty subject / tenant / issuer / audience, a
            scope that is not an RFC 6749 scope-token, ``ttl_s`` < 1, ``not_before_s`` >=
            ``ttl_s`` (never valid), or ``extra`` naming one of the claims above.
    """
    claims = _claims(subject, tenant, issuer, audience, scopes, roles, ttl_s, not_before_s, extra)
    if hs256:
        if len(key) < HS256_MIN_SECRET_BYTES:
            raise ValueError(
                f"HS256 secret is {len(key)} bytes; at least {HS256_MIN_SECRET_BYTES} are needed (RFC 7518 section 3.2)"
            )
        return jwt.encode(claims, key, algorithm="HS256", headers={"kid": kid} if kid is not None else None)
    private, alg = _load(key)
    header_kid = kid if kid is not None else jwk_thumbprint(_jwk(private, alg))
    return jwt.encode(claims, private, algorithm=alg, headers={"kid": header_kid})


def _claims(
    subject: str,
    tenant: str,
    issuer: str,
    audience: str,
    scopes: Sequence[str],
    roles: Sequence[str],
    ttl_s: int,
    not_before_s: int,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    for label, value in (("subject", subject), ("tenant", tenant), ("issuer", issuer), ("audience", audience)):
        if not value:
            raise ValueError(f"{label} must not be empty")
    bad = [s for s in scopes if not _SCOPE_TOKEN.match(s)]
    if bad:
        raise ValueError(f"scopes must be non-empty and contain no spaces, quotes or backslashes: {bad}")
    if ttl_s < 1:
        raise ValueError(f"ttl must be at least 1 second, not {ttl_s}")
    if not_before_s >= ttl_s:
        raise ValueError(f"not-before ({not_before_s} s) must be less than the ttl ({ttl_s} s)")
    clash = sorted(_RESERVED_CLAIMS & set(extra or {}))
    if clash:
        raise ValueError(f"extra claims may not replace {clash}")
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "tenant": tenant,
        "roles": list(roles),
        "scope": " ".join(scopes),
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "nbf": now + not_before_s,
        "exp": now + ttl_s,
        "jti": secrets.token_urlsafe(16),
    }
    claims.update(extra or {})
    return claims


def _load(private_pem: bytes) -> tuple[Any, str]:
    """The private key in ``private_pem`` and its algorithm."""
    try:
        private = serialization.load_pem_private_key(private_pem, password=None)
    except TypeError as exc:  # encrypted key, no password given
        raise ValueError(f"cannot use an encrypted private key: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"not a PEM private key: {exc}") from exc
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < _RSA_BITS:
            raise ValueError(f"RSA key is {private.key_size} bits; RS256 needs at least {_RSA_BITS}")
        return private, "RS256"
    if isinstance(private, ec.EllipticCurvePrivateKey):
        if not isinstance(private.curve, ec.SECP256R1):
            raise ValueError(f"EC key on {private.curve.name}; ES256 needs P-256 (secp256r1)")
        return private, "ES256"
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private, "EdDSA"
    raise ValueError(f"unsupported key type {type(private).__name__}; use RSA, EC P-256 or Ed25519")


def _jwk(private: Any, alg: str) -> dict[str, Any]:
    jwk: dict[str, Any] = jwt.get_algorithm_by_name(alg).to_jwk(private.public_key(), as_dict=True)
    # PyJWT adds key_ops to RSA keys; RFC 7517 section 4.3: not together with "use".
    jwk.pop("key_ops", None)
    jwk.update(kid=jwk_thumbprint(jwk), alg=alg, use="sig")
    return jwk


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
