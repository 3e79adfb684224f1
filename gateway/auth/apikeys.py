"""API keys: ``mgw_`` + 43 base64url characters (32 random bytes), stored only as hashes.

A key is looked up by the SHA-256 of the whole key string (``sha256:<hex>`` in config), so
the gateway never holds a key in clear. The keys carry 256 random bits, so a fast hash is
the right one (a slow password hash would only cost every request time; there is nothing
to brute-force).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable

from gateway.config import ApiKeyEntry
from gateway.errors import TokenExpired, Unauthenticated
from gateway.models import Principal

__all__ = ["API_KEY_PREFIX", "ApiKeyRing", "hash_api_key", "new_api_key"]

API_KEY_PREFIX = "mgw_"
_KEY_LENGTH = len(API_KEY_PREFIX) + 43


def new_api_key() -> str:
    """A fresh key: ``mgw_`` + 43 base64url characters (32 bytes from ``secrets``)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The config form of a key's hash: ``sha256:`` + 64 hex digits of SHA-256(key)."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class ApiKeyRing:
    """The configured keys, by hash. Replaced as a whole on a config reload (see
    :class:`gateway.auth.Authenticator`), so a removed or revoked key stops working at once."""

    def __init__(self, entries: Iterable[ApiKeyEntry]) -> None:
        # Each key's principal is built once; its credential_sha256 is the key's hash.
        self._by_hash = {e.hash: (e, e.as_principal("bearer", e.hash.removeprefix("sha256:"))) for e in entries}

    def verify(self, key: str, digest: str | None = None) -> Principal:
        """The principal bound to ``key`` (auth_scheme ``bearer``, ``credential_sha256`` the
        key's hash); ``digest`` is the hex
        SHA-256 of ``key`` when the caller has it already.

        Raises:
            Unauthenticated (1001): malformed or unknown key (details.reason
                ``malformed_api_key`` / ``unknown_api_key``), or a revoked one (``revoked_api_key``).
            TokenExpired (1002): the key's ``expires_at`` has passed (``expired``).
        """
        if len(key) != _KEY_LENGTH or not key.startswith(API_KEY_PREFIX):
            raise Unauthenticated("malformed API key", details={"reason": "malformed_api_key"})
        found = self._by_hash.get("sha256:" + digest if digest is not None else hash_api_key(key))
        if found is None:
            raise Unauthenticated("unknown API key", details={"reason": "unknown_api_key"})
        entry, principal = found
        if entry.revoked:
            raise Unauthenticated("API key revoked", details={"reason": "revoked_api_key"})
        if entry.expires_at is not None and time.time() >= entry.expires_at:
            raise TokenExpired("API key expired", details={"reason": "expired"})
        return principal
