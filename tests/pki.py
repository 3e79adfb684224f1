"""Test PKI and signing keys, made with ``cryptography`` (no files from outside the test run).

:class:`CertificateAuthority` issues server and client certificates; :func:`signing_keys`
makes the RS256 / ES256 / EdDSA key pairs JWT tests sign with, and :func:`jwks` publishes
their public halves as a JWKS (RFC 7517).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateAuthority", "Issued", "SigningKey", "jwks", "signing_keys"]

_NOW = datetime.datetime.now(datetime.timezone.utc)


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Issued:
    """A certificate and its key, written as PEM files ``cert`` and ``key``."""

    cert: Path
    key: Path
    certificate: x509.Certificate


class CertificateAuthority:
    """A self-signed CA (EC P-256) that issues leaf certificates into ``directory``."""

    def __init__(self, directory: Path, name: str = "test-ca") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - datetime.timedelta(days=1))
            .not_valid_after(_NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / f"{name}.pem"
        self.cert.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        name: str,
        *,
        server: bool = False,
        organization: str | None = None,
        dns: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
    ) -> Issued:
        """A leaf certificate with common name ``name`` (server or client usage)."""
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
        if organization:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - datetime.timedelta(days=1))
            .not_valid_after(_NOW + datetime.timedelta(days=10))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        cert = self.directory / f"{name}.crt"
        key_path = self.directory / f"{name}.key"
        cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return Issued(cert, key_path, certificate)


@dataclass
class SigningKey:
    """A JWT signing key: ``alg`` (RS256 | ES256 | EdDSA), ``kid``, the private key object
    and its PEM (``pem``), and the public JWK (``jwk``, a dict)."""

    alg: str
    kid: str
    private: Any
    pem: bytes
    jwk: dict[str, Any]

    @property
    def public_pem(self) -> bytes:
        """The public key as SubjectPublicKeyInfo PEM (what algorithm-confusion attacks sign with)."""
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def signing_keys() -> dict[str, SigningKey]:
    """One fresh key per asymmetric algorithm, keyed by ``alg``."""
    made = {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }
    keys = {}
    for alg, private in made.items():
        algorithm = jwt.get_algorithm_by_name(alg)
        jwk = json.loads(algorithm.to_jwk(private.public_key()))
        kid = f"test-{alg.lower()}"
        jwk.update(kid=kid, alg=alg, use="sig")
        keys[alg] = SigningKey(alg, kid, private, _pem_key(private), jwk)
    return keys


def jwks(*keys: SigningKey) -> dict[str, Any]:
    """A JWK Set with the public halves of ``keys``."""
    return {"keys": [k.jwk for k in keys]}
