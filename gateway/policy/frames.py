"""Frames between the gateway and its policy workers: 1 byte kind, 4 bytes big-endian
payload length, payload (see ``gateway.policy.worker`` for the kinds)."""

from __future__ import annotations

import os
import struct

__all__ = ["MAX_FRAME_BYTES", "read_exact", "read_frame", "write_frame"]

_HEADER = struct.Struct(">cI")
MAX_FRAME_BYTES = 64 << 20


def write_frame(fd: int, kind: bytes, payload: bytes) -> None:
    """Write one frame to ``fd`` (blocking). Raises OSError (EPIPE when the peer is gone)."""
    view = memoryview(_HEADER.pack(kind, len(payload)) + payload)
    while view:
        view = view[os.write(fd, view):]


def read_exact(fd: int, size: int) -> bytes:
    """Exactly ``size`` bytes from ``fd``. Raises EOFError at end of input."""
    chunks, left = [], size
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            raise EOFError("peer closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> tuple[bytes, bytes]:
    """One frame from ``fd``: (kind, payload). Raises EOFError, ValueError (oversized)."""
    kind, size = _HEADER.unpack(read_exact(fd, _HEADER.size))
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {size} bytes is above {MAX_FRAME_BYTES}")
    return kind, read_exact(fd, size)
