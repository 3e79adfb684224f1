"""The error table: every error class reaches a wire status; codes are stable."""

from __future__ import annotations

import json

import pytest

import gateway.errors as errors

ALL_ERRORS = [
    obj for obj in vars(errors).values()
    if isinstance(obj, type) and issubclass(obj, errors.GatewayError)
]

EXPECTED = {
    "Unauthenticated": (1001, "UNAUTHENTICATED", 401),
    "TokenExpired": (1002, "UNAUTHENTICATED", 401),
    "PermissionDenied": (1003, "PERMISSION_DENIED", 403),
    "InvalidParameter": (2001, "INVALID_ARGUMENT", 400),
    "MissingParameter": (2002, "INVALID_ARGUMENT", 400),
    "InvalidFormat": (2003, "INVALID_ARGUMENT", 400),
    "CommandDenied": (3001, "PERMISSION_DENIED", 403),
    "NetworkDenied": (3002, "PERMISSION_DENIED", 403),
    "FileDenied": (3003, "PERMISSION_DENIED", 403),
    "ResourceDenied": (3004, "RESOURCE_EXHAUSTED", 403),
    "ToolDenied": (3005, "PERMISSION_DENIED", 403),
    "SandboxSetupFailed": (4001, "INTERNAL", 500),
    "SandboxExecutionFailed": (4002, "ABORTED", 500),
    "SandboxLimitExceeded": (4003, "RESOURCE_EXHAUSTED", 429),
    "RateLimited": (4290, "RESOURCE_EXHAUSTED", 429),
    "InternalError": (5001, "INTERNAL", 500),
    "StorageError": (5002, "UNAVAILABLE", 503),
    "DependencyUnavailable": (5003, "UNAVAILABLE", 503),
    "PolicyEngineError": (5003, "UNAVAILABLE", 503),
    "Unimplemented": (5004, "UNIMPLEMENTED", 501),
    "NotFound": (6001, "NOT_FOUND", 404),
}


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_error_class_has_its_own_wire_status(cls: type[errors.GatewayError]) -> None:
    assert cls in errors.STATUS_TABLE, f"{cls.__name__} has no row in STATUS_TABLE"
    status = errors.status_for(cls("x"))
    assert status.http >= 400
    assert status.grpc.isupper()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_design_table_codes_and_statuses(name: str) -> None:
    code, grpc_name, http = EXPECTED[name]
    err = getattr(errors, name)("boom")
    assert (err.code, errors.status_for(err).grpc, errors.status_for(err).http) == (code, grpc_name, http)


def test_every_concrete_class_is_in_expected_table() -> None:
    abstract = {"GatewayError", "AuthError", "InvalidRequest", "PolicyDenied", "SandboxError"}
    assert {c.__name__ for c in ALL_ERRORS} - abstract == set(EXPECTED)


def test_to_json_is_ascii_and_shaped() -> None:
    err = errors.CommandDenied("nein — verboten", details={"reasons": ["ü"]})
    text = err.to_json()
    assert text.isascii()
    assert json.loads(text) == {"error": {"code": 3001, "message": "nein — verboten", "details": {"reasons": ["ü"]}}}
