"""JWT bearer tokens (RFC 7519): signature and claim checks with PyJWT, keys from a JWKS.

A token is a JWS in compact serialization (RFC 7515 section 7.1): three base64url segments,
header.payload.signature. Asymmetric tokens (RS256, ES256, EdDSA) are verified against the
JWK Set (RFC 7517 section 5) in ``auth.jwt.jwks_file`` or fetched from ``auth.jwt.jwks_url``;
HS256 tokens only against ``auth.jwt.hs256_secret``. Following RFC 8725 (JWT best current
practice), the header only *names* a key: the gateway picks the key by ``kid`` from its own
set, the algorithm must be allowed by config *and* be the one the JWK is for, ``alg: none``
is never accepted, and header parameters that carry keys or key URLs (``jwk``, ``jku``,
``x5u``, ``x5c``) are ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from gateway.config import NAME_PATTERN, JwtSettings
from gateway.errors import TokenExpired, Unauthenticated
from gateway.models import Principal

__all__ = ["JWKS_MAX_BYTES", "JWKS_TIMEOUT_S", "MAX_TOKEN_CHARS", "JwtVerifier", "fetch_jwks_url"]

log = logging.getLogger(__name__)

#: Longest token accepted, characters (longer ones are refused before any parsing).
MAX_TOKEN_CHARS = 8192
#: Largest JWKS document read from the file or URL, bytes (1 MiB).
JWKS_MAX_BYTES = 1 << 20
#: Time limit of one JWKS fetch, seconds.
JWKS_TIMEOUT_S = 5.0

_FILE_CHECK_S = 1.0  # how often the JWKS file is stat()ed for changes, seconds
_MAX_ITEMS = 64  # roles / scopes per token
_NAME_RE = re.compile(NAME_PATTERN)
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")  # RFC 6749 section 3.3, capped at 128
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")  # RFC 7515 section 7.1
_ASYMMETRIC = frozenset({"RS256", "ES256", "EdDSA"})  # algorithms a JWKS key may serve


def fetch_jwks_url(url: str, timeout_s: float) -> bytes:
    """GET ``url`` and return the body (the default ``fetch`` of :class:`JwtVerifier`).

    Redirects are not followed. Reading stops past :data:`JWKS_MAX_BYTES` (after content
    decoding) and past ``timeout_s`` in total, seconds (httpx's own timeout is per read).

    Raises:
        ValueError: the status is not 200, or the body is too large or too slow.
        httpx.HTTPError: the connection or request failed.
    """
    deadline = time.monotonic() + timeout_s
    with httpx.stream("GET", url, timeout=timeout_s, follow_redirects=False) as response:
        if response.status_code != 200:
            raise ValueError(f"HTTP status {response.status_code}")
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > JWKS_MAX_BYTES:
                raise ValueError(f"body larger than {JWKS_MAX_BYTES} bytes")
            if time.monotonic() > deadline:
                raise ValueError(f"body not received within {timeout_s:g} s")
    return bytes(body)


@dataclass(frozen=True)
class _KeySet:
    """The usable signature keys of one JWKS: by ``kid``, and all of them (for a kid-less token)."""

    by_kid: dict[str, jwt.PyJWK]
    keys: tuple[jwt.PyJWK, ...]

    def find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return self.keys[0] if len(self.keys) == 1 else None
        return self.by_kid.get(kid)


def _parse_jwks(body: bytes) -> _KeySet:
    """The usable keys of a JWK Set (RFC 7517 section 5): public RSA, EC P-256 and Ed25519
    keys for signatures. Keys with ``use`` other than ``sig``, symmetric (``oct``) keys, keys
    PyJWT cannot load, keys whose algorithm (``alg``, or what ``kty``/``crv`` imply) is not
    RS256 / ES256 / EdDSA or does not fit the key (e.g. ES256 on P-384), and RSA keys under
    2048 bits are skipped.

    Raises:
        ValueError: too large, not JSON, not ``{"keys": [...]}``, or no usable key.
    """
    if len(body) > JWKS_MAX_BYTES:
        raise ValueError(f"larger than {JWKS_MAX_BYTES} bytes")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ValueError("not valid JSON") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JWK Set (an object with a "keys" array)')
    by_kid: dict[str, jwt.PyJWK] = {}
    keys: list[jwt.PyJWK] = []
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or jwk.get("kty") == "oct":
            continue
        kid = jwk.get("kid")
        if kid is not None and (not isinstance(kid, str) or kid in by_kid):
            log.warning("JWKS: skipping a key with a non-string or duplicate kid")
            continue
        try:
            key = jwt.PyJWK(jwk)
            if key.algorithm_name not in _ASYMMETRIC:
                continue
            key.Algorithm.prepare_key(key.key)  # curve / key family must fit the algorithm
            if key.Algorithm.check_key_length(key.key):
                log.warning("JWKS: skipping key %r: RSA key shorter than 2048 bits", kid)
                continue
        except (jwt.PyJWTError, TypeError, ValueError) as exc:
            log.warning("JWKS: skipping unusable key %r: %s", kid, exc)
            continue
        keys.append(key)
        if kid is not None:
            by_kid[kid] = key
    if not keys:
        raise ValueError("no usable signature key (RS256 / ES256 / EdDSA)")
    return _KeySet(by_kid, tuple(keys))


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _read_capped(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(JWKS_MAX_BYTES + 1)


class _BadNumericDate(jwt.InvalidTokenError):
    """exp / nbf / iat is not a JSON number (RFC 7519 section 2, NumericDate)."""

    def __init__(self, claim: str) -> None:
        super().__init__(claim)
        self.claim = claim


class _Decoder(jwt.PyJWT):
    """PyJWT with one step added between the signature and the claim checks: claims whose
    value is null count as absent (as PyJWT's ``require`` already treats them), and ``exp``,
    ``nbf`` and ``iat`` must be JSON numbers (RFC 7519 section 2, NumericDate; PyJWT itself
    passes them through ``int()``, so it takes ``"4102444800"`` and ``true``)."""

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        payload = {k: v for k, v in super()._decode_payload(decoded).items() if v is not None}
        for claim in ("exp", "nbf", "iat"):
            value = payload.get(claim, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise _BadNumericDate(claim)
        return payload


_DECODER = _Decoder()


def _fail(reason: str, message: str) -> Unauthenticated:
    return Unauthenticated(message, details={"reason": reason})


def _header(token: str) -> dict[str, Any]:
    """The JOSE header (RFC 7515 section 4) of a compact token, decoded once here; PyJWT's
    ``get_unverified_header`` would parse and validate the whole token a second time.

    Raises:
        Unauthenticated (1001, ``malformed_token``): not base64url JSON object.
    """
    try:
        header = json.loads(jwt.utils.base64url_decode(token[: token.index(".")]))
    except (ValueError, TypeError, RecursionError):
        raise _fail("malformed_token", "malformed bearer token") from None
    # No JWS extension is understood, so a critical one must be refused (RFC 7515 4.1.11).
    if not isinstance(header, dict) or "crit" in header or not isinstance(header.get("kid", ""), str):
        raise _fail("malformed_token", "malformed bearer token")
    return header


class JwtVerifier:
    """Verifies bearer JWTs and maps them to a :class:`~gateway.models.Principal`.

    Claims (names from settings): ``principal_claim`` (default ``sub``) and ``tenant_claim``
    (``tenant``) are required strings matching the config name pattern; ``roles_claim``
    (``roles``) is an optional list of such names; ``scopes_claim`` (``scope``) is an optional
    space-separated string (RFC 8693 section 4.2) or list, with the ``scp`` claim (either form)
    used when it is absent. Scope tokens follow RFC 6749 section 3.3, at most 128 characters;
    at most 64 roles and 64 scopes.

    Keys: the JWKS file is stat()ed at most once a second and re-read when its
    (mtime_ns, size, inode) changes; a fetched JWKS URL is refetched when older than
    ``jwks_cache_s``. A token whose ``kid`` is not in the set forces a re-read / refetch, at
    most once per ``jwks_min_refresh_s``. A JWKS that turns invalid or unreachable keeps the
    last good set in use (with a logged warning). One thread fetches at a time; the others
    go on with the current set, except that threads needing a key the set lacks wait for the
    fetch in progress.

    Verified tokens are remembered by SHA-256 (``cache_entries``, oldest out first): a
    client's next call with the same token skips parsing and the signature check, as long as
    its ``exp`` / ``nbf`` (with leeway) still hold and the key set it was checked against is
    still the current one (the periodic JWKS check runs first, so a withdrawn key ends its
    tokens within a second for a file, ``jwks_cache_s`` for a URL). Refusals are not cached.

    ``fetch(url, timeout_s) -> bytes`` gets the JWKS URL's body (default
    :func:`fetch_jwks_url`); it raises on any failure. The constructor does no I/O.

    Raises:
        ValueError: ``hs256_secret`` is a PEM or SSH key (PyJWT refuses those as HMAC keys).
    """

    def __init__(self, settings: JwtSettings, *, fetch: Callable[[str, float], bytes] | None = None) -> None:
        self._settings = settings
        self._fetch = fetch or fetch_jwks_url
        self._secret: bytes | None = None
        if settings.hs256_secret is not None:
            self._secret = settings.hs256_secret.get_secret_value().encode()
            try:
                jwt.get_algorithm_by_name("HS256").prepare_key(self._secret)
            except jwt.InvalidKeyError as exc:
                raise ValueError(f"auth.jwt.hs256_secret: {exc}") from None
        self._jwks = jwks = settings.jwks_file is not None or settings.jwks_url is not None
        self._allowed = frozenset(settings.algorithms if jwks else ()) | ({"HS256"} if self._secret else set())
        self._lock = threading.Lock()  # held by the one thread reading / fetching the JWKS
        self._keys: _KeySet | None = None
        self._attempted_at = -math.inf  # monotonic time of the last read / fetch attempt
        self._loaded_at = -math.inf  # monotonic time of the last successful fetch (URL)
        self._checked_at = -math.inf  # monotonic time of the last stat() (file)
        self._file_sig: tuple[int, int, int] | None = None  # of the last file read, good or bad
        # Verified tokens by SHA-256: (principal, valid from, valid until (unix s), key set used).
        self._cache_entries = settings.cache_entries
        self._cache_lock = threading.Lock()
        self._verified: dict[str, tuple[Principal, float, float, _KeySet | None]] = {}

    # -- keys ---------------------------------------------------------------------------

    def load(self) -> None:
        """Load the JWKS now (start-up); a no-op when only HS256 is configured.

        Raises:
            ValueError: the JWKS file is missing, unreadable or has no usable key; or the JWKS
                URL cannot be fetched or has no usable key (the caller may start anyway: the
                URL is then retried when a token needs it).
        """
        settings = self._settings
        with self._lock:
            self._attempted_at = time.monotonic()
            if settings.jwks_file is not None:
                self._file_sig = _file_signature(settings.jwks_file)
                try:
                    keys = _parse_jwks(_read_capped(settings.jwks_file))
                except (OSError, ValueError) as exc:
                    raise ValueError(f"auth.jwt.jwks_file {settings.jwks_file}: {exc}") from None
            elif settings.jwks_url is not None:
                try:
                    keys = _parse_jwks(self._fetch(settings.jwks_url, JWKS_TIMEOUT_S))
                except Exception as exc:  # any fetch failure means "not loaded"
                    raise ValueError(f"auth.jwt.jwks_url {settings.jwks_url}: {exc}") from None
                self._loaded_at = time.monotonic()
            else:
                return
            self._keys = keys
            self._checked_at = time.monotonic()

    def _refresh_locked(self, *, forced: bool) -> None:
        """Re-read / refetch the JWKS if due; the caller holds the lock.

        Periodic (``forced`` False): the file when its stat signature changed (checked at most
        once a second); the URL when the last good fetch is ``jwks_cache_s`` old and the last
        attempt ``jwks_min_refresh_s``. Forced (a token's key is missing): either one, when the
        last attempt is ``jwks_min_refresh_s`` old.
        """
        settings = self._settings
        now = time.monotonic()
        if forced and now - self._attempted_at < settings.jwks_min_refresh_s:
            return
        if settings.jwks_file is not None:
            if not forced and now - self._checked_at < _FILE_CHECK_S:
                return
            self._checked_at = now
            sig = _file_signature(settings.jwks_file)
            if not forced and sig == self._file_sig:
                return
            self._attempted_at, self._file_sig = now, sig
            try:
                self._keys = _parse_jwks(_read_capped(settings.jwks_file))
            except (OSError, ValueError) as exc:
                log.warning("JWKS file %s unusable, keeping the previous keys: %s", settings.jwks_file, exc)
        elif settings.jwks_url is not None:
            if not forced and (
                now - self._loaded_at < settings.jwks_cache_s
                or now - self._attempted_at < settings.jwks_min_refresh_s
            ):
                return
            self._attempted_at = now
            try:
                self._keys = _parse_jwks(self._fetch(settings.jwks_url, JWKS_TIMEOUT_S))
                self._loaded_at = time.monotonic()
            except Exception as exc:  # the stale set (if any) stays in use
                log.warning("JWKS URL %s unusable, keeping the previous keys: %s", settings.jwks_url, exc)

    def _key_for(self, kid: str | None) -> jwt.PyJWK:
        """The JWK for a token's ``kid`` (None: the only key), refreshing the set if due.

        Raises:
            Unauthenticated: ``unknown_kid``, or ``jwks_unavailable`` (URL never fetched).
        """
        keys = self._keys
        key = keys.find(kid) if keys is not None else None
        if key is None:
            with self._lock:  # wait for a fetch in progress, then look again
                if self._keys is keys:
                    self._refresh_locked(forced=True)
                keys = self._keys
            key = keys.find(kid) if keys is not None else None
        if key is not None:
            return key
        if keys is None:
            raise _fail("jwks_unavailable", "signing keys unavailable")
        raise _fail("unknown_kid", "unknown signing key")

    # -- tokens -------------------------------------------------------------------------

    def verify(self, token: str, digest: str | None = None) -> Principal:
        """The principal a bearer token stands for (``auth_scheme`` ``bearer``,
        ``credential_sha256`` the token's SHA-256). Thread-safe.
        ``digest`` is the hex SHA-256 of ``token`` when the caller has it already (the
        verified-token cache's key).

        Checks, cheapest first: shape (three base64url segments, at most
        :data:`MAX_TOKEN_CHARS`), header ``alg`` allowed, key by ``kid`` and key algorithm =
        token algorithm, then signature, registered claims (``exp`` ``iss`` ``aud`` required;
        ``exp`` / ``nbf`` / ``iat`` JSON numbers, checked with ``leeway_s`` seconds), then the
        principal claims. A claim whose value is JSON null counts as absent.

        Raises:
            TokenExpired (1002): ``exp`` passed (details.reason ``expired``).
            Unauthenticated (1001): details.reason ``malformed_token``, ``alg_not_allowed``,
                ``unknown_kid``, ``key_alg_mismatch``, ``bad_signature``, ``not_yet_valid``,
                ``wrong_audience``, ``wrong_issuer``, ``missing_claim``, ``bad_claim`` or
                ``jwks_unavailable``. Messages never quote the token.
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not _COMPACT_JWS.fullmatch(token):
            raise _fail("malformed_token", "malformed bearer token")
        if self._jwks and self._lock.acquire(blocking=False):  # periodic refresh; busy = someone else does it
            try:
                self._refresh_locked(forced=False)
            finally:
                self._lock.release()
        if digest is None:
            digest = hashlib.sha256(token.encode(errors="surrogateescape")).hexdigest()
        cached = self._cached(digest)
        if cached is not None:
            return cached
        header = _header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or "b64" in header:  # RFC 7797 unencoded payloads: not for JWTs
            raise _fail("malformed_token", "malformed bearer token")
        if alg.lower() == "none" or alg not in self._allowed:
            raise _fail("alg_not_allowed", "token algorithm not allowed")
        key: jwt.PyJWK | bytes
        if alg == "HS256":
            key = self._secret or b""  # HS256 is only allowed with a secret
        else:
            key = self._key_for(header.get("kid"))
            if key.algorithm_name != alg:
                raise _fail("key_alg_mismatch", "token algorithm does not match its key")
        claims = self._decode(token, key, alg)
        principal = self._principal(claims, digest)
        self._remember(digest, principal, claims)
        return principal

    def _cached(self, digest: str) -> Principal | None:
        """The principal of a token verified before, while its ``exp`` / ``nbf`` still hold and
        the key set it was verified with is the current one; else None (verify again)."""
        entry = self._verified.get(digest)
        if entry is None:
            return None
        principal, not_before, expires, keys = entry
        now = time.time()
        if keys is not self._keys or now > expires or now < not_before:
            with self._cache_lock:
                self._verified.pop(digest, None)
            return None
        return principal

    def _remember(self, digest: str, principal: Principal, claims: dict[str, Any]) -> None:
        if self._cache_entries <= 0:
            return
        leeway = self._settings.leeway_s
        not_before = max(claims.get("nbf", -math.inf), claims.get("iat", -math.inf)) - leeway
        with self._cache_lock:
            if len(self._verified) >= self._cache_entries:
                del self._verified[next(iter(self._verified))]  # the oldest
            self._verified[digest] = (principal, not_before, claims["exp"] + leeway, self._keys)

    def _decode(self, token: str, key: jwt.PyJWK | bytes, alg: str) -> dict[str, Any]:
        """Signature and registered claims (PyJWT), PyJWT's exceptions mapped to reasons."""
        settings = self._settings
        try:
            return _DECODER.decode(
                token,
                key,
                algorithms=[alg],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("token expired", details={"reason": "expired"}) from None
        except jwt.ImmatureSignatureError:
            raise _fail("not_yet_valid", "token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise _fail("wrong_audience", "token audience not accepted") from None
        except jwt.InvalidIssuerError:
            raise _fail("wrong_issuer", "token issuer not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _fail("missing_claim", f"token lacks the {exc.claim!r} claim") from None
        except _BadNumericDate as exc:
            raise _fail("bad_claim", f"token claim {exc.claim!r} is not a number") from None
        except (InvalidSubjectError, InvalidJTIError, jwt.InvalidIssuedAtError):
            raise _fail("bad_claim", "token has an invalid registered claim") from None
        except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
            raise _fail("bad_signature", "token signature does not verify") from None
        except jwt.InvalidAlgorithmError:
            raise _fail("key_alg_mismatch", "token algorithm does not match its key") from None
        except jwt.PyJWTError:  # DecodeError: payload not a JSON object, unsupported crit, ...
            raise _fail("malformed_token", "malformed bearer token") from None

    def _principal(self, claims: dict[str, Any], digest: str) -> Principal:
        settings = self._settings
        ident = {}
        for name in (settings.principal_claim, settings.tenant_claim):
            value = claims.get(name)
            if value is None:
                raise _fail("missing_claim", f"token lacks the {name!r} claim")
            if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
                raise _fail("bad_claim", f"token claim {name!r} is not a valid name")
            ident[name] = value
        roles = claims.get(settings.roles_claim)
        if roles is None:
            roles = []
        if (
            not isinstance(roles, list)
            or len(roles) > _MAX_ITEMS
            or not all(isinstance(r, str) and _NAME_RE.fullmatch(r) for r in roles)
        ):
            raise _fail("bad_claim", f"token claim {settings.roles_claim!r} is not a list of role names")
        scope_claim = settings.scopes_claim
        if claims.get(scope_claim) is None and "scp" in claims:
            scope_claim = "scp"
        scopes = claims.get(scope_claim)
        if scopes is None:
            scopes = []
        elif isinstance(scopes, str):
            scopes = [s for s in scopes.split(" ") if s]
        if (
            not isinstance(scopes, list)
            or len(scopes) > _MAX_ITEMS
            or not all(isinstance(s, str) and _SCOPE_TOKEN.fullmatch(s) for s in scopes)
        ):
            raise _fail("bad_claim", f"token claim {scope_claim!r} is not a scope string or list")
        return Principal(
            id=ident[settings.principal_claim],
            tenant=ident[settings.tenant_claim],
            roles=tuple(dict.fromkeys(roles)),
            scopes=tuple(dict.fromkeys(scopes)),
            auth_scheme="bearer",
            credential_sha256=digest,
        )
