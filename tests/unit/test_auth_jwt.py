"""gateway.auth.jwt: real tokens signed with fresh test keys (tests/pki.py), JWKS from a file,
a local fetch function and a real local HTTP server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import gateway.auth.jwt as jwt_module
from gateway.auth.jwt import JWKS_TIMEOUT_S, JwtVerifier
from gateway.config import JwtSettings
from gateway.errors import TokenExpired, Unauthenticated
from gateway.models import Principal
from tests.conftest import wait_until
from tests.pki import SigningKey, jwks, signing_keys

ISS = "https://idp.test"
AUD = "mcp-gateway"
SECRET = "s" * 40
URL = "https://idp.test/.well-known/jwks.json"
DROP = object()  # claims(name=DROP) leaves the claim out


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return signing_keys()


@pytest.fixture(scope="module")
def new_rsa() -> SigningKey:
    """A second RS256 key (another kid), for rotation."""
    key = signing_keys()["RS256"]
    key.kid = "test-rs256-next"
    key.jwk["kid"] = key.kid
    return key


def b64(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISS, "aud": AUD, "sub": "alice", "tenant": "acme", "iat": now, "exp": now + 300,
        "roles": ["user", "admin"], "scope": "tasks:execute tasks:read",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


def sign(key: SigningKey, payload: dict[str, Any] | None = None, **headers: Any) -> str:
    """A token signed by ``key`` (PyJWS, so that PyJWT's encode-side claim checks do not
    stop the bad claims the tests need)."""
    headers.setdefault("kid", key.kid)
    body = json.dumps(claims() if payload is None else payload).encode()
    return jwt.api_jws.encode(body, key.private, algorithm=key.alg, headers=headers)


def hs256(secret: bytes | str, payload: dict[str, Any] | None = None, **header: Any) -> str:
    """An HS256 token made by hand (PyJWT refuses PEM strings as HMAC keys)."""
    secret = secret.encode() if isinstance(secret, str) else secret
    signing_input = b64({"alg": "HS256", "typ": "JWT", **header}) + "." + b64(payload or claims())
    return signing_input + "." + b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def write_jwks(path: Path, *keys: SigningKey | dict[str, Any]) -> Path:
    """Replace ``path`` atomically with a JWKS of ``keys`` (SigningKeys or raw JWK dicts)."""
    doc = {"keys": [k.jwk if isinstance(k, SigningKey) else k for k in keys]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)
    return path


def settings(path: Path | None = None, **over: Any) -> JwtSettings:
    return JwtSettings(jwks_file=path, issuer=ISS, audience=AUD, **over)


@pytest.fixture
def jwks_path(tmp_path: Path, keys: dict[str, SigningKey]) -> Path:
    return write_jwks(tmp_path / "jwks.json", *keys.values())


@pytest.fixture
def verifier(jwks_path: Path) -> JwtVerifier:
    v = JwtVerifier(settings(jwks_path, hs256_secret=SECRET))
    v.load()
    return v


def refused(verifier: JwtVerifier, token: Any, kind: type[Exception] = Unauthenticated) -> str:
    """The reason ``token`` is refused with; checks the error type and that the message
    quotes no part of the token."""
    with pytest.raises(kind) as info:
        verifier.verify(token)
    error = info.value
    assert type(error) is kind
    if isinstance(token, str):
        for part in token.split("."):
            assert len(part) < 8 or part not in error.message
    return error.details["reason"]


class Fetcher:
    """A fetch(url, timeout_s) that serves a JWKS document, counts calls and can fail."""

    def __init__(self, *keys: SigningKey, delay_s: float = 0.0) -> None:
        self.body = json.dumps(jwks(*keys)).encode()
        self.calls: list[tuple[str, float]] = []
        self.fail = False
        self.delay_s = delay_s
        self.active = self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, url: str, timeout_s: float) -> bytes:
        with self._lock:
            self.calls.append((url, timeout_s))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay_s)
            if self.fail:
                raise ConnectionError("IdP down")
            return self.body
        finally:
            with self._lock:
                self.active -= 1


# -- valid tokens ---------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_valid_asymmetric_token(verifier: JwtVerifier, keys: dict[str, SigningKey], alg: str) -> None:
    token = sign(keys[alg])
    principal = verifier.verify(token)
    assert principal == Principal(
        id="alice", tenant="acme", roles=("user", "admin"), scopes=("tasks:execute", "tasks:read"),
        auth_scheme="bearer", credential_sha256=sha256_hex(token),
    )


def test_valid_hs256_token_without_jwks() -> None:
    verifier = JwtVerifier(settings(hs256_secret=SECRET))
    verifier.load()  # nothing to load
    token = jwt.encode(claims(sub="svc-1", tenant="t2", roles=DROP, scope=DROP), SECRET, algorithm="HS256")
    assert verifier.verify(token) == Principal(id="svc-1", tenant="t2", auth_scheme="bearer",
                                               credential_sha256=sha256_hex(token))
    assert verifier.verify(hs256(SECRET, kid="ignored")).id == "alice"


def test_configured_claim_names(jwks_path: Path, keys: dict[str, SigningKey]) -> None:
    verifier = JwtVerifier(
        settings(jwks_path, principal_claim="email", tenant_claim="org", roles_claim="groups", scopes_claim="perms")
    )
    payload = claims(
        sub=DROP, tenant=DROP, roles=DROP, email="bob@acme.test", org="acme", groups=["ops"], perms="files:read"
    )
    token = sign(keys["ES256"], payload)
    principal = verifier.verify(token)
    assert principal == Principal("bob@acme.test", "acme", ("ops",), ("files:read",), "bearer", sha256_hex(token))


def test_scope_forms(verifier: JwtVerifier, keys: dict[str, SigningKey]) -> None:
    rs = keys["RS256"]
    assert verifier.verify(sign(rs, claims(scope=["files:read", "files:read"]))).scopes == ("files:read",)
    assert verifier.verify(sign(rs, claims(scope=DROP, scp=["tasks:read"]))).scopes == ("tasks:read",)
    assert verifier.verify(sign(rs, claims(scope="  a  b "))).scopes == ("a", "b")
    assert verifier.verify(sign(rs, claims(scope="", roles=[]))).scopes == ()
    nulls = verifier.verify(sign(rs, claims(scope=None, roles=None, nbf=None, iat=None)))  # null = absent
    assert (nulls.roles, nulls.scopes) == ((), ())
    assert verifier.verify(sign(rs, claims(aud=["other", AUD]))).id == "alice"


# -- registered claims ----------------------------------------------------------------


def test_expired(verifier: JwtVerifier, keys: dict[str, SigningKey]) -> None:
    token = sign(keys["RS256"], claims(exp=int(time.time()) - 31, iat=int(time.time()) - 600))
    assert refused(verifier, token, TokenExpired) == "expired"
    with pytest.raises(TokenExpired) as info:
        verifier.verify(token)
    assert info.value.code == 1002


def test_exp_and_nbf_within_leeway_accepted(verifier: JwtVerifier, keys: dict[str, SigningKey]) -> None:
    now = int(time.time())
    assert verifier.verify(sign(keys["ES256"], claims(exp=now - 20, nbf=now + 20, iat=now + 20))).id == "alice"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_yet_valid(verifier: JwtVerifier, keys: dict[str, SigningKey], claim: str) -> None:
    token = sign(keys["EdDSA"], claims(**{claim: int(time.time()) + 120}))
    assert refused(verifier, token) == "not_yet_valid"


def test_wrong_audience_and_issuer(verifier: JwtVerifier, keys: dict[str, SigningKey]) -> None:
    assert refused(verifier, sign(keys["RS256"], claims(aud="other"))) == "wrong_audience"
    assert refused(verifier, sign(keys["RS256"], claims(aud=["a", "b"]))) == "wrong_audience"
    assert refused(verifier, sign(keys["RS256"], claims(iss="https://evil.test"))) == "wrong_issuer"
    assert refused(verifier, sign(keys["RS256"], claims(iss=5))) == "wrong_issuer"


@pytest.mark.parametrize("claim", ["tenant", "sub", "exp", "iss", "aud"])
def test_missing_claim(verifier: JwtVerifier, keys: dict[str, SigningKey], claim: str) -> None:
    assert refused(verifier, sign(keys["ES256"], claims(**{claim: DROP}))) == "missing_claim"
    assert refused(verifier, sign(keys["ES256"], claims(**{claim: None}))) == "missing_claim"


@pytest.mark.parametrize(
    "changes",
    [
        {"sub": 5}, {"sub": "has space"}, {"sub": "alice\n"}, {"sub": ""}, {"sub": "x" * 129}, {"tenant": ["acme"]},
        {"roles": ["user\n"]},
        {"tenant": "-leading-dash"}, {"roles": "admin"}, {"roles": [1]}, {"roles": ["ok", "bad role"]},
        {"roles": [f"r{i}" for i in range(65)]}, {"scope": 5}, {"scope": ["ok", 1]}, {"scope": {"a": 1}},
        {"scope": " ".join(f"s{i}" for i in range(65))}, {"scope": "a" * 129}, {"scope": ["has space"]},
        {"scope": DROP, "scp": 7}, {"exp": str(int(time.time()) + 300)}, {"exp": True},
        {"exp": float("inf")}, {"nbf": "soon"}, {"iat": "x"}, {"iat": [1]}, {"jti": 5},
    ],
    ids=repr,
)
def test_bad_claim(verifier: JwtVerifier, keys: dict[str, SigningKey], changes: dict[str, Any]) -> None:
    assert refused(verifier, sign(keys["RS256"], claims(**changes))) == "bad_claim"


def test_limits_are_inclusive(verifier: JwtVerifier, keys: dict[str, SigningKey]) -> None:
    payload = claims(roles=[f"r{i}" for i in range(64)], scope=" ".join(["a" * 128] + [f"s{i}" for i in range(63)]))
    principal = verifier.verify(sign(keys["RS256"], payload))
    assert (len(principal.roles), len(principal.scopes)) == (64, 64)


# -- header, algorithm and key checks --------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "NONE", "None", "nOnE"])
def test_alg_none_refused(verifier: JwtVerifier, alg: str) -> None:
    token = b64({"alg": alg, "typ": "JWT"}) + "." + b64(claims()) + "."
    assert refused(verifier, token) == "alg_not_allowed"


def test_algorithms_outside_config_refused(jwks_path: Path, keys: dict[str, SigningKey]) -> None:
    verifier = JwtVerifier(settings(jwks_path, algorithms=["ES256"]))
    assert refused(verifier, sign(keys["RS256"])) == "alg_not_allowed"
    assert refused(verifier, hs256(SECRET)) == "alg_not_allowed"  # no secret configured
    hs384 = jwt.encode(claims(), SECRET * 2, algorithm="HS384")
    assert refused(verifier, hs384) == "alg_not_allowed"
    assert verifier.verify(sign(keys["ES256"])).id == "alice"
    # HS256 only: asymmetric algorithms have no keys, so they are not allowed either
    assert refused(JwtVerifier(settings(hs256_secret=SECRET)), sign(keys["RS256"])) == "alg_not_allowed"


def test_hs256_signed_with_rsa_public_key(jwks_path: Path, keys: dict[str, SigningKey]) -> None:
    """Algorithm confusion (RFC 8725 section 2.1): the RSA public key as an HMAC secret."""
    rsa_key = keys["RS256"]
    forged = hs256(rsa_key.public_pem, kid=rsa_key.kid)
    with_secret = JwtVerifier(settings(jwks_path, hs256_secret=SECRET))
    assert refused(with_secret, forged) == "bad_signature"
    assert refused(JwtVerifier(settings(jwks_path)), forged) == "alg_not_allowed"
    jwk_json = json.dumps(rsa_key.jwk).encode()
    assert refused(with_secret, hs256(jwk_json, kid=rsa_key.kid)) == "bad_signature"


def test_header_alg_differs_from_key_alg(verifier: JwtVerifier, keys: dict[str, SigningKey]) -> None:
    rs_token = sign(keys["RS256"])
    forged = b64({"alg": "ES256", "kid": keys["RS256"].kid, "typ": "JWT"}) + rs_token[rs_token.index("."):]
    assert refused(verifier, forged) == "key_alg_mismatch"
    ed_token = sign(keys["EdDSA"], kid=keys["ES256"].kid)
    assert refused(verifier, ed_token) == "key_alg_mismatch"


def test_key_alg_from_kty_when_jwk_has_no_alg(tmp_path: Path, keys: dict[str, SigningKey]) -> None:
    bare = [{k: v for k, v in key.jwk.items() if k not in ("alg", "use")} for key in keys.values()]
    verifier = JwtVerifier(settings(write_jwks(tmp_path / "jwks.json", *bare)))
    for key in keys.values():
        assert verifier.verify(sign(key)).id == "alice"
    ec_token = sign(keys["ES256"], kid=keys["RS256"].kid)
    assert refused(verifier, ec_token) == "key_alg_mismatch"


def test_tampered_payload(verifier: JwtVerifier, keys: dict[str, SigningKey]) -> None:
    for alg in ("RS256", "ES256", "EdDSA"):
        mine = sign(keys[alg], claims(sub="alice")).split(".")
        other = sign(keys[alg], claims(sub="mallory", roles=["admin"])).split(".")
        assert refused(verifier, ".".join([mine[0], other[1], mine[2]])) == "bad_signature"
    mine = hs256(SECRET).split(".")
    other = hs256(SECRET, claims(sub="mallory")).split(".")
    assert refused(verifier, ".".join([mine[0], other[1], mine[2]])) == "bad_signature"
    assert refused(verifier, hs256("t" * 40)) == "bad_signature"
    head, body, sig = sign(keys["ES256"]).split(".")
    raw = base64.urlsafe_b64decode(sig + "==")
    assert len(raw) == 64
    assert refused(verifier, f"{head}.{body}.{b64(raw[:-3])}") == "bad_signature"  # wrong length
    assert refused(verifier, f"{head}.{body}.{sig[:-1]}B") == "malformed_token"  # not canonical base64url


@pytest.mark.parametrize(
    "token",
    [
        "", "abc", "a.b", "a.b.c.d", "!!!!.e30.", "e30.e30", "....",
        b64(b"not json") + "." + b64(claims()) + ".",
        b64(b'["alg", "RS256"]') + "." + b64(claims()) + ".",
        b64({"typ": "JWT"}) + "." + b64(claims()) + ".",  # no alg
        b64({"alg": "RS256", "kid": 5}) + "." + b64(claims()) + ".",
        b64({"alg": "RS256", "crit": ["exp"], "exp": 1}) + "." + b64(claims()) + ".",
        b64({"alg": "RS256", "b64": False, "crit": ["b64"]}) + ".." + b64(b"sig"),
        b64({"alg": "RS256"}) + ".%%%." + b64(b"sig"),
        b64({"alg": "RS256"}) + "." + b64(claims()) + "." + "A" * 8192,
        None, b"e30.e30.", 42,
    ],
    ids=lambda t: repr(t)[:40],
)
def test_malformed(verifier: JwtVerifier, token: Any) -> None:
    assert refused(verifier, token) == "malformed_token"


def test_payload_not_an_object_after_valid_signature(verifier: JwtVerifier, keys: dict[str, SigningKey]) -> None:
    key = keys["RS256"]
    for payload in (b"[1, 2]", b"not json"):
        token = jwt.api_jws.encode(payload, key.private, algorithm="RS256", headers={"kid": key.kid})
        assert refused(verifier, token) == "malformed_token"


def test_unknown_and_missing_kid(tmp_path: Path, verifier: JwtVerifier, keys: dict[str, SigningKey]) -> None:
    rs = keys["RS256"]
    assert refused(verifier, sign(rs, kid="nobody")) == "unknown_kid"
    no_kid = jwt.encode(claims(), rs.private, algorithm="RS256")
    assert refused(verifier, no_kid) == "unknown_kid"  # three keys: a kid is needed
    single = JwtVerifier(settings(write_jwks(tmp_path / "one.json", rs)))
    assert single.verify(no_kid).id == "alice"


# -- JWKS loading and refresh ------------------------------------------------------------


def test_load_refuses_bad_jwks_files(tmp_path: Path, keys: dict[str, SigningKey]) -> None:
    def load_error(path: Path) -> str:
        with pytest.raises(ValueError) as info:
            JwtVerifier(settings(path)).load()
        return str(info.value)

    assert "jwks_file" in load_error(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    assert "not valid JSON" in load_error(tmp_path / "junk.json")
    (tmp_path / "list.json").write_text("[]")
    assert "JWK Set" in load_error(tmp_path / "list.json")
    (tmp_path / "big.json").write_bytes(b" " * (jwt_module.JWKS_MAX_BYTES + 1))
    assert "larger" in load_error(tmp_path / "big.json")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p384 = ec.generate_private_key(ec.SECP384R1())
    unusable = [
        {"kty": "oct", "k": b64(b"k" * 32), "alg": "HS256", "kid": "sym"},
        {**keys["RS256"].jwk, "use": "enc"},
        {**keys["ES256"].jwk, "kid": 7},
        {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(weak.public_key())), "kid": "weak"},
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(p384.public_key())), "alg": "ES256", "kid": "p384"},
        {**keys["RS256"].jwk, "alg": "PS256", "kid": "pss"},
        {**keys["EdDSA"].jwk, "x": "!!"},
        {"kty": "RSA", "alg": ["RS256"]},
        "not a key",
    ]
    assert "no usable" in load_error(write_jwks(tmp_path / "unusable.json", *unusable))
    verifier = JwtVerifier(settings(write_jwks(tmp_path / "mixed.json", *unusable, keys["EdDSA"])))
    verifier.load()
    assert verifier.verify(sign(keys["EdDSA"])).id == "alice"


def test_constructor_does_no_io(tmp_path: Path) -> None:
    fetcher = Fetcher()
    JwtVerifier(settings(jwks_url=URL), fetch=fetcher)
    JwtVerifier(settings(tmp_path / "absent.json"))
    assert fetcher.calls == []


def test_key_rotation_in_file(tmp_path: Path, keys: dict[str, SigningKey], new_rsa: SigningKey) -> None:
    path = write_jwks(tmp_path / "jwks.json", keys["RS256"])
    verifier = JwtVerifier(settings(path, jwks_min_refresh_s=0))
    verifier.load()
    token = sign(new_rsa)
    assert refused(verifier, token) == "unknown_kid"
    write_jwks(path, keys["RS256"], new_rsa)
    assert verifier.verify(token).id == "alice"


def test_file_change_seen_by_periodic_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: dict[str, SigningKey], new_rsa: SigningKey
) -> None:
    monkeypatch.setattr(jwt_module, "_FILE_CHECK_S", 0.0)
    path = write_jwks(tmp_path / "jwks.json", keys["RS256"])
    verifier = JwtVerifier(settings(path))  # jwks_min_refresh_s 10: no forced re-read
    verifier.load()
    old = sign(keys["RS256"])
    assert verifier.verify(old).id == "alice"
    write_jwks(path, new_rsa)  # the old key is withdrawn
    assert verifier.verify(sign(new_rsa)).id == "alice"
    assert refused(verifier, old) == "unknown_kid"


def test_invalid_file_keeps_last_good_keys(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, jwks_path: Path, keys: dict[str, SigningKey]
) -> None:
    monkeypatch.setattr(jwt_module, "_FILE_CHECK_S", 0.0)
    verifier = JwtVerifier(settings(jwks_path, jwks_min_refresh_s=0))
    verifier.load()
    jwks_path.write_text('{"keys": "oops"}')
    with caplog.at_level(logging.WARNING, logger="gateway.auth.jwt"):
        assert verifier.verify(sign(keys["ES256"])).id == "alice"
        assert refused(verifier, sign(keys["ES256"], kid="other")) == "unknown_kid"
        jwks_path.unlink()
        assert verifier.verify(sign(keys["EdDSA"])).id == "alice"
    assert "keeping the previous keys" in caplog.text


def test_url_fetched_lazily_and_rate_limited(keys: dict[str, SigningKey]) -> None:
    fetcher = Fetcher(keys["ES256"])
    verifier = JwtVerifier(settings(jwks_url=URL), fetch=fetcher)
    assert verifier.verify(sign(keys["ES256"])).id == "alice"
    for _ in range(20):
        assert refused(verifier, sign(keys["ES256"], kid=secrets.token_hex(8))) == "unknown_kid"
    assert 1 <= len(fetcher.calls) <= 2
    assert fetcher.calls[0] == (URL, JWKS_TIMEOUT_S)


def test_url_rotation_and_stale_keys(keys: dict[str, SigningKey], new_rsa: SigningKey) -> None:
    fetcher = Fetcher(keys["RS256"])
    verifier = JwtVerifier(settings(jwks_url=URL, jwks_min_refresh_s=0), fetch=fetcher)
    verifier.load()
    assert len(fetcher.calls) == 1
    fetcher.body = json.dumps(jwks(keys["RS256"], new_rsa)).encode()
    assert verifier.verify(sign(new_rsa)).id == "alice"  # unknown kid -> refetch
    assert len(fetcher.calls) == 2
    fetcher.fail = True
    assert refused(verifier, sign(keys["ES256"])) == "unknown_kid"  # refetch fails
    assert verifier.verify(sign(keys["RS256"])).id == "alice"  # the stale set stays in use
    fetcher.fail, fetcher.body = False, b"{}"
    assert refused(verifier, sign(keys["ES256"])) == "unknown_kid"  # a bad document changes nothing
    assert verifier.verify(sign(new_rsa)).id == "alice"


def test_url_unavailable(keys: dict[str, SigningKey]) -> None:
    fetcher = Fetcher(keys["RS256"])
    fetcher.fail = True
    verifier = JwtVerifier(settings(jwks_url=URL), fetch=fetcher)
    with pytest.raises(ValueError, match="jwks_url"):
        verifier.load()
    assert refused(verifier, sign(keys["RS256"])) == "jwks_unavailable"
    assert len(fetcher.calls) == 1  # retried no sooner than jwks_min_refresh_s
    fetcher.body = b"x" * (jwt_module.JWKS_MAX_BYTES + 1)
    fetcher.fail = False
    verifier = JwtVerifier(settings(jwks_url=URL), fetch=fetcher)
    with pytest.raises(ValueError, match="larger"):
        verifier.load()


def test_concurrent_verification(keys: dict[str, SigningKey]) -> None:
    fetcher = Fetcher(*keys.values(), delay_s=0.05)
    verifier = JwtVerifier(settings(jwks_url=URL, hs256_secret=SECRET, jwks_min_refresh_s=0), fetch=fetcher)
    tokens = [sign(k) for k in keys.values()] + [hs256(SECRET)]
    bad = sign(keys["RS256"], kid="rotated-away")
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(20):
                if (n + i) % 5 == 0:
                    assert refused(verifier, bad) == "unknown_kid"
                else:
                    assert verifier.verify(tokens[(n + i) % len(tokens)]).tenant == "acme"
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert fetcher.max_active == 1


# -- the default fetch against a real HTTP server ---------------------------------------------


@pytest.fixture
def jwks_server(keys: dict[str, SigningKey]) -> Iterator[tuple[str, Callable[[int, bytes], None]]]:
    """A local HTTP server answering every GET with (status, body), changeable by the test."""
    state = {"status": 200, "body": json.dumps(jwks(*keys.values())).encode()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server names it so
            self.send_response(state["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(state["body"])))
            if state["status"] == 302:
                self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.end_headers()
            self.wfile.write(state["body"])

        def log_message(self, format: str, *args: Any) -> None:  # the base class signature
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def set_response(status: int, body: bytes) -> None:
        state.update(status=status, body=body)

    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", set_response
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_default_fetch_over_http(
    jwks_server: tuple[str, Callable[[int, bytes], None]], keys: dict[str, SigningKey]
) -> None:
    url, set_response = jwks_server
    verifier = JwtVerifier(settings(jwks_url=url))
    verifier.load()
    for key in keys.values():
        assert verifier.verify(sign(key)).id == "alice"
    for status, body, message in [
        (404, b"{}", "404"),
        (302, b"", "302"),
        (200, b" " * (jwt_module.JWKS_MAX_BYTES + 10), "larger"),
        (200, b"<html>", "JSON"),
    ]:
        set_response(status, body)
        with pytest.raises(ValueError, match=message):
            JwtVerifier(settings(jwks_url=url)).load()


# -- verified-token cache ------------------------------------------------------------------


def test_a_verified_token_is_reused_without_a_signature_check(
    monkeypatch: pytest.MonkeyPatch, verifier: JwtVerifier, keys: dict[str, SigningKey]
) -> None:
    token = sign(keys["ES256"])
    first = verifier.verify(token)
    monkeypatch.setattr(verifier, "_decode", lambda *a: pytest.fail("signature checked again"))
    assert verifier.verify(token) == first


def claims_exp(token: str) -> int:
    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


def test_a_cached_token_still_expires(jwks_path: Path, keys: dict[str, SigningKey]) -> None:
    verifier = JwtVerifier(settings(jwks_path, leeway_s=0))
    verifier.load()
    token = sign(keys["RS256"], claims(exp=int(time.time()) + 2))
    assert verifier.verify(token).id == "alice"
    wait_until(lambda: time.time() > claims_exp(token) + 0.01, timeout_s=5, what="exp passed")
    assert refused(verifier, token, TokenExpired) == "expired"


def test_a_cached_token_of_a_withdrawn_key_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: dict[str, SigningKey], new_rsa: SigningKey
) -> None:
    monkeypatch.setattr(jwt_module, "_FILE_CHECK_S", 0.0)
    path = write_jwks(tmp_path / "jwks.json", keys["RS256"])
    verifier = JwtVerifier(settings(path))
    verifier.load()
    token = sign(keys["RS256"])
    assert verifier.verify(token).id == "alice"
    write_jwks(path, new_rsa)
    assert refused(verifier, token) == "unknown_kid"  # the periodic check runs before the cache


def test_the_cache_can_be_off_and_is_bounded(
    monkeypatch: pytest.MonkeyPatch, jwks_path: Path, keys: dict[str, SigningKey]
) -> None:
    off = JwtVerifier(settings(jwks_path, cache_entries=0))
    off.load()
    token = sign(keys["EdDSA"])
    off.verify(token)
    calls = []
    monkeypatch.setattr(off, "_decode", lambda *a: calls.append(a) or claims())
    off.verify(token)
    assert len(calls) == 1

    small = JwtVerifier(settings(jwks_path, cache_entries=2))
    small.load()
    for n in range(5):
        small.verify(sign(keys["ES256"], claims(sub=f"user{n}")))
    assert len(small._verified) == 2
