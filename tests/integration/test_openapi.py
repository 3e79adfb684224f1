"""The OpenAPI document describes the REST edge it is served by (issue 13, finding 5).

Schemathesis (``st run --checks all``, a fixed seed, bounded examples) runs against a real
gateway process with an API key, so its auth checks (ignored auth, missing credentials)
mean something; the key holds every scope but ``policy:admin``, so ``POST
/v1/policy/reload`` only ever answers 403. Direct checks of the document and of live
answers follow: required workspace, served media types, error statuses, ``Allow``.

This module is also the hooks module of that ``st`` process (``SCHEMATHESIS_HOOKS``): see
:func:`_asks_unenforceable` for the one kind of request it does not send.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.auth.apikeys import hash_api_key, new_api_key
from tests.conftest import REPO, GatewayProcess, start_gateway

ST = Path(sys.executable).parent / "st"
SCOPES = ["tasks:execute", "tasks:read", "tasks:cancel", "files:read", "files:write", "policy:read"]
MAX_TIMEOUT_S = 900  # not the default (3600), to show the document follows the settings
MAX_WAIT_S = 5
UNENFORCED_ENV = "MCP_TEST_UNENFORCED_LIMITS"
ERROR_BODY_REF = "#/components/schemas/ErrorBody"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def _asks_unenforceable(body: Any, unenforced: set[str]) -> bool:
    """Whether an execute body asks for what this host cannot enforce: NETWORK_RESTRICTED
    without the egress proxy (a gateway not running as root), or a cpu / pids / io limit
    without its cgroup controller. The service refuses those with
    4001 (SandboxSetupFailed, HTTP 500 per design section 5) on purpose, which schemathesis'
    not_a_server_error check cannot tell from a crash; every other 5xx still fails the run."""
    config = body.get("sandbox_config") if isinstance(body, dict) else None
    if not isinstance(config, dict):
        return False
    if config.get("network_access") == "NETWORK_RESTRICTED" and "egress" in unenforced:
        return True
    limits = config.get("resource_limits")
    if not isinstance(limits, dict):
        return False
    needs = {"cpu_limit": "cpu", "pids_limit": "pids", "io_weight": "io"}
    return any(limits.get(field) and controller in unenforced for field, controller in needs.items())


if os.environ.get("SCHEMATHESIS_HOOKS") == __name__:  # imported by `st run` as its hooks module
    import schemathesis

    @schemathesis.hook
    def filter_case(context: Any, case: Any) -> bool:
        """Drop the requests :func:`_asks_unenforceable` names."""
        return not _asks_unenforceable(case.body, set(filter(None, os.environ[UNENFORCED_ENV].split(","))))


@pytest.fixture(scope="module")
def api(state_root: Path) -> Iterator[tuple[GatewayProcess, str]]:
    """A gateway that needs credentials, and an API key for it. Request rate limits are off
    so the run does not depend on timing (429 is documented, so it would still pass)."""
    key = new_api_key()
    home = Path(tempfile.mkdtemp(prefix="test_openapi-", dir=state_root))
    config = home / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "auth": {"api_keys": [{"hash": hash_api_key(key), "principal": "fuzzer", "tenant": "fuzz",
                               "scopes": SCOPES}]},
        "rate_limits": {"principal": {"requests_per_s": 0}, "tenant": {"requests_per_s": 0}},
        "sandbox": {"max_timeout_s": MAX_TIMEOUT_S},
        "tasks": {"max_wait_s": MAX_WAIT_S},  # below st's request timeout: no wait can outlast it
    }))
    gw = start_gateway(home / "var", "--config", str(config), dev=False)
    yield gw, key
    code = gw.stop()
    assert code == 0, f"gateway exited {code}:\n{gw.stderr_path.read_text()}"


@pytest.fixture(scope="module")
def client(api: tuple[GatewayProcess, str]) -> Iterator[httpx.Client]:
    """An httpx client of the gateway, sending the API key."""
    gw, key = api
    with httpx.Client(base_url=gw.http_url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
        yield http


@pytest.fixture(scope="module")
def document(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def test_schemathesis_finds_nothing(api: tuple[GatewayProcess, str], client: httpx.Client,
                                    document: dict[str, Any], tmp_path: Path) -> None:
    gw, key = api
    enforced = set(client.get("/health/ready").json()["sandbox"]["enforced_limits"])
    cmd = [str(ST), "run", f"{gw.http_url}/openapi.json", "--checks", "all", "--max-examples", "40",
           "--seed", "13", "--workers", "1", "--request-timeout", "20", "--generation-database", "none",
           "--continue-on-failure", "--no-color", "-H", f"Authorization: Bearer {key}"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": __name__, UNENFORCED_ENV: ",".join({"cpu", "pids", "io", "egress"} - enforced),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.monotonic()
    # cwd: st keeps its .hypothesis and .schemathesis directories there. One worker: with more,
    # hypothesis 6.170 can trip over its own lambda-source cache in threads (a run error).
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = (run.stdout + run.stderr).replace(key, "[key]")
    print(f"st run took {time.monotonic() - start:.1f} s")
    assert run.returncode == 0, output
    operations = len(list(_operations(document)))
    assert f"{operations} selected / {operations} total" in output, output


def test_file_routes_require_workspace(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        if path.startswith("/v1/files/"):
            workspace = next(p for p in operation["parameters"] if p["name"] == "workspace")
            assert workspace["in"] == "query" and workspace["required"] is True, (method, path)
            assert workspace["schema"]["pattern"], (method, path)


def test_media_types_are_the_served_ones(document: dict[str, Any], client: httpx.Client) -> None:
    def content(path: str, method: str = "get", status: str = "200") -> set[str]:
        return set(document["paths"][path][method]["responses"][status]["content"])

    assert content("/metrics") == {"text/plain", "application/openmetrics-text"}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    metrics = client.get("/metrics", headers={"accept": "application/openmetrics-text"})
    assert metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert "application/octet-stream" in content("/v1/files/{path}")
    assert document["paths"]["/v1/files/{path}"]["put"]["requestBody"]["content"].keys() == {
        "application/octet-stream"}
    assert content("/v1/tasks/{task_id}/stream") == {"text/event-stream"}
    for path in ("/health", "/health/live", "/health/ready"):
        assert content(path) == {"application/json"}, path
    assert content("/health/ready", status="503") == {"application/json"}


def test_every_route_documents_its_errors(document: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for method, path, operation in _operations(document):
        responses = operation["responses"]
        where = f"{method} {path}"
        assert {"413", "500"} <= responses.keys(), where
        for status, response in responses.items():
            if status.startswith(("4", "5")) and not (path == "/health/ready" and status == "503"):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": ERROR_BODY_REF}, (where, status)
        if operation.get("security"):  # everything but the probes
            assert operation["security"] == [{"bearer": []}], where
            assert {"401", "403", "429"} <= responses.keys(), where
            assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True, where
            assert "Retry-After" in responses["429"]["headers"], where
        else:
            assert path.startswith(("/health", "/metrics")), where
        if operation.get("parameters") or "requestBody" in operation:
            assert "400" in responses, where
        assert ("422" in responses) == (where == "POST /v1/execute"), where  # only a JSON body answers 422
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")


def test_document_carries_the_configured_bounds(document: dict[str, Any]) -> None:
    command = document["components"]["schemas"]["CommandBody"]["properties"]
    assert command["timeout"]["maximum"] == MAX_TIMEOUT_S
    assert command["args"]["maxItems"] == 512


def test_wrong_method_answers_405_with_allow(client: httpx.Client) -> None:
    for method, path, allowed in [("POST", "/v1/files/notes.txt", {"GET", "PUT", "DELETE"}),
                                  ("TRACE", "/v1/execute", {"POST"}), ("OPTIONS", "/health", {"GET"}),
                                  ("DELETE", "/v1/tasks/task-" + "0" * 32, {"GET"})]:
        response = client.request(method, path)
        assert response.status_code == 405, (method, path, response.text)
        assert {m.strip() for m in response.headers["allow"].split(",")} == allowed, (method, path)
        assert response.json()["error"]["code"] == 2001


def test_parameter_errors_are_400_and_body_errors_422(client: httpx.Client) -> None:
    def answer(response: httpx.Response) -> tuple[int, int]:
        return response.status_code, response.json()["error"]["code"]

    assert answer(client.get("/v1/files/notes.txt")) == (400, 2002)  # workspace missing
    assert answer(client.get("/v1/files/notes.txt?workspace=")) == (400, 2002)
    assert answer(client.get("/v1/files/notes.txt?workspace=a/b")) == (400, 2003)
    assert answer(client.get("/v1/tasks/task-" + "0" * 32 + "/stream?offset=-1")) == (400, 2001)
    assert answer(client.put("/v1/files/m?workspace=w&mode=+644", content=b"x")) == (400, 2003)
    assert answer(client.put("/v1/files/m?workspace=w&mode=4755", content=b"x")) == (400, 2001)
    assert answer(client.post("/v1/execute", json={"command": "echo", "timeout": "5"})) == (422, 2001)
    assert answer(client.post("/v1/execute", json={"args": ["x"]})) == (422, 2002)
    accepted = client.post("/v1/execute", json={"command": "echo", "timeout": 5.0})  # JSON Schema's integer
    assert accepted.status_code == 202, accepted.text
    unauthenticated = httpx.get(f"{client.base_url}/v1/policy")
    assert unauthenticated.status_code == 401 and unauthenticated.headers["www-authenticate"].startswith("Bearer")
