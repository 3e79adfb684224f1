"""What a client raises besides the gateway's own errors.

The gateway's answers are :class:`gateway.errors.GatewayError` subclasses, one per project
error code (``gateway.errors.BY_CODE``: ``CommandDenied`` for 3001, ``RateLimited`` for 4290,
``NotFound`` for 6001, ...), built from the wire error's code, never from its text.
:class:`TransportError` is everything else: the gateway could not be reached, the
connection broke, or an answer was not the gateway's (a proxy's error page).
"""

from __future__ import annotations

__all__ = ["TransportError", "retry_after_s"]


class TransportError(Exception):
    """The gateway could not be reached or its answer could not be read; the message says
    which call and why. Nothing tells whether a call that failed this way took effect."""


def retry_after_s(value: str | None) -> int | None:
    """A ``Retry-After`` header or trailer in seconds (RFC 9110 10.2.3, delay-seconds), or
    None when absent or not ASCII digits."""
    return int(value) if value and value.isascii() and value.isdigit() else None
