"""Load test of a running gateway: the first public version's request mix (health 10,
execute 60, status 30) from REST users and gRPC users, at a fixed rate per user.

    locust -f locust/locustfile.py --headless --host http://127.0.0.1:8080 \\
        --grpc-host 127.0.0.1:8081 -u 20 -r 20 --per-user-rate 5 -t 5m

``bench/load.py`` starts a gateway and runs this headless at 100 requests/s for 5 minutes
(30 s with ``--smoke``, which the test suite runs), then checks the audit trail.

Users (half of each kind): :class:`RestUser` speaks HTTP through locust's FastHttpUser
(geventhttpclient); :class:`GrpcUser` speaks gRPC through grpcio, made cooperative with
gevent (``grpc.experimental.gevent.init_gevent``, as the locust docs' gRPC example does),
reporting each call to locust's request events. Each user runs at most ``--per-user-rate``
requests per second (``constant_throughput``), so ``users x rate`` is the total rate as
long as the gateway keeps up. Request names (the rows of locust's table) are
``health``, ``execute`` and ``status``, with the request type ``REST`` or ``gRPC``.

``execute`` is ``echo`` through the plain ExecuteCommand / ``POST /v1/execute`` (202: queued);
``status`` asks for the user's latest task. Calls are the development principal's
(``--dev``): no credentials. A request fails on any gRPC error or non-2xx answer, and on an
answer that is not what the contract says (no task id, an unknown status).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel: grpcio's waits then yield to other greenlets

import grpc  # noqa: E402
from locust import User, constant_throughput, events, task  # noqa: E402
from locust.contrib.fasthttp import FastHttpUser  # noqa: E402

from gateway.proto import mcp_pb2, mcp_pb2_grpc  # noqa: E402

#: Ids of the tasks this process's users were given (written at the end: --task-ids).
TASK_IDS: set[str] = set()
STATUSES = {"CREATED", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
COMMAND = {"command": "echo", "args": ["hello from locust"], "timeout": 30}


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument("--grpc-host", default="127.0.0.1:8081", help="the gateway's gRPC address, host:port")
    parser.add_argument("--per-user-rate", type=float, default=5.0, help="requests per second per user")
    parser.add_argument("--task-ids", default="", help="write the ids of the tasks created here, one a line")


_ENVIRONMENT: list[Any] = []  # locust's environment, from its init event (quit does not carry it)


@events.init.add_listener
def _keep_environment(environment: Any, **_: Any) -> None:
    _ENVIRONMENT.append(environment)


@events.quit.add_listener
def _write_task_ids(**_: Any) -> None:
    options = _ENVIRONMENT[0].parsed_options if _ENVIRONMENT else None
    if options is not None and options.task_ids:
        Path(options.task_ids).write_text("".join(f"{task_id}\n" for task_id in sorted(TASK_IDS)))


def _rate(environment: Any) -> float:
    options = environment.parsed_options
    return options.per_user_rate if options is not None else 5.0


def _refused(answer: Any) -> bool:
    """Mark a REST answer that is not 2xx failed with its status and error body (locust's
    own failure names only the status); True when it was."""
    if answer.status_code < 300:
        return False
    answer.failure(f"HTTP {answer.status_code}: {(answer.text or '')[:300]}")
    return True


class RestUser(FastHttpUser):
    """The mix over REST (``/health``, ``POST /v1/execute``, ``GET /v1/tasks/{id}``)."""

    def wait_time(self) -> float:
        return constant_throughput(_rate(self.environment))(self)

    def on_start(self) -> None:
        self.task_id = ""
        self.execute()  # a task to ask about from the first status request on

    @task(10)
    def health(self) -> None:
        with self.client.get("/health", name="health", catch_response=True) as answer:
            if not _refused(answer) and answer.json().get("status") != "SERVING":
                answer.failure(f"health: {answer.text[:200]}")

    @task(60)
    def execute(self) -> None:
        with self.client.post("/v1/execute", json=COMMAND, name="execute", catch_response=True) as answer:
            if not _refused(answer):
                body = answer.json()
                if body.get("status") not in STATUSES or not str(body.get("task_id", "")).startswith("task-"):
                    answer.failure(f"execute: {answer.text[:200]}")
                else:
                    self.task_id = body["task_id"]
                    TASK_IDS.add(self.task_id)

    @task(30)
    def status(self) -> None:
        with self.client.get(f"/v1/tasks/{self.task_id}", name="status", catch_response=True) as answer:
            if not _refused(answer) and answer.json()["task_info"]["status"] not in STATUSES:
                answer.failure(f"status: {answer.text[:200]}")


class GrpcUser(User):
    """The mix over gRPC (``Health``, ``ExecuteCommand``, ``GetTaskStatus``)."""

    def wait_time(self) -> float:
        return constant_throughput(_rate(self.environment))(self)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self._channel = grpc.insecure_channel(options.grpc_host if options is not None else "127.0.0.1:8081")
        self._stub = mcp_pb2_grpc.McpServiceStub(self._channel)
        self.task_id = ""
        self.execute()

    def on_stop(self) -> None:
        self._channel.close()

    def _call(self, name: str, call: Callable[[], Any], check: Callable[[Any], str | None]) -> Any:
        """Run ``call`` and report it to locust as ``gRPC name``; ``check`` names what is
        wrong with a reply (None: nothing)."""
        start = time.perf_counter()
        reply, error = None, None
        try:
            reply = call()
            problem = check(reply)
            if problem is not None:
                error = AssertionError(problem)
        except grpc.RpcError as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="gRPC", name=name, response_time=(time.perf_counter() - start) * 1e3,
            response_length=reply.ByteSize() if reply is not None else 0, exception=error, context={})
        return reply if error is None else None

    @task(10)
    def health(self) -> None:
        self._call("health", lambda: self._stub.Health(mcp_pb2.HealthRequest()),
                   lambda r: None if r.status == "SERVING" else f"health: {r}")

    @task(60)
    def execute(self) -> None:
        request = mcp_pb2.CommandRequest(command=COMMAND["command"], args=COMMAND["args"], timeout=COMMAND["timeout"])
        reply = self._call("execute", lambda: self._stub.ExecuteCommand(request),
                           lambda r: None if r.task_id.startswith("task-") else f"execute: {r}")
        if reply is not None:
            self.task_id = reply.task_id
            TASK_IDS.add(self.task_id)

    @task(30)
    def status(self) -> None:
        self._call("status", lambda: self._stub.GetTaskStatus(mcp_pb2.TaskStatusRequest(task_id=self.task_id)),
                   lambda r: None if r.task_info.task_id == self.task_id else f"status: {r}")
