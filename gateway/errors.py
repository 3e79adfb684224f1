"""The gateway's one error tree and its stable codes (design section 5).

Every failure a caller can see is a :class:`GatewayError` subclass carrying a
numeric ``code`` that never changes meaning. Edges map an error to a wire status
by its *type* through :data:`STATUS_TABLE`, never by matching message text::

    GatewayError
    ├── AuthError
    │   ├── Unauthenticated ............ 1001  UNAUTHENTICATED    401
    │   ├── TokenExpired ............... 1002  UNAUTHENTICATED    401
    │   └── PermissionDenied ........... 1003  PERMISSION_DENIED  403
    ├── InvalidRequest
    │   ├── InvalidParameter ........... 2001  INVALID_ARGUMENT   400
    │   ├── MissingParameter ........... 2002  INVALID_ARGUMENT   400
    │   └── InvalidFormat .............. 2003  INVALID_ARGUMENT   400 (422 for body schema errors)
    ├── PolicyDenied
    │   ├── CommandDenied .............. 3001  PERMISSION_DENIED  403
    │   ├── NetworkDenied .............. 3002  PERMISSION_DENIED  403
    │   ├── FileDenied ................. 3003  PERMISSION_DENIED  403
    │   ├── ResourceDenied ............. 3004  RESOURCE_EXHAUSTED 403
    │   └── ToolDenied ................. 3005  PERMISSION_DENIED  403
    ├── SandboxError
    │   ├── SandboxSetupFailed ......... 4001  INTERNAL           500
    │   ├── SandboxExecutionFailed ..... 4002  ABORTED            500
    │   └── SandboxLimitExceeded ....... 4003  RESOURCE_EXHAUSTED 429
    ├── RateLimited .................... 4290  RESOURCE_EXHAUSTED 429 + Retry-After
    ├── InternalError .................. 5001  INTERNAL           500
    ├── StorageError ................... 5002  UNAVAILABLE        503
    ├── DependencyUnavailable .......... 5003  UNAVAILABLE        503
    │   └── PolicyEngineError .......... 5003  (engine error, timeout, malformed decision)
    ├── Unimplemented .................. 5004  UNIMPLEMENTED      501
    └── NotFound ....................... 6001  NOT_FOUND          404

``ToolDenied`` (3005) is an addition to the design table: a call of an upstream MCP
server's tool that policy denied (action ``tool.call``) or whose definition is not the
approved one. ``Unimplemented`` (5004) is an addition to the design table: RPCs whose issue has
not landed yet answer it instead of a misleading INTERNAL.

Third-party exceptions are translated where the library is called
(``raise PolicyEngineError(...) from exc``); anything that escapes untranslated is
reported by the edges as :class:`InternalError` without its text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BY_CODE",
    "GROUPS",
    "STATUS_TABLE",
    "AuthError",
    "CommandDenied",
    "DependencyUnavailable",
    "FileDenied",
    "GatewayError",
    "InternalError",
    "InvalidFormat",
    "InvalidParameter",
    "InvalidRequest",
    "MissingParameter",
    "NetworkDenied",
    "NotFound",
    "PermissionDenied",
    "PolicyDenied",
    "PolicyEngineError",
    "RateLimited",
    "ResourceDenied",
    "SandboxError",
    "SandboxExecutionFailed",
    "SandboxLimitExceeded",
    "SandboxSetupFailed",
    "StorageError",
    "ToolDenied",
    "TokenExpired",
    "Unauthenticated",
    "Unimplemented",
    "WireStatus",
    "from_wire",
    "status_for",
]


class GatewayError(Exception):
    """Base of every caller-visible error.

    Attributes:
        code: the project error code (design section 5), an int such as 3001.
        message: one human sentence, ASCII-safe after JSON encoding; never secrets.
        details: JSON-serialisable context (reasons, rule ids, limits), may be empty.
    """

    code: int = 5001

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def to_json(self) -> str:
        """The wire body ``{"error":{"code":..,"message":..,"details":{..}}}`` as ASCII JSON."""
        return json.dumps(self.to_dict(), ensure_ascii=True, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        """The error as the dict ``{"error": {"code", "message", "details"}}``."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class AuthError(GatewayError):
    """The caller could not be identified or may not do this."""

    code = 1001


class Unauthenticated(AuthError):
    """Invalid or missing credentials (1001)."""

    code = 1001


class TokenExpired(AuthError):
    """A credential that was valid has expired (1002)."""

    code = 1002


class PermissionDenied(AuthError):
    """The principal lacks a scope or role for this operation (1003)."""

    code = 1003


class InvalidRequest(GatewayError):
    """The request is malformed; retrying it unchanged will fail again."""

    code = 2001


class InvalidParameter(InvalidRequest):
    """A parameter has a value outside what is accepted (2001)."""

    code = 2001


class MissingParameter(InvalidRequest):
    """A required parameter is absent or empty (2002)."""

    code = 2002


class InvalidFormat(InvalidRequest):
    """A value or body cannot be parsed (2003)."""

    code = 2003


class PolicyDenied(GatewayError):
    """Policy said no. ``details`` carries ``reasons``, ``rule_ids`` and ``decision_id``."""

    code = 3001


class CommandDenied(PolicyDenied):
    """The command or its arguments are not allowed (3001)."""

    code = 3001


class NetworkDenied(PolicyDenied):
    """The requested network access is not allowed (3002)."""

    code = 3002


class FileDenied(PolicyDenied):
    """A path the request touches is not allowed (3003)."""

    code = 3003


class ResourceDenied(PolicyDenied):
    """A requested limit exceeds what policy grants (3004)."""

    code = 3004


class SandboxError(GatewayError):
    """The sandbox could not be set up or failed while running."""

    code = 4001


class SandboxSetupFailed(SandboxError):
    """The sandbox could not be created, or a required limit cannot be enforced (4001)."""

    code = 4001


class SandboxExecutionFailed(SandboxError):
    """The sandbox started but broke while running (4002)."""

    code = 4002


class SandboxLimitExceeded(SandboxError):
    """A sandbox resource limit stopped the operation (4003)."""

    code = 4003


class RateLimited(GatewayError):
    """Rate limit hit or the task queue is full (4290).

    Attributes:
        retry_after_s: seconds the caller should wait, sent as HTTP ``Retry-After``.
    """

    code = 4290

    def __init__(
        self, message: str, *, retry_after_s: int = 1, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, details=details)
        self.retry_after_s = retry_after_s


class InternalError(GatewayError):
    """An unexpected failure inside the gateway (5001); its cause is logged, not sent."""

    code = 5001


class StorageError(GatewayError):
    """The task store failed (5002)."""

    code = 5002


class DependencyUnavailable(GatewayError):
    """A dependency (policy engine, OPA server) is down or misbehaving (5003)."""

    code = 5003


class ToolDenied(PolicyDenied):
    """An upstream MCP tool may not be called: policy denied it (action ``tool.call``), or its
    definition is not the approved one (3005)."""

    code = 3005


class PolicyEngineError(DependencyUnavailable):
    """The policy engine failed, timed out, or returned a malformed decision (5003).

    Always handled as a deny: nothing runs when this is raised (fail closed).
    """

    code = 5003


class Unimplemented(GatewayError):
    """The operation is part of the contract but not built yet (5004)."""

    code = 5004


class NotFound(GatewayError):
    """No such task or file, including another tenant's (6001)."""

    code = 6001


@dataclass(frozen=True)
class WireStatus:
    """How one error class appears on the wire.

    Attributes:
        grpc: a ``grpc.StatusCode`` member name (kept as text so this module does
            not import grpc).
        http: the HTTP status code.
    """

    grpc: str
    http: int


#: Error class -> wire status, one row per class (bases too, since they can be raised);
#: a test checks every class in this module has its own row.
STATUS_TABLE: dict[type[GatewayError], WireStatus] = {
    GatewayError: WireStatus("INTERNAL", 500),
    AuthError: WireStatus("UNAUTHENTICATED", 401),
    InvalidRequest: WireStatus("INVALID_ARGUMENT", 400),
    PolicyDenied: WireStatus("PERMISSION_DENIED", 403),
    SandboxError: WireStatus("INTERNAL", 500),
    Unauthenticated: WireStatus("UNAUTHENTICATED", 401),
    TokenExpired: WireStatus("UNAUTHENTICATED", 401),
    PermissionDenied: WireStatus("PERMISSION_DENIED", 403),
    InvalidParameter: WireStatus("INVALID_ARGUMENT", 400),
    MissingParameter: WireStatus("INVALID_ARGUMENT", 400),
    InvalidFormat: WireStatus("INVALID_ARGUMENT", 400),
    CommandDenied: WireStatus("PERMISSION_DENIED", 403),
    NetworkDenied: WireStatus("PERMISSION_DENIED", 403),
    FileDenied: WireStatus("PERMISSION_DENIED", 403),
    ResourceDenied: WireStatus("RESOURCE_EXHAUSTED", 403),
    ToolDenied: WireStatus("PERMISSION_DENIED", 403),
    SandboxSetupFailed: WireStatus("INTERNAL", 500),
    SandboxExecutionFailed: WireStatus("ABORTED", 500),
    SandboxLimitExceeded: WireStatus("RESOURCE_EXHAUSTED", 429),
    RateLimited: WireStatus("RESOURCE_EXHAUSTED", 429),
    InternalError: WireStatus("INTERNAL", 500),
    StorageError: WireStatus("UNAVAILABLE", 503),
    DependencyUnavailable: WireStatus("UNAVAILABLE", 503),
    PolicyEngineError: WireStatus("UNAVAILABLE", 503),
    Unimplemented: WireStatus("UNIMPLEMENTED", 501),
    NotFound: WireStatus("NOT_FOUND", 404),
}


def status_for(error: GatewayError) -> WireStatus:
    """The wire status of ``error``: its class's row, else the nearest base's (for
    subclasses defined elsewhere, such as ``AuditError``)."""
    for cls in type(error).__mro__:
        status = STATUS_TABLE.get(cls)
        if status is not None:
            return status
    return STATUS_TABLE[GatewayError]


#: The classes that only group others: no error on the wire is ever one of these.
GROUPS: frozenset[type[GatewayError]] = frozenset({GatewayError, AuthError, InvalidRequest, PolicyDenied, SandboxError})


def _by_code() -> dict[int, type[GatewayError]]:
    found: dict[int, type[GatewayError]] = {}
    for cls in STATUS_TABLE:
        if cls in GROUPS:
            continue
        known = found.get(cls.code)
        # One code, two classes (5003: DependencyUnavailable and its PolicyEngineError): the base.
        if known is None or issubclass(known, cls):
            found[cls.code] = cls
    return found


#: Each project error code's class, for a client raising what the wire carried.
BY_CODE: dict[int, type[GatewayError]] = _by_code()


def from_wire(body: Any, *, retry_after_s: int | None = None) -> GatewayError:
    """The error a wire error body ``{"error": {"code", "message", "details"}}`` (REST, and
    gRPC's ``error-details`` trailer) stands for: the class of its code (:data:`BY_CODE`),
    never guessed from the message; ``retry_after_s`` from ``Retry-After`` for 4290. A body
    that is not one, or an unknown code, gives :class:`InternalError` (5001) saying so."""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if not isinstance(code, int) or code not in BY_CODE:
        return InternalError(f"the gateway answered an error this client does not know: {str(body)[:200]}")
    message = str(error.get("message", ""))
    details = error.get("details") if isinstance(error.get("details"), dict) else {}
    cls = BY_CODE[code]
    if cls is RateLimited:
        return RateLimited(message, retry_after_s=retry_after_s or 1, details=details)
    return cls(message, details=details)
