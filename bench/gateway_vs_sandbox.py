"""/bin/true through the sandbox library vs through the whole gateway, in one run: the
latency a caller sees and the CPU each task costs.

    .venv/bin/python bench/gateway_vs_sandbox.py [--runs 1000] [--block 50] [--profile DIR] [--smoke]

Paths, run in turns of ``--block`` tasks each (library, then every gateway path, again and
again), so drift in the machine's load falls on all of them alike:

- ``library``: ``sandbox.run`` of /bin/true in this process, run the way the gateway runs a
  task (``sandbox_library.Library``: the same spec, uid drop, fresh workspace and cgroup
  slot), in a uid range of this bench's own;
- ``gRPC wait``: ``ExecuteCommandAndWait`` (one round trip: the answer is the final task);
- ``REST wait``: ``POST /v1/execute?wait=30`` (200 with the final task);
- ``gRPC poll``: ``ExecuteCommand``, then ``GetTaskStatus`` every 2 ms until final (how a
  client of the first public version waits).

The gateway is a real ``mcp-gateway serve --dev`` (request rate limits off: the polling
would hit them). Printed per path: median and p99 latency in ms and the median's ratio to
the library's (target for the wait paths: at most 1.25), and CPU per task in ms:

- library: this process's user + system time (getrusage) during its turns, which is
  the supervisor's own share of a sandbox (spawn, pipes, reaping, cgroup reads), not
  the sandboxed processes';
- gateway: the gateway process's utime + stime (/proc/PID/stat fields 14 and 15, all its
  threads, not its children) plus its policy workers', during that path's turns. The
  gateway runs the same supervisor in-process, so its CPU beyond the library's is what
  the gateway itself costs (target, issue 17: under 2 ms).

``--profile DIR`` then records the gateway with py-spy (``--gil``: the Python code that
holds the interpreter, i.e. its CPU) over ``--runs`` more gRPC wait tasks and writes
``DIR/gateway-grpc-wait.svg`` (flame graph) and ``.txt`` (collapsed stacks).
Numbers only: benchmarks inform, tests decide.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
from common import Report, children, cpu_seconds, parse_args, percentile
from sandbox_library import Library

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.proto import mcp_pb2, mcp_pb2_grpc  # noqa: E402
from tests.conftest import start_gateway  # noqa: E402

POLL_S = float(os.environ.get("BENCH_POLL_S", "0.002"))  # GetTaskStatus poll interval
FIRST_UID = 260_000  # both paths: a range of its own, not the default one another gateway may hold
FINAL = {mcp_pb2.TASK_COMPLETED, mcp_pb2.TASK_FAILED, mcp_pb2.TASK_CANCELLED, mcp_pb2.TASK_TIMED_OUT}
TRUE = "/bin/true"


class Clients:
    """The three ways of calling the gateway for one /bin/true task."""

    def __init__(self, grpc_addr: str, http_url: str) -> None:
        self._channel = grpc.insecure_channel(grpc_addr)
        self._stub = mcp_pb2_grpc.McpServiceStub(self._channel)
        self._http = httpx.Client(base_url=http_url, timeout=60)

    def grpc_wait(self) -> None:
        reply = self._stub.ExecuteCommandAndWait(mcp_pb2.ExecuteAndWaitRequest(
            request=mcp_pb2.CommandRequest(command=TRUE, timeout=30), wait_seconds=30))
        _check(reply)

    def rest_wait(self) -> None:
        reply = self._http.post("/v1/execute", params={"wait": 30}, json={"command": TRUE, "timeout": 30})
        body = reply.json()
        assert reply.status_code == 200 and body["task_info"]["status"] == "COMPLETED", reply.text
        assert body["result"]["exit_code"] == 0, reply.text

    def grpc_poll(self) -> None:
        created = self._stub.ExecuteCommand(mcp_pb2.CommandRequest(command=TRUE, timeout=30))
        while True:
            status = self._stub.GetTaskStatus(mcp_pb2.TaskStatusRequest(task_id=created.task_id))
            if status.task_info.status in FINAL:
                break
            time.sleep(POLL_S)
        _check(status)

    def close(self) -> None:
        self._http.close()
        self._channel.close()


def _check(reply: mcp_pb2.TaskStatusResponse) -> None:
    assert reply.task_info.status == mcp_pb2.TASK_COMPLETED and reply.result.exit_code == 0, (
        f"{mcp_pb2.TaskStatus.Name(reply.task_info.status)}: {reply.result}")


def measure(paths: dict[str, Callable[[], None]], cpu: dict[str, Callable[[], float]], runs: int,
            block: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """``(latencies in ms per path, CPU seconds per path)`` of ``runs`` tasks per path, in
    turns of ``block``; ``cpu[path]()`` reads the CPU clock that path is charged on."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    used = dict.fromkeys(paths, 0.0)
    for task in paths.values():  # warm up: caches, the filter, connections, workers
        for _ in range(min(20, runs)):
            task()
    while any(len(t) < runs for t in times.values()):
        for name, task in paths.items():
            turn = min(block, runs - len(times[name]))
            before = cpu[name]()
            for _ in range(turn):
                start = time.perf_counter()
                task()
                times[name].append((time.perf_counter() - start) * 1e3)
            used[name] += cpu[name]() - before
    return times, used


def profile(pid: int, task: Callable[[], None], runs: int, out_dir: Path) -> None:
    """py-spy flame graph (and collapsed stacks) of the gateway over ``runs`` tasks."""
    py_spy = Path(sys.executable).parent / "py-spy"
    out_dir.mkdir(parents=True, exist_ok=True)
    recorders = [
        subprocess.Popen([str(py_spy), "record", "--pid", str(pid), "--gil", "--rate", "500", "--format", fmt,
                          "--output", str(out_dir / f"gateway-grpc-wait.{ext}")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for fmt, ext in (("flamegraph", "svg"), ("raw", "txt"))
    ]
    time.sleep(1.0)  # py-spy attaches
    for _ in range(runs):
        task()
    for recorder in recorders:
        recorder.send_signal(2)  # SIGINT: py-spy writes its output and exits
        _, err = recorder.communicate(timeout=60)
        if recorder.returncode != 0:
            print(f"py-spy failed ({recorder.returncode}): {err.strip()[-500:]}")
    print(f"profile of {runs} gRPC wait tasks: {out_dir / 'gateway-grpc-wait.svg'}")


def main() -> None:
    """Run every path in turns and print one table."""
    parser = argparse.ArgumentParser(description="/bin/true: sandbox library vs gateway, latency and CPU")
    parser.add_argument("--runs", type=int, default=1000, help="tasks per path")
    parser.add_argument("--block", type=int, default=50, help="tasks per turn")
    parser.add_argument("--profile", type=Path, default=None, help="write a py-spy flame graph into this directory")
    args = parse_args(parser, smoke={"runs": 3, "block": 2})
    with tempfile.TemporaryDirectory() as root:
        os.chmod(root, 0o711)  # the sandbox uid must reach the workspaces inside
        library = Library((TRUE,), FIRST_UID, 1)
        gateway = start_gateway(
            Path(root) / "gateway" / "var", "--log-level", "warning",
            env={"MCP_GATEWAY_SANDBOX__UID": str(FIRST_UID + 1000), "MCP_GATEWAY_SANDBOX__GID": str(FIRST_UID + 1000),
                 "MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__REQUESTS_PER_S": "0",
                 "MCP_GATEWAY_RATE_LIMITS__TENANT__REQUESTS_PER_S": "0"})
        clients = Clients(gateway.grpc_addr, gateway.http_url)
        try:
            pid = gateway.proc.pid
            workers = children(pid)

            def gateway_cpu() -> float:
                return cpu_seconds(pid) + sum(cpu_seconds(w) for w in workers)

            def own_cpu() -> float:
                usage = resource.getrusage(resource.RUSAGE_SELF)
                return usage.ru_utime + usage.ru_stime

            def library_task() -> None:
                error = library.task()
                assert error is None, error

            paths = {"library": library_task, "gRPC wait": clients.grpc_wait, "REST wait": clients.rest_wait,
                     "gRPC poll": clients.grpc_poll}
            times, used = measure(paths, {name: own_cpu if name == "library" else gateway_cpu for name in paths},
                                  args.runs, args.block)
            if args.profile is not None:
                profile(pid, clients.grpc_wait, args.runs, args.profile)
        finally:
            clients.close()
            gateway.stop()
            library.close()
    lib_median = statistics.median(times["library"])
    lib_cpu_ms = used["library"] / args.runs * 1e3
    print(f"\n/bin/true, {args.runs} tasks per path in turns of {args.block}, cpus={os.cpu_count()}")
    print(f"{'path':<11} | {'median ms':>9} | {'p99 ms':>7} | {'x library':>9} | {'CPU ms/task':>11} | "
          f"{'CPU beyond library':>18}")
    for name, samples in times.items():
        median, cpu_ms = statistics.median(samples), used[name] / args.runs * 1e3
        beyond = "" if name == "library" else f"{cpu_ms - lib_cpu_ms:.2f}"
        print(f"{name:<11} | {median:>9.2f} | {percentile(samples, 99):>7.2f} | {median / lib_median:>9.2f} | "
              f"{cpu_ms:>11.2f} | {beyond:>18}")
    print("targets (issue 17): wait paths <= 1.25 x library (median); gateway CPU beyond the library < 2 ms")
    report = Report()
    for name in ("gRPC wait", "REST wait"):
        report.figure(f"/bin/true to final result, {name} (median)", statistics.median(times[name]), "ms",
                      baseline=lib_median, baseline_name="sandbox library", target="<= 1.25 x")
    report.figure("gateway CPU per task beyond the library (gRPC wait)",
                  used["gRPC wait"] / args.runs * 1e3 - lib_cpu_ms, "ms", baseline=lib_cpu_ms,
                  baseline_name="library CPU per task", target="< 2 ms")
    for name in ("library", "gRPC wait", "REST wait"):
        report.samples(f"/bin/true: {name}", times[name])
    report.write(args)


if __name__ == "__main__":
    main()
