"""Sandboxed ``echo hello`` tasks per second: the sandbox library vs the whole gateway (gRPC).

    .venv/bin/python bench/throughput.py [--tasks 400] [--concurrency 1,4,16]
                                         [--memory-tasks 10000] [--skip-memory] [--smoke]

For each concurrency level c, ``--tasks`` tasks through each path (library first, then
the gateway, so both see the same machine state); tasks/s = tasks / wall time:
- library: c threads each calling ``sandbox.run`` with the spec the gateway's task manager
  builds (``TaskManager._spec``: the ``user`` role's grant, a uid of its own per run from
  one range, a fresh workspace per run, a cgroup slot when the host has them);
- gateway: c client threads each calling ExecuteCommandAndWait (one round trip, answered
  when the task ends). This is the full request path (validate, policy decision, audit,
  store, queue, sandbox run, output log, store result, answer). The gateway runs up to max(c) sandboxes, but at most c tasks are in flight, so
  both paths run at most c sandboxes at once.
Target: gateway/library >= 0.80 at concurrency 4.

Memory (same gateway process): ``--memory-tasks`` more tasks at the highest concurrency,
then the gateway's VmRSS/VmHWM and its child processes' (policy workers) RSS, from
/proc/PID/status. Target: gateway RSS < 200 MB after 10,000 tasks.

A task that is not COMPLETED with exit code 0, or an RPC error, is counted and printed.
Numbers only: PASS/MISS lines inform, the exit status is 0 unless the script crashes.
Run as root (drops to a uid range like the gateway).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from common import Report, children, memory_mb, parse_args
from sandbox_library import Library

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.proto import mcp_pb2, mcp_pb2_grpc  # noqa: E402

FIRST_UID = 270_000  # both paths use this range, not the default one another gateway may hold
TIMEOUT_S = 30
Task = Callable[[], "str | None"]  # runs one task; returns an error text, or None when it succeeded


def run_round(task: Task, tasks: int, concurrency: int) -> tuple[float, list[str]]:
    """``(tasks per second, errors)`` of ``concurrency`` threads claiming ``tasks`` calls."""
    lock, claimed, errors = threading.Lock(), [0], []

    def worker() -> None:
        while True:
            with lock:
                if claimed[0] >= tasks:
                    return
                claimed[0] += 1
            error = task()
            if error is not None:
                with lock:
                    errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tasks / (time.perf_counter() - start), errors


class Gateway:
    """A real ``mcp-gateway serve`` on free ports with a temporary state dir."""

    def __init__(self, max_concurrent: int) -> None:
        self._state = tempfile.TemporaryDirectory(prefix="throughput-gw-")
        os.chmod(self._state.name, 0o711)  # the sandbox uids must reach the workspaces inside
        env = dict(os.environ, MCP_GATEWAY_TASKS__MAX_CONCURRENT=str(max_concurrent),
                   MCP_GATEWAY_TASKS__MAX_QUEUED="100000",
                   # the bench measures throughput, not the limits: one principal, no caps
                   MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__REQUESTS_PER_S="0",
                   MCP_GATEWAY_RATE_LIMITS__TENANT__REQUESTS_PER_S="0",
                   MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__CONCURRENT_TASKS="0",
                   MCP_GATEWAY_RATE_LIMITS__TENANT__CONCURRENT_TASKS="0",
                   # ... and no admission bound below the bench's own concurrency
                   MCP_GATEWAY_ADMISSION__GRPC_IN_FLIGHT="0", MCP_GATEWAY_ADMISSION__PRINCIPAL_IN_FLIGHT="0",
                   MCP_GATEWAY_SANDBOX__UID=str(FIRST_UID), MCP_GATEWAY_SANDBOX__GID=str(FIRST_UID),
                   MCP_GATEWAY_SANDBOX__UID_COUNT=str(max_concurrent))
        self._proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mcp-gateway"), "serve", "--http-port", "0", "--grpc-port", "0",
             "--state-dir", self._state.name, "--log-level", "warning", "--dev"],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("listening "):
            self.close()
            raise SystemExit(f"gateway did not start (exit {self._proc.returncode}): {line!r}")
        self.pid = self._proc.pid
        self._channel = grpc.insecure_channel(dict(p.split("=", 1) for p in line.split()[1:])["grpc"])
        self._stub = mcp_pb2_grpc.McpServiceStub(self._channel)

    def task(self) -> str | None:
        """ExecuteCommandAndWait(echo hello): one round trip, answered when the task ends
        (how a caller runs a short command); it must be COMPLETED, exit code 0, stdout
        ``hello``."""
        try:
            reply = self._stub.ExecuteCommandAndWait(mcp_pb2.ExecuteAndWaitRequest(
                request=mcp_pb2.CommandRequest(command="echo", args=["hello"], timeout=TIMEOUT_S),
                wait_seconds=TIMEOUT_S))
        except grpc.RpcError as exc:
            return f"gateway: {exc.code().name}: {exc.details()}"
        if (reply.task_info.status != mcp_pb2.TASK_COMPLETED or reply.result.exit_code != 0
                or reply.result.stdout != "hello\n"):
            return f"gateway: {mcp_pb2.TaskStatus.Name(reply.task_info.status)} {reply.result}"
        return None

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=60)
        self._state.cleanup()


def print_memory(label: str, pid: int) -> float:
    """Print the gateway's and its children's RSS; return the gateway's own RSS in MB."""
    own = memory_mb(pid)
    kids = []
    for child in children(pid):
        try:
            comm = Path(f"/proc/{child}/comm").read_text().strip()
            kids.append((child, comm, memory_mb(child).get("VmRSS", 0.0)))
        except OSError:
            continue
    total = own["VmRSS"] + sum(rss for _, _, rss in kids)
    print(f"{label}: gateway VmRSS {own['VmRSS']:.1f} MB VmHWM {own['VmHWM']:.1f} MB; children "
          + (", ".join(f"{c} ({comm}) {rss:.1f} MB" for c, comm, rss in kids) or "none")
          + f"; total RSS {total:.1f} MB")
    return own["VmRSS"]


def report_errors(label: str, errors: list[str]) -> None:
    """Print how many of a round's tasks failed (``errors``: one message each) and the first."""
    if errors:
        print(f"  {label}: {len(errors)} error(s), first: {errors[0]}")


def main() -> None:
    """Run the throughput rounds, then the memory phase, and print the tables."""
    parser = argparse.ArgumentParser(description="echo tasks/s: sandbox library vs gateway over gRPC")
    parser.add_argument("--tasks", type=int, default=400, help="tasks per path per concurrency level")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    parser.add_argument("--memory-tasks", type=int, default=10_000)
    parser.add_argument("--skip-memory", action="store_true")
    args = parse_args(parser, smoke={"tasks": 4, "concurrency": "1,4", "memory_tasks": 4})
    levels = [int(c) for c in args.concurrency.split(",")]
    top = max(levels)
    library = Library(("echo", "hello"), FIRST_UID, top)
    gateway: Gateway | None = None
    try:
        gateway = Gateway(top)
        start_rss = print_memory("after start", gateway.pid)
        for name, task in (("library", library.task), ("gateway", gateway.task)):
            _, errors = run_round(task, 2 * top, top)  # warm-up: filter cache, workers, store
            report_errors(f"warm-up {name}", errors)
        rows, total_errors = [], 0
        for c in levels:
            lib_rate, lib_errors = run_round(library.task, args.tasks, c)
            gw_rate, gw_errors = run_round(gateway.task, args.tasks, c)
            rows.append((c, lib_rate, gw_rate, len(lib_errors), len(gw_errors)))
            total_errors += len(lib_errors) + len(gw_errors)
            report_errors(f"concurrency {c} library", lib_errors)
            report_errors(f"concurrency {c} gateway", gw_errors)
        print(f"\n{args.tasks} echo tasks per path per level (gateway: ExecuteCommandAndWait), cpus={os.cpu_count()}, "
              f"cgroups={'v%d' % library.cgroups.version if library.cgroups else 'none'}, "
              f"uid per run={os.geteuid() == 0}")
        print(f"{'concurrency':>11} | {'library tasks/s':>15} | {'gateway tasks/s':>15} | {'ratio':>5} | errors lib/gw")
        for c, lib_rate, gw_rate, lib_err, gw_err in rows:
            print(f"{c:>11} | {lib_rate:>15.1f} | {gw_rate:>15.1f} | {gw_rate / lib_rate:>5.2f} | {lib_err}/{gw_err}")
        report = Report()
        for c, lib_rate, gw_rate, _, _ in rows:
            if c in (4, 16):
                report.figure(f"echo tasks/s at concurrency {c}", gw_rate, "tasks/s", baseline=lib_rate,
                              baseline_name="sandbox library", target=">= 0.8 x" if c == 4 else ">= 0.9 x")
        report.figure("errors in throughput rounds", total_errors, "", target="== 0")
        at4 = [gw / lib for c, lib, gw, _, _ in rows if c == 4]
        if at4:
            print(f"target: ratio >= 0.80 at concurrency 4: {at4[0]:.2f} {'PASS' if at4[0] >= 0.80 else 'MISS'}")
        print(f"errors in throughput rounds: {total_errors}")
        if not args.skip_memory:
            print()
            before = print_memory("before memory phase", gateway.pid)
            rate, errors = run_round(gateway.task, args.memory_tasks, top)
            after = print_memory(f"after {args.memory_tasks} more tasks", gateway.pid)
            report_errors("memory phase", errors)
            print(f"memory phase: {args.memory_tasks} tasks at concurrency {top}: {rate:.1f} tasks/s, "
                  f"errors {len(errors)}; gateway RSS growth {after - before:+.1f} MB "
                  f"({after - start_rss:+.1f} MB since start)")
            print(f"target: gateway RSS < 200 MB after {args.memory_tasks} tasks: {after:.1f} MB "
                  f"{'PASS' if after < 200 else 'MISS'}")
            report.figure(f"gateway RSS after {args.memory_tasks} more tasks", after, "MB", baseline=start_rss,
                          baseline_name="RSS after start", target="< 200 MB")
        report.write(args)
    finally:
        if gateway is not None:
            gateway.close()
        library.close()


if __name__ == "__main__":
    main()
