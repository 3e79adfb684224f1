"""/bin/true through the sandbox library vs through the whole gateway (gRPC), in one run.

Prints the median and p99 of each, in milliseconds, and the ratio of the medians:

    .venv/bin/python bench/gateway_vs_sandbox.py [--runs 200] [--smoke]

The gateway path is: ExecuteCommand (validate, policy, audit, store, queue) + sandbox run +
polling GetTaskStatus until the task is final, measured at the client, on a real
``mcp-gateway serve --dev`` (unauthenticated calls are the development principal's; rate
limits off, the polling would hit them). The library path uses the same uid drop and
limits the gateway uses, both in a uid range of this bench's own. Numbers only:
benchmarks inform, tests decide.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from common import parse_args, percentile

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sandbox  # noqa: E402
from gateway.proto import mcp_pb2, mcp_pb2_grpc  # noqa: E402

POLL_S = float(os.environ.get("BENCH_POLL_S", "0.002"))  # GetTaskStatus poll interval
FIRST_UID = 260_000  # both paths: a range of its own, not the default one another gateway may hold
FINAL = {mcp_pb2.TASK_COMPLETED, mcp_pb2.TASK_FAILED, mcp_pb2.TASK_CANCELLED, mcp_pb2.TASK_TIMED_OUT}


def bench_library(runs: int) -> list[float]:
    """Milliseconds per ``sandbox.run`` of /bin/true, workspace creation included."""
    run_as = sandbox.RunAs(FIRST_UID, FIRST_UID) if os.geteuid() == 0 else None
    sandbox.set_child_subreaper()  # as the gateway does, so usage is measured the same way
    times = []
    with tempfile.TemporaryDirectory() as root:
        os.chmod(root, 0o711)
        for i in range(runs):
            start = time.perf_counter()
            workspace = Path(root) / str(i)
            workspace.mkdir(mode=0o700)
            if run_as:
                os.chown(workspace, run_as.uid, run_as.gid)
            spec = sandbox.SandboxSpec(argv=("/bin/true",), workspace=str(workspace), run_as=run_as,
                                       limits=sandbox.Limits(timeout_s=30))
            result = sandbox.run(spec)
            times.append((time.perf_counter() - start) * 1e3)
            assert result.exit_code == 0, result
    return times


def bench_gateway(runs: int) -> list[float]:
    """Milliseconds from ExecuteCommand to a final GetTaskStatus, for /bin/true."""
    with tempfile.TemporaryDirectory() as state:
        os.chmod(state, 0o711)  # the sandbox uid must reach the workspaces inside
        env = dict(os.environ, MCP_GATEWAY_SANDBOX__UID=str(FIRST_UID), MCP_GATEWAY_SANDBOX__GID=str(FIRST_UID),
                   MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__REQUESTS_PER_S="0",
                   MCP_GATEWAY_RATE_LIMITS__TENANT__REQUESTS_PER_S="0")
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mcp-gateway"), "serve", "--http-port", "0", "--grpc-port", "0",
             "--state-dir", state, "--log-level", "warning", "--dev"],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("listening "):
                raise SystemExit(f"gateway did not start (exit {proc.wait(timeout=30)}): {line!r}")
            grpc_addr = dict(p.split("=", 1) for p in line.split()[1:])["grpc"]
            with grpc.insecure_channel(grpc_addr) as channel:
                stub = mcp_pb2_grpc.McpServiceStub(channel)
                times, inside = [], []
                for _ in range(runs):
                    start = time.perf_counter()
                    created = stub.ExecuteCommand(mcp_pb2.CommandRequest(command="/bin/true", timeout=30))
                    while True:
                        status = stub.GetTaskStatus(mcp_pb2.TaskStatusRequest(task_id=created.task_id))
                        if status.task_info.status in FINAL:
                            break
                        time.sleep(POLL_S)
                    times.append((time.perf_counter() - start) * 1e3)
                    inside.append(float(status.result.execution_time_ms))
                    assert status.task_info.status == mcp_pb2.TASK_COMPLETED and status.result.exit_code == 0, (
                        f"{mcp_pb2.TaskStatus.Name(status.task_info.status)}: {status.result}")
                print(f"gateway-reported sandbox time: median {statistics.median(inside):.1f} ms")
                return times
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    """Run both paths and print medians, p99s and the ratio."""
    parser = argparse.ArgumentParser(description="/bin/true: sandbox library vs gateway over gRPC")
    parser.add_argument("--runs", type=int, default=200)
    runs = parse_args(parser, smoke={"runs": 3}).runs
    library = bench_library(runs)
    gateway = bench_gateway(runs)
    lib_med, gw_med = statistics.median(library), statistics.median(gateway)
    print(f"runs per path: {runs}")
    print(f"sandbox library  median {lib_med:7.2f} ms   p99 {percentile(library, 99):7.2f} ms")
    print(f"gateway (gRPC)   median {gw_med:7.2f} ms   p99 {percentile(gateway, 99):7.2f} ms")
    print(f"ratio gateway/library (medians): {gw_med / lib_med:.2f}x   overhead {gw_med - lib_med:.2f} ms")


if __name__ == "__main__":
    main()
