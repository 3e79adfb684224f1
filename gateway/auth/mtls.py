"""mTLS identities: a client certificate the TLS layer verified, mapped to a principal.

The TLS layer (gRPC's handshake, or the HTTPS context with ``tls.client_ca_file``) checks
the chain; this module only reads who the certificate names and finds the configured
:class:`gateway.config.ClientCertIdentity` for it. Subjects are RFC 4514 strings as
``cryptography`` prints them; SANs are ``dns:``, ``uri:`` or ``email:`` + value.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.config import ClientCertIdentity
from gateway.errors import Unauthenticated
from gateway.models import Principal

__all__ = ["ClientCertMap", "ClientCertificate", "parse_client_certificate"]


@dataclass(frozen=True)
class ClientCertificate:
    """What a client certificate names.

    Attributes:
        subject: RFC 4514 subject, e.g. ``CN=ci-bot,O=acme``.
        sans: subject alternative names as ``dns:…``, ``uri:…``, ``email:…``.
        sha256: hex SHA-256 of the DER certificate (its fingerprint).
    """

    subject: str
    sans: tuple[str, ...]
    sha256: str


@functools.lru_cache(maxsize=1024)
def parse_client_certificate(data: bytes) -> ClientCertificate:
    """Parse a PEM or DER certificate (cached: one client sends the same one on every call).

    Raises:
        Unauthenticated (1001, reason ``bad_client_certificate``): not a certificate.
    """
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
        subject = cert.subject.rfc4514_string()
    except ValueError:
        raise Unauthenticated("unreadable client certificate", details={"reason": "bad_client_certificate"}) from None
    sans: list[str] = []
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = None
    if names is not None:
        for prefix, kind in (("dns", x509.DNSName), ("uri", x509.UniformResourceIdentifier),
                             ("email", x509.RFC822Name)):
            sans += [f"{prefix}:{value}" for value in names.get_values_for_type(kind)]
    return ClientCertificate(subject, tuple(sans), cert.fingerprint(hashes.SHA256()).hex())


class ClientCertMap:
    """``auth.client_certs``: finds the principal a verified client certificate stands for.
    A subject match wins over a SAN match; among SANs the first configured entry wins."""

    def __init__(self, identities: Iterable[ClientCertIdentity]) -> None:
        self._by_subject: dict[str, ClientCertIdentity] = {}
        self._by_san: dict[str, ClientCertIdentity] = {}
        for identity in identities:
            if identity.subject is not None:
                self._by_subject.setdefault(identity.subject, identity)
            elif identity.san is not None:
                self._by_san.setdefault(identity.san, identity)

    def principal_for(self, cert: ClientCertificate) -> Principal:
        """The mapped principal (auth_scheme ``mtls``, credential = the certificate's fingerprint).

        Raises:
            Unauthenticated (1001, reason ``unmapped_client_certificate``): a valid
                certificate that no configured identity names.
        """
        identity = self._by_subject.get(cert.subject)
        if identity is None:
            identity = next((self._by_san[s] for s in cert.sans if s in self._by_san), None)
        if identity is None:
            raise Unauthenticated(
                "the client certificate is not mapped to a principal",
                details={"reason": "unmapped_client_certificate"},
            )
        return identity.as_principal("mtls", cert.sha256)
