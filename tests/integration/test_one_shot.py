"""One round trip for a short command (issue 17, item 3): ``POST /v1/execute?wait=S`` and
``ExecuteCommandAndWait``, against a real gateway over real sockets (grpcurl when it can be
had), with a tight HTTP admission bound to show that a waiting call holds no slot."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import GatewayProcess, Grpcurl, ReflectionClient, start_gateway

MAX_WAIT_S = 20


@pytest.fixture(scope="module")
def gateway(state_root: Path) -> Iterator[GatewayProcess]:
    """One gateway whose HTTP edge admits a single call at a time, refusing at once beyond."""
    gw = start_gateway(Path(tempfile.mkdtemp(prefix="test_one_shot-", dir=state_root)) / "var",
                       env={"MCP_GATEWAY_ADMISSION__HTTP_IN_FLIGHT": "1", "MCP_GATEWAY_ADMISSION__MAX_WAIT_MS": "0",
                            "MCP_GATEWAY_TASKS__MAX_WAIT_S": str(MAX_WAIT_S)})
    yield gw
    assert gw.stop() == 0, gw.stderr_path.read_text()


def test_rest_wait_answers_the_final_task(http: httpx.Client) -> None:
    answer = http.post("/v1/execute", params={"wait": 10}, json={"command": "sh", "args": ["-c", "echo out; exit 3"]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["task_info"]["status"] == "COMPLETED" and body["task_info"]["completed_at"]
    assert body["result"]["exit_code"] == 3 and body["result"]["stdout"] == "out\n"
    # ... the very state the task answers afterwards
    assert http.get(f"/v1/tasks/{body['task_info']['task_id']}").json() == body


def test_rest_wait_that_runs_out_answers_202_and_the_task_goes_on(http: httpx.Client) -> None:
    start = time.monotonic()
    answer = http.post("/v1/execute", params={"wait": 0.5}, json={"command": "sleep", "args": ["2"]})
    assert answer.status_code == 202, answer.text
    assert 0.5 <= time.monotonic() - start < 2.0
    created = answer.json()
    assert set(created) == {"task_id", "status", "created_at"} and created["status"] in ("QUEUED", "RUNNING")
    final = http.post("/v1/execute", params={"wait": 0.1}, json={"command": "true"})
    assert final.status_code == 200, final.text  # another call got through meanwhile
    done = http.get(f"/v1/tasks/{created['task_id']}")
    while done.json()["task_info"]["status"] == "RUNNING":
        time.sleep(0.05)
        done = http.get(f"/v1/tasks/{created['task_id']}")
    assert done.json()["task_info"]["status"] == "COMPLETED"


def test_rest_wait_without_wait_is_202_as_before(http: httpx.Client) -> None:
    answer = http.post("/v1/execute", json={"command": "true"})
    assert answer.status_code == 202 and set(answer.json()) == {"task_id", "status", "created_at"}


@pytest.mark.parametrize("wait", [str(MAX_WAIT_S + 1), "1e9", "-1", "nan", "soon"])
def test_rest_wait_out_of_range_is_refused(http: httpx.Client, wait: str) -> None:
    answer = http.post("/v1/execute", params={"wait": wait}, json={"command": "true"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == 2001


def test_a_waiting_call_holds_no_admission_slot(gateway: GatewayProcess, http: httpx.Client) -> None:
    """The HTTP edge admits one call at a time: a call waiting for its task must not keep
    the next caller out (it would answer 429 at once)."""
    waiting: list[httpx.Response] = []

    def wait() -> None:
        with httpx.Client(base_url=gateway.http_url, timeout=30) as other:
            waiting.append(other.post("/v1/execute", params={"wait": 10}, json={"command": "sleep", "args": ["1.5"]}))

    thread = threading.Thread(target=wait)
    thread.start()
    try:
        time.sleep(0.5)  # the call is waiting for its task now
        for _ in range(3):
            assert http.get(f"/v1/tasks/task-{'0' * 32}").status_code == 404  # admitted, not 429
    finally:
        thread.join()
    assert waiting[0].status_code == 200 and waiting[0].json()["task_info"]["status"] == "COMPLETED"


def test_policy_deny_in_a_waiting_call(http: httpx.Client) -> None:
    answer = http.post("/v1/execute", params={"wait": 5}, json={"command": "sudo", "args": ["id"]})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == 3001


def test_grpc_execute_and_wait(grpc_client: Grpcurl | ReflectionClient) -> None:
    reply = grpc_client.call("ExecuteCommandAndWait", {
        "request": {"command": "sh", "args": ["-c", "echo hi; echo err >&2"], "timeout": 30}, "wait_seconds": 10})
    assert reply.code == "OK", reply
    body = reply.body
    assert body is not None and body["task_info"]["status"] == "TASK_COMPLETED", body
    assert body["result"]["stdout"] == "hi\n" and body["result"]["stderr"] == "err\n"
    assert int(body["result"]["exit_code"]) == 0 and body["task_info"]["completed_at"]
    again = grpc_client.call("GetTaskStatus", {"task_id": body["task_info"]["task_id"]})
    assert again.body == body


def test_grpc_wait_zero_means_the_server_maximum(grpc_client: Grpcurl | ReflectionClient) -> None:
    reply = grpc_client.call("ExecuteCommandAndWait", {"request": {"command": "sleep", "args": ["1"]}})
    assert reply.code == "OK" and reply.body is not None
    assert reply.body["task_info"]["status"] == "TASK_COMPLETED", reply.body


def test_grpc_wait_that_runs_out_answers_the_running_task(grpc_client: Grpcurl | ReflectionClient) -> None:
    reply = grpc_client.call("ExecuteCommandAndWait",
                             {"request": {"command": "sleep", "args": ["2"]}, "wait_seconds": 1})
    assert reply.code == "OK" and reply.body is not None
    assert reply.body["task_info"]["status"] == "TASK_RUNNING" and not reply.body.get("result"), reply.body


def test_grpc_wait_errors(grpc_client: Grpcurl | ReflectionClient) -> None:
    for body, status, code in (
        ({"request": {"command": "true"}, "wait_seconds": MAX_WAIT_S + 1}, "INVALID_ARGUMENT", 2001),
        ({"request": {"command": "sudo"}, "wait_seconds": 5}, "PERMISSION_DENIED", 3001),
        ({"wait_seconds": 5}, "INVALID_ARGUMENT", 2002),
    ):
        reply = grpc_client.call("ExecuteCommandAndWait", body)
        assert reply.code == status and reply.error_details is not None, (body, reply)
        assert reply.error_details["error"]["code"] == code, (body, reply)
