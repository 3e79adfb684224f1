"""Shared fixtures: a real ``mcp-gateway serve`` process on free ports, and gRPC JSON clients.

The gRPC client is the real ``grpcurl`` (built by this test setup with ``go install`` at a
pinned version when a Go toolchain is present) or, where it cannot be had, a grpcio client
that also works purely through server reflection; the fallback is printed, never hidden.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tests.pg_server import postgres_dsn, postgres_server  # noqa: F401
from tests.procs import as_user  # noqa: F401 (the tests import it from here)

REPO = Path(__file__).resolve().parent.parent
GRPCURL_VERSION = "v1.9.3"
TOOLS_BIN = REPO / ".tools" / "bin"
GATEWAY_BIN = Path(sys.executable).parent / "mcp-gateway"


@dataclass
class GatewayProcess:
    """A running gateway: its addresses, state directory and process."""

    proc: subprocess.Popen[str]
    grpc_addr: str
    http_url: str
    state_dir: Path
    stderr_path: Path

    @property
    def audit_path(self) -> Path:
        return self.state_dir / "audit.jsonl"

    def audit_events(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line.strip()]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


_UID_BASES: dict[Path, int] = {}


def _uid_range_env(state_dir: Path) -> dict[str, str]:
    """A sandbox uid range of its own per state directory: gateways that run side by side
    must not share sandbox uids (the gateway refuses to start on a range in use), while a
    restart on the same state directory reuses its range, as a real restart would."""
    base = _UID_BASES.setdefault(state_dir.resolve(), 100_000 + 1_000 * len(_UID_BASES))
    return {"MCP_GATEWAY_SANDBOX__UID": str(base), "MCP_GATEWAY_SANDBOX__GID": str(base)}


def start_gateway(state_dir: Path, *extra_args: str, env: dict[str, str] | None = None,
                  timeout_s: float = 30.0, dev: bool = True) -> GatewayProcess:
    """Start ``mcp-gateway serve`` on free ports and wait for its ``listening`` line
    (``--dev``, unauthenticated calls allowed, unless ``dev`` is False)."""
    env = {**_uid_range_env(state_dir), **(env or {})}
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.parent.chmod(0o711)  # mkdtemp makes 0700; the sandbox uid must traverse it
    stderr_path = state_dir.parent / f"{state_dir.name}-gateway.stderr"
    cmd = [str(GATEWAY_BIN), "serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
           "--state-dir", str(state_dir), *(["--dev"] if dev else []), *extra_args]
    stderr = open(stderr_path, "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True,
                            env={**os.environ, **env}, cwd=str(REPO))
    stderr.close()
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("listening "):
            parts = dict(p.split("=", 1) for p in line.split()[1:])
            return GatewayProcess(proc, parts["grpc"], f"http://{parts['http']}", state_dir, stderr_path)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    proc.stdout.close()
    raise RuntimeError(f"gateway did not start (exit {proc.returncode}):\n{stderr_path.read_text()}")


@pytest.fixture(scope="session")
def state_root() -> Iterator[Path]:
    """A directory the sandbox uid can traverse (pytest's own tmp is 0700 under root), for
    gateway state dirs; removed at the end of the session."""
    root = Path(tempfile.mkdtemp(prefix="mcp-gw-tests-", dir="/tmp"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def gateway(state_root: Path, request: pytest.FixtureRequest) -> Iterator[GatewayProcess]:
    """One gateway process per test module."""
    gw = start_gateway(Path(tempfile.mkdtemp(prefix=request.module.__name__.rsplit(".", 1)[-1] + "-",
                                             dir=state_root)) / "var")
    yield gw
    code = gw.stop()
    assert code == 0, f"gateway exited {code}:\n{gw.stderr_path.read_text()}"


@pytest.fixture(scope="module")
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    """An httpx client bound to the gateway's HTTP port."""
    with httpx.Client(base_url=gateway.http_url, timeout=30) as client:
        yield client


# -- gRPC over reflection: grpcurl or the grpcio fallback ----------------------------


@dataclass
class GrpcReply:
    """Outcome of one unary call: ``body`` (proto JSON, field names as in the .proto) or an
    error ``code`` name with its ``error_details`` (the parsed trailing metadata)."""

    body: dict[str, Any] | None
    code: str = "OK"
    message: str = ""
    error_details: dict[str, Any] | None = None


def _find_or_build_grpcurl() -> tuple[str | None, str]:
    found = shutil.which("grpcurl") or (str(TOOLS_BIN / "grpcurl") if (TOOLS_BIN / "grpcurl").exists() else None)
    if found:
        return found, "found"
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        return None, "no Go toolchain on this machine to build grpcurl"
    TOOLS_BIN.mkdir(parents=True, exist_ok=True)
    build = subprocess.run(
        [go, "install", f"github.com/fullstorydev/grpcurl/cmd/grpcurl@{GRPCURL_VERSION}"],
        env={**os.environ, "GOBIN": str(TOOLS_BIN), "CGO_ENABLED": "0"},
        capture_output=True, text=True, timeout=900,
    )
    if build.returncode != 0:
        return None, f"go install grpcurl failed: {build.stderr.strip()[-500:]}"
    return str(TOOLS_BIN / "grpcurl"), "built"


class Grpcurl:
    """The real grpcurl, talking to the gateway through server reflection."""

    name = "grpcurl"

    def __init__(self, binary: str, addr: str) -> None:
        self.binary, self.addr = binary, addr

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, "-plaintext", *args], capture_output=True, text=True, timeout=60,
                              input=stdin)

    def call(self, method: str, body: dict[str, Any] | str) -> GrpcReply:
        data = body if isinstance(body, str) else json.dumps(body)
        # "-d @": the request comes on stdin, so large requests do not hit the argv limit.
        out = self.run("-format-error", "-emit-defaults", "-use-reflection", "-d", "@", self.addr,
                       f"mcp.McpService/{method}", stdin=data)
        if out.returncode == 0:
            return GrpcReply(json.loads(out.stdout))  # grpcurl prints the .proto field names
        err = json.loads(out.stdout or out.stderr)
        details = None
        # grpcurl prints trailers on stderr with -v only; ask again verbosely for them.
        verbose = self.run("-v", "-use-reflection", "-d", "@", self.addr, f"mcp.McpService/{method}", stdin=data)
        for line in (verbose.stdout + verbose.stderr).splitlines():
            if line.startswith("error-details: "):
                details = json.loads(line.split(": ", 1)[1])
        return GrpcReply(None, _code_name(err.get("code")), err.get("message", ""), details)


class ReflectionClient:
    """A grpcio client that learns McpService from server reflection (grpcurl fallback)."""

    name = "grpcio-reflection"

    def __init__(self, addr: str) -> None:
        self.channel = grpc.insecure_channel(addr)
        self.pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(self.channel))
        self.service = self.pool.FindServiceByName("mcp.McpService")

    def call(self, method: str, body: dict[str, Any] | str) -> GrpcReply:
        desc = self.service.FindMethodByName(method)
        req_cls = message_factory.GetMessageClass(desc.input_type)
        resp_cls = message_factory.GetMessageClass(desc.output_type)
        stub = self.channel.unary_unary(f"/mcp.McpService/{method}", request_serializer=req_cls.SerializeToString,
                                        response_deserializer=resp_cls.FromString)
        request = json_format.Parse(body if isinstance(body, str) else json.dumps(body), req_cls())
        try:
            response = stub(request, timeout=60)
        except grpc.RpcError as err:
            details = dict(err.trailing_metadata() or ()).get("error-details")  # type: ignore[attr-defined]
            return GrpcReply(None, err.code().name, err.details(), json.loads(details) if details else None)  # type: ignore[attr-defined]
        return GrpcReply(json_format.MessageToDict(response, preserving_proto_field_name=True,
                                                   always_print_fields_with_no_presence=True))


def _code_name(code: Any) -> str:
    """grpcurl's -format-error gives the numeric status; map it to the StatusCode name."""
    if isinstance(code, int):
        return next(c.name for c in grpc.StatusCode if c.value[0] == code)
    return str(code)


@pytest.fixture(scope="session")
def grpcurl_binary() -> str | None:
    """Path of the real grpcurl, or None (with the reason printed) where it cannot be had."""
    binary, how = _find_or_build_grpcurl()
    if binary is None:
        print(f"\n[grpcurl unavailable: {how}; using the grpcio reflection client instead]", file=sys.stderr)
    return binary


@pytest.fixture(scope="module")
def grpc_client(gateway: GatewayProcess, grpcurl_binary: str | None) -> Grpcurl | ReflectionClient:
    """grpcurl when available, else the grpcio reflection client."""
    if grpcurl_binary:
        return Grpcurl(grpcurl_binary, gateway.grpc_addr)
    return ReflectionClient(gateway.grpc_addr)


def wait_final(call: Any, task_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Poll ``call(task_id)`` (returning a status dict with ``task_info.status``) until final."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = call(task_id)
        if status["task_info"]["status"].removeprefix("TASK_") in {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} not final after {timeout_s}s: {status}")
        time.sleep(0.02)


def wait_until(condition: Any, timeout_s: float = 3.0, what: str = "condition", interval_s: float = 0.005) -> Any:
    """Poll ``condition()`` every ``interval_s`` seconds until it returns a truthy value
    (returned), or fail after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(interval_s)
