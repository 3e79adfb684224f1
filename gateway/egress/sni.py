"""The server name a TLS ClientHello asks for (SNI), read from the first bytes of a tunnel.

``read_sni(data) -> str | None`` parses the handshake records a client sent first and
returns the ``host_name`` of its ``server_name`` extension (RFC 6066 section 3), lower-cased;
None when the hello has no such extension. It raises :class:`Incomplete` when ``data`` ends
before the ClientHello does (read more and call again) and :class:`NotClientHello` for
anything else: bytes that are not a TLS handshake, a malformed or oversized hello, a
``server_name`` extension given twice or naming two host names (RFC 8446 section 4.2: an
extension appears at most once; a proxy and a server that read different copies would see
different names), or a name that is not ASCII.

Formats: TLSPlaintext records (RFC 8446 section 5.1: type 22 = handshake, a version, a
16-bit length of at most 2^14), carrying a Handshake (type 1 = client_hello, a 24-bit
length) that may span several records; ClientHello (section 4.1.2): legacy_version,
random, legacy_session_id<0..32>, cipher_suites<2..2^16-2>,
legacy_compression_methods<1..2^8-1>, extensions<8..2^16-1>. An SSLv2-format hello has no
extensions and is refused like any other non-TLS first flight.
"""

from __future__ import annotations

__all__ = ["MAX_HELLO_BYTES", "Incomplete", "NotClientHello", "read_sni"]

MAX_HELLO_BYTES = 32 * 1024  # a ClientHello with post-quantum key shares is ~2 KiB
_RECORD_HANDSHAKE = 22
_HANDSHAKE_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_NAME_TYPE_HOST = 0
_MAX_RECORD = 1 << 14


class Incomplete(Exception):
    """The bytes so far are a valid beginning of a ClientHello, but not all of it."""


class NotClientHello(Exception):
    """The bytes are not a well-formed TLS ClientHello (the message says why)."""


def read_sni(data: bytes) -> str | None:
    """The SNI host name of the ClientHello at the start of ``data`` (see the module
    docstring for the errors)."""
    return _server_name(_hello_body(data))


def _hello_body(data: bytes) -> bytes:
    """The ClientHello body, reassembled from the handshake records at the start of ``data``."""
    handshake = bytearray()
    pos = 0
    while True:
        if len(data) - pos < 5:
            raise Incomplete
        if data[pos] != _RECORD_HANDSHAKE:
            raise NotClientHello("the first bytes are not a TLS handshake record")
        if data[pos + 1] != 3:
            raise NotClientHello("not a TLS record version")
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        if length == 0 or length > _MAX_RECORD:
            raise NotClientHello(f"a TLS record of {length} bytes")
        if len(data) - pos - 5 < length:
            raise Incomplete
        handshake += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if handshake[0] != _HANDSHAKE_CLIENT_HELLO:
            raise NotClientHello("the first handshake message is not a ClientHello")
        if len(handshake) >= 4:
            size = int.from_bytes(handshake[1:4], "big")
            if size + 4 > MAX_HELLO_BYTES:
                raise NotClientHello(f"a ClientHello of {size} bytes")
            if len(handshake) >= size + 4:
                return bytes(handshake[4:size + 4])
        if pos > MAX_HELLO_BYTES:
            raise NotClientHello("a ClientHello longer than the proxy reads")


class _Reader:
    """Big-endian fields of a byte string; a read past the end is malformed, not short:
    the hello's own length said how long it is."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        if n > len(self._data) - self._pos:
            raise NotClientHello("a ClientHello field runs past its end")
        out = self._data[self._pos:self._pos + n]
        self._pos += n
        return out

    def number(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> _Reader:
        return _Reader(self.take(self.number(length_bytes)))

    def rest(self) -> bytes:
        return self.take(len(self._data) - self._pos)

    def done(self) -> bool:
        return self._pos == len(self._data)


def _server_name(body: bytes) -> str | None:
    hello = _Reader(body)
    hello.take(2 + 32)  # legacy_version, random
    if len(hello.vector(1).rest()) > 32:
        raise NotClientHello("a legacy_session_id longer than 32 bytes")
    ciphers = hello.vector(2)
    if ciphers.done():
        raise NotClientHello("a ClientHello without cipher suites")
    hello.vector(1)  # legacy_compression_methods
    if hello.done():
        return None  # no extensions at all (TLS 1.0-era hellos): no server name
    extensions = hello.vector(2)
    if not hello.done():
        raise NotClientHello("bytes after the ClientHello's extensions")
    name: str | None = None
    seen = set()
    while not extensions.done():
        kind = extensions.number(2)
        payload = extensions.vector(2)
        if kind in seen:
            raise NotClientHello(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == _EXT_SERVER_NAME:
            name = _host_name(payload)
    return name


def _host_name(payload: _Reader) -> str:
    names = payload.vector(2)
    if not payload.done():
        raise NotClientHello("bytes after the server_name list")
    found: list[bytes] = []
    while not names.done():
        kind = names.number(1)
        value = names.vector(2)
        if kind == _NAME_TYPE_HOST:
            found.append(value.rest())
    if len(found) != 1:
        raise NotClientHello(f"a server_name extension with {len(found)} host names")
    raw = found[0]
    if not raw or not raw.isascii():
        raise NotClientHello("a server name that is empty or not ASCII")
    return raw.decode("ascii").lower()
