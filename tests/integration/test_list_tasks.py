"""Task listing (``GET /v1/tasks``, gRPC ``ListTasks``) against real gateways on both task
stores: pages newest first without gaps or repeats, the visibility of GetTaskStatus (a
principal sees its own tasks, a tenant admin its tenant's, nobody another tenant's), the
filters, and refusals of bad input."""

from __future__ import annotations

import json
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
import pytest
import yaml

from gateway.auth.apikeys import hash_api_key, new_api_key
from gateway.proto import mcp_pb2, mcp_pb2_grpc
from tests.conftest import GatewayProcess, start_gateway
from tests.pg_server import PostgresServer

TASK_SCOPES = ["tasks:execute", "tasks:read", "tasks:cancel"]
PRINCIPALS = {  # name: (tenant, roles, scopes)
    "alice": ("acme", ["user"], TASK_SCOPES),
    "carol": ("acme", ["user"], TASK_SCOPES),
    "acme-admin": ("acme", ["admin"], ["tasks:read"]),
    "bob": ("beta", ["user"], TASK_SCOPES),
}
MADE = {"alice": 5, "carol": 2, "bob": 1}  # tasks each creates


@dataclass
class Listing:
    """A gateway on one store, its keys, and the ids each principal's tasks got (newest last)."""

    gateway: GatewayProcess
    keys: dict[str, str]
    made: dict[str, list[str]]

    def rest(self, who: str, **params: Any) -> httpx.Response:
        with httpx.Client(base_url=self.gateway.http_url, timeout=30,
                          headers={"Authorization": f"Bearer {self.keys[who]}"}) as http:
            return http.get("/v1/tasks", params=params)

    def grpc(self, who: str, **fields: Any) -> mcp_pb2.ListTasksResponse:
        with grpc.insecure_channel(self.gateway.grpc_addr) as channel:
            return mcp_pb2_grpc.McpServiceStub(channel).ListTasks(
                mcp_pb2.ListTasksRequest(**fields), timeout=30, metadata=(("authorization", f"Bearer {self.keys[who]}"),))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def listing(request: pytest.FixtureRequest, state_root: Path) -> Iterator[Listing]:
    env: dict[str, str] = {}
    dbname = None
    if request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        dbname = "list_" + secrets.token_hex(6)
        with psycopg.connect(server.dsn("postgres"), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {dbname}")
        env["MCP_GATEWAY_TASKS__STORE_DSN"] = server.dsn(dbname)
    keys = {name: new_api_key() for name in PRINCIPALS}
    state = Path(tempfile.mkdtemp(prefix=f"list-{request.param}-", dir=state_root))
    config = {"auth": {"api_keys": [
        {"hash": hash_api_key(keys[name]), "principal": name, "tenant": tenant, "roles": roles, "scopes": scopes}
        for name, (tenant, roles, scopes) in PRINCIPALS.items()]},
        "rate_limits": {"principal": {"requests_per_s": 0}, "tenant": {"requests_per_s": 0}}}
    (state / "gw.yaml").write_text(yaml.safe_dump(config))
    gateway = start_gateway(state / "var", "--config", str(state / "gw.yaml"), env=env, dev=False)
    try:
        made: dict[str, list[str]] = {}
        with httpx.Client(base_url=gateway.http_url, timeout=60) as http:
            for who, count in MADE.items():
                for i in range(count):
                    reply = http.post("/v1/execute", params={"wait": 30}, json={"command": "echo", "args": [str(i)]},
                                      headers={"Authorization": f"Bearer {keys[who]}"})
                    assert reply.status_code == 200, reply.text
                    made.setdefault(who, []).append(reply.json()["task_info"]["task_id"])
        yield Listing(gateway, keys, made)
    finally:
        assert gateway.stop() == 0, gateway.stderr_path.read_text()
        if dbname is not None:
            with psycopg.connect(server.dsn("postgres"), autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


def _rest_pages(listing: Listing, who: str, limit: int, **params: Any) -> list[list[str]]:
    pages, token = [], None
    while True:
        reply = listing.rest(who, limit=limit, **params, **({"page_token": token} if token else {}))
        assert reply.status_code == 200, reply.text
        body = reply.json()
        pages.append([t["task_id"] for t in body["tasks"]])
        token = body["next_page_token"]
        if token is None:
            return pages


def _grpc_pages(listing: Listing, who: str, limit: int) -> list[list[str]]:
    pages, token = [], ""
    while True:
        reply = listing.grpc(who, limit=limit, page_token=token)
        pages.append([t.task_id for t in reply.tasks])
        token = reply.next_page_token
        if not token:
            return pages


def test_pages_are_newest_first_without_gaps_or_repeats(listing: Listing) -> None:
    newest_first = list(reversed(listing.made["alice"]))
    rest_pages = _rest_pages(listing, "alice", 2)
    assert rest_pages == [newest_first[0:2], newest_first[2:4], newest_first[4:5]]
    assert _grpc_pages(listing, "alice", 2) == rest_pages
    # a page that ends exactly at the last task says so: no empty page after it
    assert _rest_pages(listing, "alice", 5) == [newest_first]


def test_visibility_is_getTaskStatus_s(listing: Listing) -> None:
    def seen(who: str) -> set[str]:
        return {task_id for page in _rest_pages(listing, who, 100) for task_id in page}

    assert seen("carol") == set(listing.made["carol"])
    assert seen("bob") == set(listing.made["bob"])
    assert seen("acme-admin") == set(listing.made["alice"]) | set(listing.made["carol"])  # never beta's
    assert {t.task_id for t in listing.grpc("acme-admin", limit=100).tasks} == seen("acme-admin")


def test_filters_by_state_and_time(listing: Listing) -> None:
    done = listing.rest("alice", status="COMPLETED", limit=100).json()
    assert {t["task_id"] for t in done["tasks"]} == set(listing.made["alice"])
    assert all(t["status"] == "COMPLETED" for t in done["tasks"])
    assert listing.rest("alice", status="RUNNING").json()["tasks"] == []
    assert list(listing.grpc("alice", status=mcp_pb2.TASK_QUEUED).tasks) == []
    assert listing.rest("alice", since="2999-01-01T00:00:00Z").json()["tasks"] == []
    assert len(listing.rest("alice", since="2000-01-01T00:00:00+02:00", limit=100).json()["tasks"]) == 5
    assert len(listing.grpc("alice", since="2000-01-01t00:00:00.5z", limit=100).tasks) == 5
    first = listing.rest("alice", limit=100).json()["tasks"][-1]  # alice's oldest
    assert [t["task_id"] for t in listing.rest("alice", since=first["created_at"], limit=100).json()["tasks"]][-1] \
        == first["task_id"]  # at or after: the task created at that very millisecond is in


@pytest.mark.parametrize(("params", "status", "code"), [
    ({"since": "yesterday"}, 400, 2003),
    ({"since": "2026-13-01T00:00:00Z"}, 400, 2003),
    ({"page_token": "not-a-token"}, 400, 2003),
    ({"page_token": "9223372036854775808.task-" + "0" * 32}, 400, 2003),  # past int64
    ({"limit": 101}, 400, 2001),
    ({"limit": 0}, 400, 2001),
    ({"status": "SLEEPING"}, 400, 2001),
])
def test_bad_input_is_refused_with_the_project_code(listing: Listing, params: dict[str, Any], status: int,
                                                    code: int) -> None:
    reply = listing.rest("alice", **params)
    assert (reply.status_code, reply.json()["error"]["code"]) == (status, code), reply.text


@pytest.mark.parametrize(("fields", "code"), [
    ({"since": "yesterday"}, 2003), ({"page_token": "not-a-token"}, 2003), ({"limit": 101}, 2001),
])
def test_bad_input_over_grpc_is_invalid_argument(listing: Listing, fields: dict[str, Any], code: int) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        listing.grpc("alice", **fields)
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert json.loads(dict(err.trailing_metadata() or ())["error-details"])["error"]["code"] == code  # type: ignore[attr-defined]


def test_a_principal_without_tasks_read_is_refused(listing: Listing) -> None:
    assert listing.rest("alice").status_code == 200
    no_key = httpx.get(f"{listing.gateway.http_url}/v1/tasks", timeout=30)
    assert no_key.status_code == 401
