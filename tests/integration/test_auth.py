"""Who is calling, against real gateway processes: JWTs (RS256, ES256, EdDSA, HS256) and API
keys over gRPC and REST, every refusal with its exact code and its ``auth_failure`` event,
scopes, tenants, rate limits, and API keys revoked by a config reload.

Keys, tokens and the JWKS are made here with ``cryptography`` / PyJWT (tests/pki.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
import yaml

from gateway.auth.apikeys import hash_api_key, new_api_key
from gateway.proto import mcp_pb2, mcp_pb2_grpc
from tests.conftest import GatewayProcess, start_gateway, wait_until
from tests.pki import SigningKey, jwks, signing_keys

ISSUER = "https://idp.test"
AUDIENCE = "mcp-gateway"
HS256_SECRET = "s" * 40
UNKNOWN_TASK = "task-" + "0" * 32
ALL_SCOPES = ["tasks:execute", "tasks:read", "tasks:cancel", "files:read", "files:write"]
TRANSPORTS = ("grpc", "rest")


@dataclass
class Reply:
    """One call's outcome on either edge: HTTP status or gRPC code name, project error code
    (None on success), error details, headers / trailers, and the body on success."""

    status: str
    code: int | None
    details: dict[str, Any]
    headers: dict[str, str]
    body: Any = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(key: SigningKey, *, kid: str | None = None, **overrides: Any) -> str:
    """A JWT signed by ``key``: valid claims for tenant acme unless ``overrides`` change them
    (a value of None drops the claim)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "alice", "tenant": "acme", "scope": " ".join(ALL_SCOPES), "roles": ["user"],
                              "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key.pem, algorithm=key.alg, headers={"kid": kid or key.kid})


def hs256(secret: bytes, claims: dict[str, Any]) -> str:
    """An HS256 token made by hand (PyJWT refuses PEM-looking HMAC keys, which is the point)."""
    signing_input = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


class Client:
    """Calls one gateway over gRPC or REST with a bearer credential (or none)."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self.gateway = gateway
        self.http = httpx.Client(base_url=gateway.http_url, timeout=30)
        self.stub = mcp_pb2_grpc.McpServiceStub(grpc.insecure_channel(gateway.grpc_addr))

    def close(self) -> None:
        self.http.close()

    def call(self, transport: str, credential: str | None, op: str, arg: Any = None) -> Reply:
        """``op``: execute (arg: shell script), status / stream / cancel (arg: task id),
        read_file (arg: (workspace, path))."""
        if transport == "rest":
            return self._rest(credential, op, arg)
        return self._grpc(credential, op, arg)

    def _rest(self, credential: str | None, op: str, arg: Any) -> Reply:
        headers = {"authorization": f"Bearer {credential}"} if credential else {}
        if op == "execute":
            r = self.http.post("/v1/execute", headers=headers,
                               json={"command": "sh", "args": ["-c", arg], "metadata": {"workspace": "ws-auth"}})
        elif op == "status":
            r = self.http.get(f"/v1/tasks/{arg}", headers=headers)
        elif op == "stream":
            r = self.http.get(f"/v1/tasks/{arg}/stream", headers=headers)
        elif op == "cancel":
            r = self.http.post(f"/v1/tasks/{arg}/cancel", headers=headers)
        else:
            r = self.http.get(f"/v1/files/{arg[1]}", params={"workspace": arg[0]}, headers=headers)
        if r.status_code < 400:
            body = r.text if op in ("stream", "read_file") else r.json()
            return Reply(str(r.status_code), None, {}, dict(r.headers), body)
        error = r.json()["error"]
        return Reply(str(r.status_code), error["code"], error["details"], dict(r.headers))

    def _grpc(self, credential: str | None, op: str, arg: Any) -> Reply:
        metadata = [("authorization", f"Bearer {credential}")] if credential else []
        try:
            if op == "execute":
                req = mcp_pb2.CommandRequest(command="sh", args=["-c", arg], metadata={"workspace": "ws-auth"})
                body: Any = self.stub.ExecuteCommand(req, metadata=metadata, timeout=30)
            elif op == "status":
                body = self.stub.GetTaskStatus(mcp_pb2.TaskStatusRequest(task_id=arg), metadata=metadata, timeout=30)
            elif op == "stream":
                body = list(self.stub.StreamTaskOutput(mcp_pb2.TaskStatusRequest(task_id=arg), metadata=metadata,
                                                       timeout=30))
            elif op == "cancel":
                body = self.stub.CancelTask(mcp_pb2.TaskStatusRequest(task_id=arg), metadata=metadata, timeout=30)
            else:
                body = self.stub.ReadFile(mcp_pb2.ReadFileRequest(workspace=arg[0], path=arg[1]), metadata=metadata,
                                          timeout=30)
        except grpc.RpcError as err:
            trailers = dict(err.trailing_metadata() or ())
            error = json.loads(trailers["error-details"])["error"]
            return Reply(err.code().name, error["code"], error["details"], trailers)
        return Reply("OK", None, {}, {}, body)


# -- fixtures -----------------------------------------------------------------------------


@dataclass
class Keys:
    """The credentials the module's gateway knows (API keys by name, JWT signing keys by alg)."""

    api: dict[str, str]
    jwt: dict[str, SigningKey]
    ghost: SigningKey  # same algorithm as RS256, not in the JWKS


def _api_key_entry(key: str, principal: str, tenant: str, scopes: list[str], roles: tuple[str, ...] = ("user",),
                   **extra: Any) -> dict[str, Any]:
    return {"hash": hash_api_key(key), "principal": principal, "tenant": tenant, "roles": list(roles),
            "scopes": scopes, **extra}


@pytest.fixture(scope="module")
def keys() -> Keys:
    api = {name: new_api_key() for name in ("alice", "carol", "acme-admin", "bob", "reader", "revoked")}
    made = signing_keys()
    ghost = signing_keys()["RS256"]
    ghost.kid = "ghost"
    return Keys(api, made, ghost)


def _write_config(path: Path, keys: Keys, **sections: Any) -> None:
    config = {
        "auth": {
            "jwt": {"jwks_file": str(path.parent / "jwks.json"), "issuer": ISSUER, "audience": AUDIENCE,
                    "hs256_secret": HS256_SECRET, "leeway_s": 5},
            "api_keys": [
                _api_key_entry(keys.api["alice"], "alice", "acme", ALL_SCOPES),
                _api_key_entry(keys.api["carol"], "carol", "acme", ALL_SCOPES),
                _api_key_entry(keys.api["acme-admin"], "acme-admin", "acme", ["tasks:read", "tasks:cancel"],
                               roles=("admin",)),
                _api_key_entry(keys.api["bob"], "bob", "beta", ALL_SCOPES, roles=("admin",)),
                _api_key_entry(keys.api["reader"], "reader", "acme", ["tasks:read"]),
                _api_key_entry(keys.api["revoked"], "gone", "acme", ALL_SCOPES, revoked=True),
            ],
        },
        **sections,
    }
    path.write_text(yaml.safe_dump(config))


def _start(state_root: Path, keys: Keys, prefix: str, **sections: Any) -> tuple[GatewayProcess, Path]:
    state = Path(tempfile.mkdtemp(prefix=prefix, dir=state_root))
    (state / "jwks.json").write_text(json.dumps(jwks(*keys.jwt.values())))
    config = state / "gw.yaml"
    _write_config(config, keys, **sections)
    return start_gateway(state / "var", "--config", str(config), dev=False), config


@pytest.fixture(scope="module")
def client(state_root: Path, keys: Keys) -> Iterator[Client]:
    gateway, _ = _start(state_root, keys, "auth-")
    c = Client(gateway)
    yield c
    c.close()
    gateway.stop()


def _events(client: Client, event_type: str) -> list[dict[str, Any]]:
    return [e for e in client.gateway.audit_events() if e["event_type"] == event_type]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _wait_task(client: Client, credential: str, task_id: str) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        body = client.call("rest", credential, "status", task_id).body
        return body if body["task_info"]["status"] not in ("QUEUED", "RUNNING") else None

    return wait_until(final, timeout_s=30, what=f"{task_id} final")


# -- accepted credentials ---------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kind", ["RS256", "ES256", "EdDSA", "HS256", "api_key"])
def test_valid_credentials_run_a_command_as_their_principal(client: Client, keys: Keys, kind: str,
                                                             transport: str) -> None:
    if kind == "api_key":
        credential, principal = keys.api["alice"], "alice"
    elif kind == "HS256":
        now = int(time.time())
        credential = jwt.encode({"sub": "hs-user", "tenant": "acme", "scope": "tasks:execute tasks:read", "roles": ["user"],
                                 "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600}, HS256_SECRET, algorithm="HS256")
        principal = "hs-user"
    else:
        credential, principal = sign(keys.jwt[kind], sub=f"user-{kind.lower()}"), f"user-{kind.lower()}"

    reply = client.call(transport, credential, "execute", "echo hi")

    assert reply.code is None, reply
    task_id = reply.body["task_id"] if transport == "rest" else reply.body.task_id
    assert _wait_task(client, credential, task_id)["result"]["stdout"] == "hi\n"
    decision = next(e for e in _events(client, "decision") if e.get("task_id") == task_id)
    assert (decision["principal"], decision["tenant"], decision["auth_scheme"]) == (principal, "acme", "bearer")
    assert decision["credential_sha256"] == _sha(credential)
    # The store holds the final state a moment before the task_end line is written.
    task_end = wait_until(lambda: next((e for e in _events(client, "task_end") if e.get("task_id") == task_id), None),
                          what=f"the task_end event of {task_id}")
    assert (task_end["principal"], task_end["tenant"], task_end["auth_scheme"]) == (principal, "acme", "bearer")


# -- refused credentials: the exact code, and an auth_failure event without the credential -----


def _refusals(keys: Keys) -> dict[str, tuple[str | None, int, str]]:
    """case -> (credential, code, audit reason)."""
    rsa, es = keys.jwt["RS256"], keys.jwt["ES256"]
    now = int(time.time())
    good = sign(es)
    other = sign(es, sub="mallory", tenant="beta")
    header, _, signature = good.split(".")
    tampered = ".".join([header, other.split(".")[1], signature])  # another token's payload, this signature
    none_header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": es.kid}).encode())
    claims = {"sub": "alice", "tenant": "acme", "scope": "tasks:read", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600}
    return {
        "expired": (sign(rsa, exp=now - 600, iat=now - 1200), 1002, "expired"),
        "not_yet_valid": (sign(rsa, nbf=now + 600), 1001, "not_yet_valid"),
        "wrong_audience": (sign(rsa, aud="someone-else"), 1001, "wrong_audience"),
        "wrong_issuer": (sign(rsa, iss="https://evil.test"), 1001, "wrong_issuer"),
        "unknown_kid": (sign(keys.ghost), 1001, "unknown_kid"),
        "alg_none": (f"{none_header}.{good.split('.')[1]}.", 1001, "alg_not_allowed"),
        "hs256_signed_with_rsa_public_key": (hs256(rsa.public_pem, claims), 1001, "bad_signature"),
        "tampered_payload": (tampered, 1001, "bad_signature"),
        "missing_tenant": (sign(rsa, tenant=None), 1001, "missing_claim"),
        "revoked_api_key": (keys.api["revoked"], 1001, "revoked_api_key"),
        "unknown_api_key": (new_api_key(), 1001, "unknown_api_key"),
        "no_credentials": (None, 1001, "missing_credentials"),
    }


REFUSALS = ["expired", "not_yet_valid", "wrong_audience", "wrong_issuer", "unknown_kid", "alg_none",
            "hs256_signed_with_rsa_public_key", "tampered_payload", "missing_tenant", "revoked_api_key",
            "unknown_api_key", "no_credentials"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", REFUSALS)
def test_refused_credentials_answer_the_exact_code_and_are_audited(client: Client, keys: Keys, case: str,
                                                                   transport: str) -> None:
    credential, code, reason = _refusals(keys)[case]

    reply = client.call(transport, credential, "status", UNKNOWN_TASK)

    assert (reply.code, reply.details.get("reason")) == (code, reason), reply
    assert reply.status == ("401" if transport == "rest" else "UNAUTHENTICATED")
    if transport == "rest":
        assert reply.headers["www-authenticate"].startswith('Bearer realm="mcp-gateway"')
    digest = _sha(credential) if credential else None
    failure = [e for e in _events(client, "auth_failure")
               if e["auth_reason"] == reason and e.get("credential_sha256") == digest
               and e["transport"] == ("grpc" if transport == "grpc" else "http")]
    assert failure, f"no auth_failure event for {case}"
    event = failure[-1]
    assert (event["principal"], event["tenant"], event["error_code"]) == ("unauthenticated", "unknown", code)
    assert event["auth_scheme"] == ("none" if credential is None else "bearer")
    if credential:
        assert credential not in client.gateway.audit_path.read_text()
        for part in credential.split("."):
            assert len(part) < 20 or part not in client.gateway.audit_path.read_text()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_missing_scope_is_1003_and_audited_with_the_principal(client: Client, keys: Keys, transport: str) -> None:
    reply = client.call(transport, keys.api["reader"], "execute", "echo no")

    assert reply.code == 1003 and reply.details == {"scope": "tasks:execute"}
    assert reply.status == ("403" if transport == "rest" else "PERMISSION_DENIED")
    if transport == "rest":
        assert 'error="insufficient_scope"' in reply.headers["www-authenticate"]
    event = [e for e in _events(client, "auth_failure") if e.get("principal") == "reader"][-1]
    assert (event["auth_reason"], event["tenant"], event["error_code"]) == ("missing_scope", "acme", 1003)
    assert client.call(transport, keys.api["reader"], "status", UNKNOWN_TASK).code == 6001  # tasks:read it has


def test_jwt_scopes_are_the_scope_claim(client: Client, keys: Keys) -> None:
    token = sign(keys.jwt["EdDSA"], scope="tasks:read")
    assert client.call("rest", token, "execute", "true").code == 1003
    assert client.call("rest", token, "status", UNKNOWN_TASK).code == 6001


# -- tenancy --------------------------------------------------------------------------------


def test_another_tenant_cannot_see_read_stream_cancel_or_fetch_files_of_a_task(client: Client, keys: Keys) -> None:
    alice, bob = keys.api["alice"], keys.api["bob"]
    created = client.call("rest", alice, "execute", "echo secret > /workspace/out.txt; sleep 30")
    task_id = created.body["task_id"]
    wait_until(lambda: client.call("rest", alice, "status", task_id).body["task_info"]["status"] == "RUNNING",
               timeout_s=30, what="running")

    for transport in TRANSPORTS:
        for op, arg in (("status", task_id), ("stream", task_id), ("cancel", task_id),
                        ("read_file", ("ws-auth", "out.txt"))):
            reply = client.call(transport, bob, op, arg)
            assert reply.code == 6001, (transport, op, reply)  # exactly like an unknown id
            unknown = client.call(transport, bob, op, UNKNOWN_TASK if op != "read_file" else ("ws-none", "out.txt"))
            assert reply.status == unknown.status and reply.code == unknown.code

    # The task is untouched by bob's cancel; alice still reads her file and cancels it.
    assert client.call("rest", alice, "status", task_id).body["task_info"]["status"] == "RUNNING"
    assert client.call("rest", alice, "read_file", ("ws-auth", "out.txt")).body == "secret\n"
    assert client.call("grpc", alice, "cancel", task_id).body.task_info.status == mcp_pb2.TASK_CANCELLED


def test_tasks_are_their_principals_and_tenant_admins_see_the_whole_tenant(client: Client, keys: Keys) -> None:
    task_id = client.call("rest", keys.api["alice"], "execute", "true").body["task_id"]
    _wait_task(client, keys.api["alice"], task_id)

    for transport in TRANSPORTS:
        assert client.call(transport, keys.api["carol"], "status", task_id).code == 6001  # same tenant, not hers
        assert client.call(transport, keys.api["acme-admin"], "status", task_id).code is None  # acme's admin
        assert client.call(transport, keys.api["bob"], "status", task_id).code == 6001  # beta's admin


# -- rate limits and revocation by config reload ------------------------------------------------


@pytest.fixture(scope="module")
def limited(state_root: Path, keys: Keys) -> Iterator[tuple[Client, Path]]:
    """A gateway whose tenant acme allows each principal 2 requests/s (burst 2) and the
    tenant 3 (burst 3); tenant beta keeps the global limits."""
    limits = {"rate_limits": {"tenants": {"acme": {"principal": {"requests_per_s": 2, "burst": 2},
                                                   "tenant": {"requests_per_s": 3, "burst": 3}}}}}
    gateway, config = _start(state_root, keys, "limits-", **limits)
    c = Client(gateway)
    yield c, config
    c.close()
    gateway.stop()


def _drain_buckets(seconds: float = 1.5) -> None:
    time.sleep(seconds)  # at 2-3 tokens/s every bucket is full again


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_principal_over_its_rate_gets_4290_with_retry_after_and_recovers(
    limited: tuple[Client, Path], keys: Keys, transport: str
) -> None:
    client, _ = limited
    _drain_buckets()
    alice = keys.api["alice"]
    replies = [client.call(transport, alice, "status", UNKNOWN_TASK) for _ in range(3)]

    assert [r.code for r in replies] == [6001, 6001, 4290]
    limited_reply = replies[2]
    assert limited_reply.details["limit"] == "principal_requests"
    if transport == "rest":
        assert limited_reply.status == "429" and limited_reply.headers["retry-after"] == "1"
    else:
        assert limited_reply.status == "RESOURCE_EXHAUSTED" and limited_reply.headers["retry-after"] == "1"
    assert client.call(transport, keys.api["bob"], "status", UNKNOWN_TASK).code == 6001  # beta is not limited
    event = [e for e in _events(client, "rate_limit") if e["principal"] == "alice"][-1]
    assert (event["rate_limit"], event["tenant"], event["error_code"]) == ("principal_requests", "acme", 4290)

    time.sleep(int(limited_reply.headers["retry-after"]))

    assert client.call(transport, alice, "status", UNKNOWN_TASK).code == 6001


def test_the_tenant_bucket_is_shared_by_its_principals(limited: tuple[Client, Path], keys: Keys) -> None:
    client, _ = limited
    _drain_buckets()
    assert [client.call("rest", keys.api["alice"], "status", UNKNOWN_TASK).code for _ in range(2)] == [6001, 6001]
    assert client.call("rest", keys.api["carol"], "status", UNKNOWN_TASK).code == 6001
    reply = client.call("rest", keys.api["carol"], "status", UNKNOWN_TASK)  # carol's own bucket has one left
    assert reply.code == 4290 and reply.details["limit"] == "tenant_requests"


def test_an_api_key_is_revoked_by_a_config_reload(limited: tuple[Client, Path], keys: Keys) -> None:
    client, config = limited
    _drain_buckets()
    carol = keys.api["carol"]
    assert client.call("grpc", carol, "status", UNKNOWN_TASK).code == 6001

    settings = yaml.safe_load(config.read_text())
    entry = next(e for e in settings["auth"]["api_keys"] if e["principal"] == "carol")
    entry["revoked"] = True
    config.write_text(yaml.safe_dump(settings))

    reply = wait_until(lambda: (r := client.call("grpc", carol, "status", UNKNOWN_TASK)).code == 1001 and r,
                       timeout_s=10, what="revocation applied")
    assert reply.details["reason"] == "revoked_api_key"
    assert client.call("rest", carol, "status", UNKNOWN_TASK).code == 1001

    settings["auth"]["api_keys"].remove(entry)  # deleting the entry refuses it too
    config.write_text(yaml.safe_dump(settings))
    wait_until(lambda: client.call("rest", carol, "status", UNKNOWN_TASK).details.get("reason") == "unknown_api_key",
               timeout_s=10, what="removal applied")
    assert client.call("rest", keys.api["alice"], "status", UNKNOWN_TASK).code == 6001  # others unaffected


def test_a_config_that_does_not_validate_keeps_the_running_keys(limited: tuple[Client, Path], keys: Keys) -> None:
    client, config = limited
    good = config.read_text()
    config.write_text(good + "\nauth_typo: true\n")
    try:
        wait_until(lambda: "config reload of" in client.gateway.stderr_path.read_text(), timeout_s=10,
                   what="reload error logged")
        _drain_buckets(0.5)
        assert client.call("rest", keys.api["alice"], "status", UNKNOWN_TASK).code == 6001
    finally:
        config.write_text(good)
