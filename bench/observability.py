"""What tracing costs: the latency of an ``echo`` task with tracing off, on at sampling 1.0,
and on at 0.01, in one run, against a second tracing-off gateway for the noise floor.

    .venv/bin/python bench/observability.py [--runs 300] [--smoke]

Four real ``mcp-gateway serve --dev`` processes run side by side (each in a uid range of
its own): two without ``OTEL_*``, two with ``OTEL_TRACES_EXPORTER=otlp`` and
``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` at 1.0 and 0.01, exporting with the real
OTLP/gRPC exporter (batch processor, the gateway's defaults) to a receiver that counts the
spans. The receiver is a process of its own, as a collector would be: in the client's
process, decoding the traced gateways' batches took the client's GIL while it timed their
tasks. Each round sends one task to each gateway in turn (ExecuteCommand of ``echo``,
then either the output stream until its exit entry, or GetTaskStatus every 2 ms until
final: every poll is a call with spans of its own), timed at the client, in an order that
rotates every round, so drift in the machine's load and what one gateway's task leaves
behind for the next fall on all four alike. Printed: median and p99 ms per variant and way of
waiting, the medians' ratio to tracing off, the gateway process's CPU per task (all its
threads), and the spans received. Target (issue 15): at most 5 % added at 1.0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from common import cpu_seconds, parse_args, percentile
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.proto import mcp_pb2, mcp_pb2_grpc  # noqa: E402
from tests.conftest import GatewayProcess, start_gateway  # noqa: E402

FIRST_UID = 290_000  # ranges of this bench's own, 1000 apart
POLL_S = 0.002
FINAL = {mcp_pb2.TASK_COMPLETED, mcp_pb2.TASK_FAILED, mcp_pb2.TASK_CANCELLED, mcp_pb2.TASK_TIMED_OUT}
# "tracing off, again": a second gateway like the first, whose difference from it is the
# noise floor of the run (two equal gateways never measure exactly alike).
VARIANTS = {"tracing off": None, "tracing off, again": None, "tracing on, sampling 1.0": "1.0",
            "tracing on, sampling 0.01": "0.01"}
WAITS = ("stream", "poll")


class SpanCounter(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC receiver that counts the spans it is sent."""

    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the OTLP service's name
        with self._lock:
            self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


class _HttpReceiver(BaseHTTPRequestHandler):
    """OTLP/HTTP (``POST /v1/traces``, protobuf) into the same counter."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(
            self.rfile.read(int(self.headers["content-length"])))
        self.server.counter.Export(request, None)  # type: ignore[attr-defined]
        body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        pass


def serve_receiver() -> None:
    """The OTLP receiver process (``--receiver``): OTLP/gRPC and OTLP/HTTP on loopback,
    ports printed as ``ports GRPC HTTP``; prints ``spans N`` when its stdin closes."""
    counter = SpanCounter()
    receiver = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(counter, receiver)
    grpc_port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    http_receiver = ThreadingHTTPServer(("127.0.0.1", 0), _HttpReceiver)
    http_receiver.counter = counter  # type: ignore[attr-defined]
    threading.Thread(target=http_receiver.serve_forever, daemon=True).start()
    print(f"ports {grpc_port} {http_receiver.server_address[1]}", flush=True)
    sys.stdin.read()
    receiver.stop(1).wait()
    http_receiver.shutdown()
    print(f"spans {counter.spans}", flush=True)


def gateway_env(index: int, ratio: str | None, otlp_port: int, protocol: str) -> dict[str, str]:
    """The settings of variant ``index``: a sandbox uid range of its own, no request rate
    limit, and tracing at ``ratio`` (None: off)."""
    uid = str(FIRST_UID + 1000 * index)
    env = {"MCP_GATEWAY_SANDBOX__UID": uid, "MCP_GATEWAY_SANDBOX__GID": uid,
           "MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__REQUESTS_PER_S": "0",
           "MCP_GATEWAY_RATE_LIMITS__TENANT__REQUESTS_PER_S": "0"}
    if ratio is not None:
        env.update(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
                   OTEL_EXPORTER_OTLP_INSECURE="true", OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
                   OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG=ratio)
    return env


def one_task(stub: mcp_pb2_grpc.McpServiceStub, wait: str) -> float:
    """Milliseconds from ExecuteCommand of ``echo`` to its end: the exit-code entry of
    StreamTaskOutput (``wait="stream"``: two calls per task), or a final GetTaskStatus polled
    every 2 ms (``"poll"``: a call, and its spans, per poll)."""
    start = time.perf_counter()
    created = stub.ExecuteCommand(mcp_pb2.CommandRequest(command="echo", args=["hi"], timeout=30))
    if wait == "stream":
        for chunk in stub.StreamTaskOutput(mcp_pb2.TaskStatusRequest(task_id=created.task_id)):
            if chunk.type == mcp_pb2.CHUNK_EXIT_CODE:
                assert chunk.data == b"0", chunk.data
                break
        return (time.perf_counter() - start) * 1e3
    while True:
        status = stub.GetTaskStatus(mcp_pb2.TaskStatusRequest(task_id=created.task_id))
        if status.task_info.status in FINAL:
            break
        time.sleep(POLL_S)
    assert status.task_info.status == mcp_pb2.TASK_COMPLETED, mcp_pb2.TaskStatus.Name(status.task_info.status)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    """Run the variants round-robin and print the table."""
    parser = argparse.ArgumentParser(description="echo task latency with tracing off / on (1.0) / on (0.01)")
    parser.add_argument("--runs", type=int, default=300, help="tasks per variant")
    parser.add_argument("--protocol", choices=("grpc", "http/protobuf"), default="grpc",
                        help="OTEL_EXPORTER_OTLP_PROTOCOL of the traced gateways")
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parse_args(parser, smoke={"runs": 3})
    if args.receiver:
        return serve_receiver()
    runs = args.runs
    receiver = subprocess.Popen([sys.executable, __file__, "--receiver"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    assert receiver.stdin is not None and receiver.stdout is not None
    grpc_port, http_port = map(int, receiver.stdout.readline().split()[1:])
    otlp_port = grpc_port if args.protocol == "grpc" else http_port
    gateways: list[GatewayProcess] = []
    channels, stubs = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-otel-") as root:
        os.chmod(root, 0o711)
        try:
            for i, (name, ratio) in enumerate(VARIANTS.items()):
                gw = start_gateway(Path(root) / str(i) / "var", "--log-level", "warning",
                                   env=gateway_env(i, ratio, otlp_port, args.protocol))
                gateways.append(gw)
                channel = grpc.insecure_channel(gw.grpc_addr)
                channels.append(channel)
                stubs[name] = mcp_pb2_grpc.McpServiceStub(channel)
            for stub in stubs.values():  # warm up: policy workers, the store, the first sandboxes
                for _ in range(min(runs, 10)):
                    one_task(stub, "stream")
            times: dict[tuple[str, str], list[float]] = {(name, wait): [] for wait in WAITS for name in VARIANTS}
            cpu: dict[tuple[str, str], float] = {}
            order = list(stubs.items())
            pids = {name: gw.proc.pid for name, gw in zip(VARIANTS, gateways, strict=True)}
            for wait in WAITS:
                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                for i in range(runs):
                    # each variant takes each place in the round equally often: a task may meet
                    # the work the previous gateway's task left (output flush, cleanup)
                    for name, stub in order[i % len(order):] + order[:i % len(order)]:
                        times[name, wait].append(one_task(stub, wait))
                cpu.update({(name, wait): cpu_seconds(pid) - before[name] for name, pid in pids.items()})
        finally:
            for channel in channels:
                channel.close()
            for gw in gateways:  # a clean stop (SIGTERM) flushes the batch processors
                gw.stop()
            receiver.stdin.close()
            spans = int(receiver.stdout.readline().split()[1])
            receiver.stdout.close()
            receiver.wait(timeout=30)
    print(f"echo tasks per variant and wait: {runs} (gRPC ExecuteCommand, then the output stream's exit "
          "entry, or GetTaskStatus every 2 ms)")
    print(f"{'variant':28} | {'wait':6} | median ms | p99 ms | median vs off | gateway CPU ms/task")
    for (name, wait), values in times.items():
        median = statistics.median(values)
        base = statistics.median(times["tracing off", wait])
        print(f"{name:28} | {wait:6} | {median:9.2f} | {percentile(values, 99):6.2f} | {median / base:12.3f}x"
              f" | {cpu[name, wait] / runs * 1e3:19.2f}")
    print(f"spans received: {spans}")
    for wait in WAITS:
        added = statistics.median(times["tracing on, sampling 1.0", wait]) / statistics.median(
            times["tracing off", wait]) - 1
        print(f"added at sampling 1.0 ({wait}): {added * 100:+.1f} % (target at most +5 %): "
              f"{'met' if added <= 0.05 else 'MISSED'}")


if __name__ == "__main__":
    main()
