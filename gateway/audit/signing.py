"""Ed25519 keys of the audit trail's checkpoints (RFC 8032, through ``cryptography``).

A ``checkpoint`` event signs the chain head: its signature covers the event's canonical
JSON without ``hash`` and ``signature`` (so ``prev_hash``, the hash of the event before it,
and ``seq``), prefixed with :data:`SIGNING_CONTEXT`. Whoever can rewrite the audit file can
recompute every hash of the chain, but not a signature: that needs the private key, which
only the gateway holds (a PKCS#8 PEM file, mode 0600). ``key_id`` is the SHA-256 (hex) of
the raw 32-byte public key, so a verifier can tell which key signed.
"""

from __future__ import annotations

import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit.chain import canonical_json

__all__ = [
    "SIGNING_CONTEXT",
    "CheckpointSigner",
    "CheckpointVerifier",
    "create_signing_key",
    "key_id",
    "load_public_key",
    "load_signing_key",
    "public_key_pem",
    "signed_bytes",
]

#: Domain separation: a checkpoint signature can never be mistaken for another Ed25519 use.
SIGNING_CONTEXT = b"mcp_audit_v1 checkpoint\n"


def signed_bytes(event: dict[str, Any]) -> bytes:
    """What a checkpoint's signature covers: :data:`SIGNING_CONTEXT` + the canonical JSON
    of ``event`` without ``hash`` and ``signature``."""
    body = {k: v for k, v in event.items() if k not in ("hash", "signature")}
    return SIGNING_CONTEXT + canonical_json(body).encode("ascii")


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the raw 32-byte public key: the ``key_id`` of a checkpoint."""
    return hashlib.sha256(_raw(public)).hexdigest()


def public_key_pem(public: Ed25519PublicKey) -> bytes:
    """The public key as SubjectPublicKeyInfo PEM (what ``audit verify --public-key`` reads)."""
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class CheckpointSigner:
    """Signs checkpoints with the gateway's private key.

    Attributes:
        private_key: the Ed25519 private key.
        key_id: SHA-256 (hex) of its raw public key.
    """

    private_key: Ed25519PrivateKey
    key_id: str

    @classmethod
    def of(cls, private_key: Ed25519PrivateKey) -> CheckpointSigner:
        """The signer of ``private_key``."""
        return cls(private_key, key_id(private_key.public_key()))

    def sign(self, data: bytes) -> str:
        """The Ed25519 signature of ``data``, 128 hex digits."""
        return self.private_key.sign(data).hex()


@dataclass(frozen=True)
class CheckpointVerifier:
    """Checks checkpoint signatures against one public key.

    Attributes:
        public_key: the Ed25519 public key.
        key_id: SHA-256 (hex) of its raw bytes.
    """

    public_key: Ed25519PublicKey
    key_id: str

    @classmethod
    def of(cls, public_key: Ed25519PublicKey) -> CheckpointVerifier:
        """The verifier of ``public_key``."""
        return cls(public_key, key_id(public_key))

    def verify(self, data: bytes, signature_hex: str) -> bool:
        """Whether ``signature_hex`` (128 hex digits) is this key's signature of ``data``."""
        try:
            self.public_key.verify(binascii.unhexlify(signature_hex), data)
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True


def create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Generate a new Ed25519 key into ``path`` as unencrypted PKCS#8 PEM, mode 0600.

    The file is created exclusively (an existing file or a symlink there is never
    replaced) and written in full before this returns.

    Raises:
        FileExistsError: ``path`` exists.
        OSError: it cannot be created or written (nothing is left behind).
    """
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # exactly, whatever the umask
        view = memoryview(pem)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path`` (PKCS#8 PEM).

    Raises:
        OSError: it cannot be read.
        ValueError: it is not an unencrypted Ed25519 private key, or others than its owner
            may read it (mode wider than 0600).
    """
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise ValueError(f"{path} is mode {mode:04o}; an audit signing key must be 0600 (chmod 600 {path})")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not an unencrypted PKCS#8 PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(text: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from SubjectPublicKeyInfo PEM or 64 hex digits (raw bytes).

    Raises:
        ValueError: neither form, or not an Ed25519 key.
    """
    stripped = text.strip()
    if len(stripped) == 64:
        try:
            return Ed25519PublicKey.from_public_bytes(binascii.unhexlify(stripped))
        except (binascii.Error, ValueError):
            pass
    try:
        key = serialization.load_pem_public_key(stripped)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an Ed25519 public key (PEM or 64 hex digits): {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"a {type(key).__name__}, not an Ed25519 public key")
    return key
