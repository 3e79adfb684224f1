"""Audit write cost: events/s and per-event latency for each fsync policy, and the time the
audit step adds to a request.

Each row writes ``--events`` realistic ``decision`` events through the real
:class:`gateway.audit.log.AuditLog` (chain, canonical JSON, sinks, signed checkpoints every
1000 events) into a file on the repository's file system (not /tmp, which may be tmpfs,
where fsync costs nothing), from one thread (latency) and from ``--threads`` threads
(throughput). The baseline is the irreducible part measured in the same run: the same line
``os.write``-n to a file with no chain, no check and no fsync.

    .venv/bin/python bench/audit.py [--events N] [--threads T]

The audit step a request pays is one ``emit`` (the decision event; the task end is
written after the answer): the median of the ``interval`` row, target under 0.2 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import parse_args  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from gateway.audit.chain import canonical_json  # noqa: E402
from gateway.audit.log import AuditLog, args_sha256, redact_command  # noqa: E402
from gateway.audit.signing import CheckpointSigner  # noqa: E402
from gateway.audit.sinks import AuditSink, FileSink, WebhookSink  # noqa: E402
from gateway.models import Principal, RequestContext  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TARGET_MS = 0.2
CTX = RequestContext(
    transport="grpc", method="ExecuteCommand", client_addr="ipv4:127.0.0.1:50000", request_id="r",
    session_id="conn-0123456789abcdef0123456789abcdef", server_host="127.0.0.1", server_port=8081,
    client_process="grpc-python/1.85.1", request_bytes=96,
)
PRINCIPAL = Principal(id="ci-runner", tenant="acme", roles=("user",), scopes=("tasks:execute",),
                      auth_scheme="bearer", credential_sha256="ab" * 32)


def decision_fields(i: int) -> dict[str, Any]:
    """The keys the service adds to a typical ``decision`` event."""
    args = ["-c", f"print({i})"]
    return {
        "task_id": f"task-{i:032x}", "tool_name": "execute_command", "command": redact_command("python3", args),
        "command_sha256": "cd" * 32, "args_sha256": args_sha256(args), "decision": "allow",
        "policy_rule": "allow.interpreter", "policy_revision": "sha256:" + "ef" * 8, "policy_engine": "embedded",
        "decision_id": f"{i:032x}", "request_bytes": 96, "tool_invoke_count": i + 1,
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Collector(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        pass


def run_policy(directory: Path, fsync: str, events: int, threads: int,
               copies: Callable[[], list[AuditSink]] = list) -> dict[str, float]:
    """Write ``events`` from one thread (timing each ``emit``), then ``events`` from
    ``threads`` threads; returns ``{"p50_ms", "p99_ms", "single_eps", "multi_eps"}``."""
    path = directory / f"audit-{fsync}-{len(os.listdir(directory))}.jsonl"
    signer = CheckpointSigner.of(Ed25519PrivateKey.generate())
    log = AuditLog(FileSink(path, fsync=fsync, fsync_interval_s=1.0), copies(), signer=signer)
    try:
        latencies = []
        started = time.perf_counter()
        for i in range(events):
            fields = decision_fields(i)
            t0 = time.perf_counter()
            log.emit("decision", CTX, PRINCIPAL, **fields)
            latencies.append((time.perf_counter() - t0) * 1000)
        single_eps = events / (time.perf_counter() - started)
        per_thread = max(1, events // threads)

        def worker(offset: int) -> None:
            for i in range(per_thread):
                log.emit("decision", CTX, PRINCIPAL, **decision_fields(offset + i))

        pool = [threading.Thread(target=worker, args=(k * per_thread,)) for k in range(threads)]
        started = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        multi_eps = per_thread * threads / (time.perf_counter() - started)
    finally:
        log.close()
    return {"p50_ms": statistics.median(latencies), "p99_ms": _percentile(latencies, 0.99),
            "single_eps": single_eps, "multi_eps": multi_eps}


def baseline(directory: Path, events: int) -> float:
    """Median ms of ``os.write`` of one finished line (no chain, no checks, no fsync)."""
    fd = os.open(directory / "baseline.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    line = (canonical_json({**decision_fields(0), "seq": 1, "hash": "0" * 64}) + "\n").encode()
    latencies = []
    try:
        for _ in range(events):
            t0 = time.perf_counter()
            os.write(fd, line)
            latencies.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
    return statistics.median(latencies)


def main() -> int:
    """Print the table; exit 1 when the ``interval`` median misses the target."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="events per row and phase")
    parser.add_argument("--threads", type=int, default=4, help="writer threads of the throughput phase")
    parser.add_argument("--dir", type=Path, default=REPO, help="where the audit files go (a disk, not tmpfs)")
    args = parse_args(parser, smoke={"events": 200})
    directory = Path(tempfile.mkdtemp(prefix=".bench-audit-", dir=args.dir))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/audit"
    try:
        base_ms = baseline(directory, args.events)
        rows = [(policy, run_policy(directory, policy, args.events, args.threads))
                for policy in ("always", "interval", "never")]
        rows.append(("interval+webhook", run_policy(directory, "interval", args.events, args.threads,
                                                    lambda: [WebhookSink(url)])))
    finally:
        server.shutdown()
        shutil.rmtree(directory, ignore_errors=True)
    print(f"audit events, {args.events} per phase, {args.threads} threads for events/s (threaded)")
    print(f"{'fsync':<17}| p50 ms | p99 ms | events/s (1 thread) | events/s ({args.threads} threads) | p50 / baseline")
    for policy, r in rows:
        print(f"{policy:<17}| {r['p50_ms']:6.3f} | {r['p99_ms']:6.3f} | {r['single_eps']:19.0f} | "
              f"{r['multi_eps']:20.0f} | {r['p50_ms'] / base_ms:6.1f}x")
    print(f"baseline os.write of the finished line: median {base_ms:.4f} ms")
    step = dict(rows)["interval"]["p50_ms"]
    met = step < TARGET_MS
    print(f"audit step per request (interval, median): {step:.3f} ms; target < {TARGET_MS} ms: "
          f"{'met' if met else 'MISSED'}")
    return 0 if met or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
