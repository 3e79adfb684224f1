"""TLS for both ports from PEM files (``tls`` settings), re-read when they change.

One :class:`TlsFiles` serves both edges. Each new connection asks it for the current
material, and at most every ``tls.reload_check_s`` seconds that check stats the files; new
files are loaded into a fresh ``ssl.SSLContext`` first, so a half-written or mismatched
pair is refused (logged) and the previous certificate stays in use.

- gRPC: :meth:`TlsFiles.grpc_credentials` are ``grpc.dynamic_ssl_server_credentials``
  whose fetcher gRPC calls before each handshake; with a client CA the handshake requires a client certificate
  from it (grpcio offers no "ask but do not require" mode).
- HTTPS: :meth:`TlsFiles.ssl_context` is the listening context; its ``sni_callback`` (which
  OpenSSL calls on every ClientHello, with or without SNI) switches each connection to the
  current context. With a client CA the server asks for a certificate and verifies any
  that is sent (``CERT_OPTIONAL``), so health probes without one still connect; API calls
  without one are refused by the authenticator (401/1001).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from gateway.config import TlsSettings

__all__ = ["TlsFiles", "TlsMaterial"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsMaterial:
    """One generation of PEM bytes: server chain, its key, the client CA bundle (or None),
    and the ``ssl.SSLContext`` built (and so validated) from them."""

    cert_chain: bytes
    key: bytes
    client_ca: bytes | None
    context: ssl.SSLContext


def _signature(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class TlsFiles:
    """The certificate, key and client CA files, loaded and watched.

    Raises (constructor):
        ValueError: a file cannot be read, or the key does not match the certificate.
    """

    def __init__(self, settings: TlsSettings) -> None:
        assert settings.cert_file is not None and settings.key_file is not None
        self._paths = tuple(p for p in (settings.cert_file, settings.key_file, settings.client_ca_file) if p)
        self._has_ca = settings.client_ca_file is not None
        self._check_s = settings.reload_check_s
        self._lock = threading.Lock()
        self._signature = _signature(self._paths)
        self._material = self._load()
        self._next_check = time.monotonic() + self._check_s
        self._generation = 0
        # The listening context is the first generation's; each handshake moves to the
        # current one.
        self._listener = self._material.context
        self._listener.sni_callback = self._switch  # type: ignore[assignment]

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate (``tls.client_ca_file`` set)."""
        return self._has_ca

    def _load(self) -> TlsMaterial:
        cert_file, key_file = self._paths[0], self._paths[1]
        try:
            chain, key = cert_file.read_bytes(), key_file.read_bytes()
            ca = self._paths[2].read_bytes() if self._has_ca else None
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(cert_file, key_file)
            context.set_alpn_protocols(["http/1.1"])
            if ca is not None:
                context.load_verify_locations(cadata=ca.decode("ascii"))
                context.verify_mode = ssl.CERT_OPTIONAL
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ValueError(f"cannot load TLS files {', '.join(map(str, self._paths))}: {exc}") from exc
        return TlsMaterial(chain, key, ca, context)

    def current(self) -> TlsMaterial:
        """The material new connections use, after reloading the files if they changed
        (checked at most every ``reload_check_s`` seconds). Never raises: a broken new set
        is logged and the previous one kept."""
        now = time.monotonic()
        if now < self._next_check:
            return self._material
        with self._lock:
            if now < self._next_check:
                return self._material
            self._next_check = now + self._check_s
            try:
                signature = _signature(self._paths)
                if signature != self._signature:
                    self._material = self._load()
                    self._signature = signature
                    self._generation += 1
                    log.info("TLS: reloaded %s", ", ".join(map(str, self._paths)))
            except (OSError, ValueError) as exc:
                log.error("TLS: keeping the previous certificate: %s", exc)
            return self._material

    # -- HTTPS -------------------------------------------------------------------

    def _switch(self, ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        ssl_object.context = self.current().context

    def ssl_context(self) -> ssl.SSLContext:
        """The context the HTTPS listener is created with (it hands each connection to
        the current one)."""
        return self._listener

    # -- gRPC --------------------------------------------------------------------

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials whose certificate follows the files (client certificate
        required and verified when a client CA is set)."""
        seen = [self._generation]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            material = self.current()
            if seen[0] == self._generation:
                return None
            seen[0] = self._generation
            return _grpc_config(material)

        return grpc.dynamic_ssl_server_credentials(
            _grpc_config(self._material), fetch, require_client_authentication=self._has_ca
        )


def _grpc_config(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.cert_chain)], root_certificates=material.client_ca
    )
