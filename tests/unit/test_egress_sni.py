"""gateway.egress.sni against real ClientHellos (Python's ssl, i.e. OpenSSL), their every
prefix, record splits, hand-made malformed ones, and arbitrary bytes."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.egress.sni import Incomplete, NotClientHello, read_sni


def client_hello(server_name: str | None) -> bytes:
    """The first flight an OpenSSL client sends (one or more TLS records)."""
    context = ssl.create_default_context()
    if server_name is None:
        context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def split_records(hello: bytes, size: int) -> bytes:
    """The same handshake re-cut into records of at most ``size`` bytes (RFC 8446 5.1
    allows a handshake message to span records)."""
    assert hello[0] == 22
    payload = bytearray()
    pos = 0
    while pos < len(hello):
        length = int.from_bytes(hello[pos + 3:pos + 5], "big")
        payload += hello[pos + 5:pos + 5 + length]
        pos += 5 + length
    out = bytearray()
    for i in range(0, len(payload), size):
        piece = payload[i:i + size]
        out += bytes([22, 3, 1]) + len(piece).to_bytes(2, "big") + piece
    return bytes(out)


def hand_made(extensions: bytes) -> bytes:
    """A minimal ClientHello with the given extensions block, in one record."""
    body = (b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
            + len(extensions).to_bytes(2, "big") + extensions)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def sni_extension(*names: bytes) -> bytes:
    entries = b"".join(b"\x00" + len(n).to_bytes(2, "big") + n for n in names)
    data = len(entries).to_bytes(2, "big") + entries
    return b"\x00\x00" + len(data).to_bytes(2, "big") + data


def test_the_name_of_a_real_hello_lower_cased():
    assert read_sni(client_hello("Files.Example.ORG")) == "files.example.org"


def test_a_hello_without_a_name():
    assert read_sni(client_hello(None)) is None


def test_every_prefix_asks_for_more():
    hello = client_hello("example.com")
    for end in range(len(hello)):
        with pytest.raises(Incomplete):
            read_sni(hello[:end])


@pytest.mark.parametrize("size", [1, 7, 100, 512])
def test_a_hello_spread_over_records(size):
    assert read_sni(split_records(client_hello("example.com"), size)) == "example.com"


def test_bytes_after_the_hello_are_not_read():
    assert read_sni(client_hello("example.com") + b"\x17\x03\x03garbage") == "example.com"


@pytest.mark.parametrize(("data", "why"), [
    (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "not a TLS handshake"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", "not a TLS handshake"),
    (b"\x16\x03\x01\x00\x00", "a TLS record of 0 bytes"),
    (b"\x16\x03\x01\x40\x01", "a TLS record of 16385 bytes"),
    (b"\x16\x02\x00\x00\x05hello", "not a TLS record version"),
    (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),
    (hand_made(sni_extension(b"a.example") + sni_extension(b"b.example")), "appears twice"),
    (hand_made(sni_extension(b"a.example", b"b.example")), "2 host names"),
    (hand_made(sni_extension("bücher.example".encode())), "not ASCII"),
    (hand_made(sni_extension(b"")), "empty"),
    (hand_made(b"\x00\x00\x00\x09\x00\x07\x00\x00\x04abc"), "runs past its end"),
])
def test_malformed_first_flights_are_refused(data, why):
    with pytest.raises(NotClientHello, match=why):
        read_sni(data)


def test_an_oversized_hello_is_refused_before_it_is_read():
    huge = b"\x16\x03\x01\x00\x04\x01\x01\x00\x00"  # a ClientHello claiming 64 KiB
    with pytest.raises(NotClientHello, match="ClientHello of 65536 bytes"):
        read_sni(huge)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_break_the_parser(data):
    try:
        read_sni(data)
    except (Incomplete, NotClientHello):
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_hellos_never_break_the_parser(data):
    hello = bytearray(client_hello("example.com"))
    for _ in range(data.draw(st.integers(1, 4))):
        hello[data.draw(st.integers(0, len(hello) - 1))] = data.draw(st.integers(0, 255))
    try:
        name = read_sni(bytes(hello))
    except (Incomplete, NotClientHello):
        return
    assert name is None or (name.isascii() and name == name.lower())
