"""Who is calling: credentials in, a :class:`~gateway.models.Principal` out.

Edges collect :class:`Credentials` from the wire (the ``authorization`` header or gRPC
metadata, and the client certificate the TLS layer verified) and the service layer calls
:meth:`Authenticator.authenticate`. The order:

1. With ``tls.client_ca_file`` set, a call without a verified client certificate is
   refused (gRPC refuses it in the handshake already; HTTPS asks for one and refuses here).
2. ``Authorization: Bearer <credential>``: an API key (``mgw_…``, :mod:`.apikeys`) or a JWT
   (:mod:`.jwt`). Any other scheme is refused.
3. Else a client certificate: the principal it maps to (:mod:`.mtls`).
4. Else, only in dev mode (loopback binds, see ``gateway.config``): :data:`DEV_PRINCIPAL`.

A failure raises :class:`AuthFailure`, which carries the wire error (1001, or 1002 for an
expired credential) with a machine-readable ``details.reason``, the scheme presented and the
SHA-256 of the credential for the audit trail; the credential itself goes nowhere.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass

from gateway.auth.apikeys import API_KEY_PREFIX, ApiKeyRing
from gateway.auth.jwt import JwtVerifier
from gateway.auth.mtls import ClientCertMap, parse_client_certificate
from gateway.config import AuthSettings, TlsSettings
from gateway.errors import GatewayError, TokenExpired, Unauthenticated
from gateway.models import SCOPES, Principal

__all__ = ["AuthFailure", "Authenticator", "Credentials", "DEV_PRINCIPAL"]

log = logging.getLogger(__name__)

#: The caller without credentials in dev mode: id ``anonymous``, tenant ``default``,
#: role ``user``, every scope.
DEV_PRINCIPAL = Principal(id="anonymous", tenant="default", roles=("user",), scopes=SCOPES, auth_scheme="none")

_MAX_AUTHORIZATION_CHARS = 16384


@dataclass(frozen=True)
class Credentials:
    """What a call presented.

    Attributes:
        authorization: the ``authorization`` header / metadata value, as sent.
        client_cert: the client certificate (PEM or DER) the TLS layer verified, if any.
    """

    authorization: str | None = None
    client_cert: bytes | None = None


class AuthFailure(Exception):
    """Authentication failed.

    Attributes:
        error: what the caller gets: :class:`Unauthenticated` (1001) or
            :class:`TokenExpired` (1002), ``details.reason`` saying why.
        scheme: the scheme presented: ``none|bearer|mtls|other``.
        credential_sha256: hex SHA-256 of the presented credential, or None.
    """

    def __init__(self, error: GatewayError, scheme: str, credential_sha256: str | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.scheme = scheme
        self.credential_sha256 = credential_sha256

    @property
    def reason(self) -> str:
        """Why, e.g. ``expired``, ``unknown_api_key``, ``missing_credentials``."""
        return str(self.error.details.get("reason", "invalid_credentials"))


class _Sources:
    """The credential checkers built from one ``auth`` section (swapped whole on reload)."""

    def __init__(self, settings: AuthSettings, jwt: JwtVerifier | None) -> None:
        self.settings = settings
        self.jwt = jwt
        self.api_keys = ApiKeyRing(settings.api_keys)
        self.client_certs = ClientCertMap(settings.client_certs)


class Authenticator:
    """Verifies credentials against the ``auth`` settings. Thread-safe; :meth:`update`
    swaps in a reloaded ``auth`` section (revoked API keys stop working at once).

    Args:
        auth: the ``auth`` section.
        tls: the ``tls`` section (``client_ca_file`` makes client certificates mandatory).
    """

    def __init__(self, auth: AuthSettings, tls: TlsSettings) -> None:
        """Raises ValueError when ``auth.jwt.hs256_secret`` is a PEM or SSH key."""
        self._require_client_cert = tls.client_ca_file is not None
        self._lock = threading.Lock()
        self._sources = _Sources(auth, JwtVerifier(auth.jwt) if auth.jwt.enabled else None)

    @property
    def dev_mode(self) -> bool:
        """Whether calls without credentials are the development principal."""
        return self._sources.settings.dev_mode

    def load(self) -> None:
        """Load what start-up needs (the JWKS).

        Raises:
            ValueError: the JWKS cannot be loaded (file missing or invalid, URL unreachable).
        """
        if self._sources.jwt is not None:
            self._sources.jwt.load()

    def update(self, auth: AuthSettings) -> None:
        """Use a reloaded ``auth`` section from now on. The JWT verifier (and its JWKS
        cache) is kept when the ``jwt`` part did not change. ``dev_mode`` cannot change
        at run time (it decides what the gateway may bind); a change is ignored with a
        warning.

        Raises:
            ValueError: the new ``jwt`` section is unusable (the running one stays).
        """
        with self._lock:
            old = self._sources
            if auth.dev_mode != old.settings.dev_mode:
                log.warning("auth.dev_mode changed in the config file: restart the gateway to apply it")
                auth = auth.model_copy(update={"dev_mode": old.settings.dev_mode})
            jwt = old.jwt if auth.jwt == old.settings.jwt else (JwtVerifier(auth.jwt) if auth.jwt.enabled else None)
            self._sources = _Sources(auth, jwt)

    def authenticate(self, credentials: Credentials) -> Principal:
        """The principal ``credentials`` prove (see the module docstring for the order).

        Raises:
            AuthFailure: missing, malformed, unknown, revoked or expired credentials.
        """
        sources = self._sources
        cert = credentials.client_cert
        if self._require_client_cert and cert is None:
            raise AuthFailure(
                Unauthenticated("a client certificate is required", details={"reason": "client_certificate_required"}),
                "none" if credentials.authorization is None else "bearer",
                None,
            )
        if credentials.authorization is not None:
            return self._bearer(sources, credentials.authorization)
        if cert is not None:
            parsed = None
            try:
                parsed = parse_client_certificate(cert)
                return sources.client_certs.principal_for(parsed)
            except Unauthenticated as exc:  # named by its fingerprint (DER), whether sent as PEM or DER
                digest = parsed.sha256 if parsed is not None else hashlib.sha256(cert).hexdigest()
                raise AuthFailure(exc, "mtls", digest) from None
        if sources.settings.dev_mode:
            return DEV_PRINCIPAL
        raise AuthFailure(
            Unauthenticated("credentials required: Authorization: Bearer <token or API key>",
                            details={"reason": "missing_credentials"}),
            "none",
            None,
        )

    @staticmethod
    def _bearer(sources: _Sources, authorization: str) -> Principal:
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        digest = hashlib.sha256(credential.encode(errors="surrogateescape")).hexdigest() if credential else None
        if scheme.lower() != "bearer":
            raise AuthFailure(
                Unauthenticated("unsupported authorization scheme; use Bearer",
                                details={"reason": "unsupported_scheme"}),
                "other",
                hashlib.sha256(authorization.encode(errors="surrogateescape")).hexdigest(),
            )
        if not credential or len(authorization) > _MAX_AUTHORIZATION_CHARS:
            raise AuthFailure(
                Unauthenticated("empty or oversized bearer credential", details={"reason": "malformed_token"}),
                "bearer",
                digest,
            )
        try:
            if credential.startswith(API_KEY_PREFIX):
                return sources.api_keys.verify(credential, digest)
            if sources.jwt is None:
                raise Unauthenticated("bearer tokens (JWT) are not accepted by this gateway",
                                      details={"reason": "jwt_not_configured"})
            return sources.jwt.verify(credential, digest)
        except (Unauthenticated, TokenExpired) as exc:
            raise AuthFailure(exc, "bearer", digest) from None
