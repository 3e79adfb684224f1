"""Open-loop overload: what the gateway serves, sheds and how fast, at 0.5x, 1x and 2x capacity.

    .venv/bin/python bench/overload.py [--seconds 20] [--multiples 0.5,1,2] [--capacity N] [--json] [--smoke]

A real ``mcp-gateway serve --dev`` on free ports (request rate limits off: the bench
measures admission control, not the per-principal token buckets). The load is REST, sent
by vegeta (https://github.com/tsenart/vegeta, built once with ``go install`` into
``.tools/bin``: a Python client could not send 250 requests/s on this 2-core machine
without becoming the bottleneck itself). The mix, in vegeta's round-robin over 10
targets: ``GET /health`` 10 %, ``POST /v1/execute`` of ``echo`` 60 %, ``GET /v1/tasks/{id}``
of an existing task 30 %.

1. Capacity: a closed loop, 16 vegeta workers each sending the next request when the last
   is answered, for ``--seconds``/2; capacity = answers that were not refused (2xx) per second.
2. For each multiple m: vegeta schedules m x capacity requests per second, evenly spaced,
   and sends each at its time whether or not earlier ones have been answered (open loop:
   a slow server cannot slow the load down, so queueing shows in the latency).
   Meanwhile a thread probes gRPC ``grpc.health.v1.Health/Check`` 10 times a second.
3. After the last rate: every accepted task must reach a final state in the store and
   have exactly one ``task_end`` event in the audit file (nothing lost).

Printed per rate: offered/s, served/s (2xx), shed/s (429), other errors and timeouts (no
answer within 10 s), p50/p99 ms of admitted calls, p99 of refusals, p50/p99 of ``/health``
(REST) and p99 of gRPC Health. Targets (issue 13): under 2x overload admitted p99 < 100 ms,
health p99 < 50 ms, no errors but 429. PASS/MISS lines inform; the exit status is 0
unless the script crashes, or 1 when a task was lost.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import parse_args  # bench/ is sys.path[0] when run as a script

REPO = Path(__file__).resolve().parent.parent
FIRST_UID = 280_000  # a uid range of its own, not the default one another gateway may hold
REQUEST_TIMEOUT_S = 10.0
VEGETA_VERSION = "v12.12.0"
TOOLS_BIN = REPO / ".tools" / "bin"
MIX = ("health",) + ("execute",) * 6 + ("status",) * 3  # round-robin: 10 % / 60 % / 30 %
EXECUTE_BODY = {"command": "echo", "args": ["hello"], "timeout": 30}


@dataclass
class Gateway:
    """A real ``mcp-gateway serve --dev`` on free ports with a temporary state dir."""

    proc: subprocess.Popen[str]
    http_url: str
    grpc_addr: str
    state: tempfile.TemporaryDirectory[str]

    @classmethod
    def start(cls, extra_env: dict[str, str] | None = None) -> Gateway:
        state = tempfile.TemporaryDirectory(prefix="overload-gw-", dir="/tmp")
        os.chmod(state.name, 0o711)  # the sandbox uids must reach the workspaces inside
        env = dict(os.environ,
                   MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__REQUESTS_PER_S="0",
                   MCP_GATEWAY_RATE_LIMITS__TENANT__REQUESTS_PER_S="0",
                   MCP_GATEWAY_SANDBOX__UID=str(FIRST_UID), MCP_GATEWAY_SANDBOX__GID=str(FIRST_UID),
                   **(extra_env or {}))
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mcp-gateway"), "serve", "--http-port", "0", "--grpc-port", "0",
             "--state-dir", state.name, "--log-level", "warning", "--dev"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening "):
            proc.kill()
            state.cleanup()
            raise SystemExit(f"gateway did not start (exit {proc.wait()}): {line!r}")
        parts = dict(p.split("=", 1) for p in line.split()[1:])
        return cls(proc, f"http://{parts['http']}", parts["grpc"], state)

    @property
    def audit_path(self) -> Path:
        return Path(self.state.name) / "audit.jsonl"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=90)
        self.state.cleanup()


def vegeta_binary() -> str:
    """vegeta from ``.tools/bin``, built there with ``go install`` at a pinned version the
    first time (SystemExit when Go is missing or the build fails)."""
    binary = TOOLS_BIN / "vegeta"
    if not binary.exists():
        build = subprocess.run(
            ["go", "install", f"github.com/tsenart/vegeta/v12@{VEGETA_VERSION}"],
            env={**os.environ, "GOBIN": str(TOOLS_BIN), "CGO_ENABLED": "0"},
            capture_output=True, text=True, timeout=600,
        )
        if build.returncode != 0:
            raise SystemExit(f"go install vegeta failed: {build.stderr.strip()[-500:]}")
    return str(binary)


@dataclass
class Outcomes:
    """Answers of one load phase, sorted by kind; latencies in ms."""

    seconds: float
    admitted_ms: list[float] = field(default_factory=list)  # 2xx of every kind
    health_ms: list[float] = field(default_factory=list)
    shed_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    timeouts: int = 0
    task_ids: list[str] = field(default_factory=list)
    grpc_health_ms: list[float] = field(default_factory=list)
    grpc_health_errors: int = 0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Load:
    """vegeta attacks on one gateway with the mix; answers sorted into :class:`Outcomes`."""

    def __init__(self, gw: Gateway, workdir: Path) -> None:
        self._gw = gw
        self._vegeta = vegeta_binary()
        self._targets = workdir / "targets.json"
        self._results = workdir / "results.bin"
        self.accepted: list[str] = []

    def prepare(self) -> None:
        """Write the targets: the mix over a few tasks that exist (status answers 200)."""
        with httpx.Client(base_url=self._gw.http_url, timeout=REQUEST_TIMEOUT_S) as client:
            ids = [client.post("/v1/execute", json=EXECUTE_BODY).json()["task_id"] for _ in range(3)]
        self.accepted.extend(ids)
        body = base64.b64encode(json.dumps(EXECUTE_BODY).encode()).decode()
        lines, status = [], iter(ids * len(MIX))
        for kind in MIX:
            if kind == "health":
                lines.append({"method": "GET", "url": f"{self._gw.http_url}/health"})
            elif kind == "execute":
                lines.append({"method": "POST", "url": f"{self._gw.http_url}/v1/execute", "body": body,
                              "header": {"Content-Type": ["application/json"]}})
            else:
                lines.append({"method": "GET", "url": f"{self._gw.http_url}/v1/tasks/{next(status)}"})
        self._targets.write_text("".join(json.dumps(line) + "\n" for line in lines))

    def attack(self, seconds: float, rate: float = 0.0, workers: int = 0) -> Outcomes:
        """``rate`` requests/s for ``seconds`` (open loop), or with ``rate`` 0 as fast as
        ``workers`` workers get answers (closed loop)."""
        args = [self._vegeta, "attack", "-format=json", f"-targets={self._targets}", f"-duration={seconds}s",
                f"-timeout={REQUEST_TIMEOUT_S:g}s", f"-output={self._results}", "-redirects=0"]
        if rate:
            args.append(f"-rate={rate:.0f}/1s")
        else:
            args += ["-rate=0", f"-max-workers={workers}", f"-workers={workers}"]
        subprocess.run(args, check=True, stdin=subprocess.DEVNULL)
        decoded = subprocess.run([self._vegeta, "encode", "--to", "json", str(self._results)],
                                 check=True, capture_output=True, text=True).stdout
        out = Outcomes(seconds)
        for line in decoded.splitlines():
            self._sort(json.loads(line), out)
        return out

    def _sort(self, result: dict[str, Any], out: Outcomes) -> None:
        ms = result["latency"] / 1e6
        code, url = result["code"], result["url"]
        kind = "health" if url.endswith("/health") else "execute" if url.endswith("/v1/execute") else "status"
        if code in (200, 202):
            out.admitted_ms.append(ms)
            if kind == "health":
                out.health_ms.append(ms)
            elif kind == "execute":
                task_id = json.loads(base64.b64decode(result["body"]))["task_id"]
                out.task_ids.append(task_id)
                self.accepted.append(task_id)
        elif code == 429:
            out.shed_ms.append(ms)
            if not (result.get("headers") or {}).get("Retry-After"):
                out.error(f"{kind}: 429 without Retry-After")
        elif code == 0 and "timeout" in (result.get("error") or "").lower():
            out.timeouts += 1
        else:
            body = base64.b64decode(result.get("body") or "")
            detail = body[:100].decode(errors="replace") if code else result.get("error", "")[:100]
            out.error(f"{kind}: {code} {detail}")


def probe_grpc_health(addr: str, stop: threading.Event, out: Outcomes) -> None:
    """``grpc.health.v1.Health/Check`` every 100 ms until ``stop``; latency into ``out``."""
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            start = time.perf_counter()
            try:
                stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=REQUEST_TIMEOUT_S)
                out.grpc_health_ms.append((time.perf_counter() - start) * 1000)
            except grpc.RpcError:
                out.grpc_health_errors += 1
            stop.wait(0.1)


def wait_for_tasks(gw: Gateway, task_ids: list[str], timeout_s: float) -> dict[str, Any]:
    """Poll until every task is final; then count ``task_end`` events per task."""
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
    remaining = set(task_ids)
    deadline = time.monotonic() + timeout_s
    states: dict[str, int] = {}
    with httpx.Client(base_url=gw.http_url, timeout=REQUEST_TIMEOUT_S) as client:
        while remaining and time.monotonic() < deadline:
            for task_id in list(remaining):
                response = client.get(f"/v1/tasks/{task_id}")
                if response.status_code == 429:
                    time.sleep(0.05)
                    continue
                status = response.json()["task_info"]["status"] if response.status_code == 200 else "MISSING"
                if status in final or status == "MISSING":
                    remaining.discard(task_id)
                    states[status] = states.get(status, 0) + 1
            if remaining:
                time.sleep(0.2)
    ends: dict[str, int] = {}
    for line in gw.audit_path.read_text().splitlines():
        event = json.loads(line)
        if event.get("event_type") == "task_end" and event.get("task_id"):
            ends[event["task_id"]] = ends.get(event["task_id"], 0) + 1
    return {
        "tasks": len(task_ids),
        "final_states": states,
        "not_final": len(remaining),
        "without_task_end": sum(1 for t in task_ids if ends.get(t, 0) == 0),
        "duplicate_task_end": sum(1 for t in task_ids if ends.get(t, 0) > 1),
    }


def phase_row(label: str, offered: float, out: Outcomes) -> dict[str, Any]:
    """One row of the table for a phase: rates per second, latency quantiles in ms, counts."""
    return {
        "phase": label,
        "offered_per_s": round(offered, 1),
        "served_per_s": round(len(out.admitted_ms) / out.seconds, 1),
        "shed_per_s": round(len(out.shed_ms) / out.seconds, 1),
        "errors": sum(out.errors.values()),
        "error_kinds": dict(out.errors),
        "timeouts": out.timeouts,
        "admitted_p50_ms": round(percentile(out.admitted_ms, 0.50), 1),
        "admitted_p99_ms": round(percentile(out.admitted_ms, 0.99), 1),
        "shed_p99_ms": round(percentile(out.shed_ms, 0.99), 1),
        "health_p50_ms": round(percentile(out.health_ms, 0.50), 1),
        "health_p99_ms": round(percentile(out.health_ms, 0.99), 1),
        "grpc_health_p99_ms": round(percentile(out.grpc_health_ms, 0.99), 1),
        "grpc_health_errors": out.grpc_health_errors,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    """The rows of :func:`phase_row` as ``|``-separated lines, error kinds under their row."""
    columns = ("phase", "offered_per_s", "served_per_s", "shed_per_s", "errors", "timeouts",
               "admitted_p50_ms", "admitted_p99_ms", "shed_p99_ms", "health_p50_ms", "health_p99_ms",
               "grpc_health_p99_ms")
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
        if row["error_kinds"]:
            print(f"    errors: {row['error_kinds']}")


def run(args: argparse.Namespace) -> int:
    """Start a gateway, measure capacity, drive each rate, check no task was lost; the exit
    status (1 when a task was lost)."""
    gw = Gateway.start()
    try:
        with tempfile.TemporaryDirectory(prefix="overload-") as workdir:
            load = Load(gw, Path(workdir))
            load.prepare()
            load.attack(1.0, workers=4)  # warm up: policy workers, the store, the first sandboxes
            rows: list[dict[str, Any]] = []
            capacity = args.capacity
            if not capacity:
                out = load.attack(max(1.0, args.seconds / 2), workers=16)
                capacity = len(out.admitted_ms) / out.seconds
                rows.append(phase_row("closed loop x16", capacity, out))
            for multiple in args.multiples:
                wait_for_tasks(gw, load.accepted, 120)  # each rate starts with no task backlog
                stop = threading.Event()
                probe = Outcomes(args.seconds)
                prober = threading.Thread(target=probe_grpc_health, args=(gw.grpc_addr, stop, probe))
                prober.start()
                try:
                    out = load.attack(args.seconds, rate=max(1.0, capacity * multiple))
                finally:
                    stop.set()
                    prober.join()
                out.grpc_health_ms, out.grpc_health_errors = probe.grpc_health_ms, probe.grpc_health_errors
                rows.append(phase_row(f"{multiple:g}x capacity", capacity * multiple, out))
            lost = wait_for_tasks(gw, load.accepted, 180)
    finally:
        gw.close()
    if args.json:
        print(json.dumps({"capacity_per_s": round(capacity, 1), "rows": rows, "tasks": lost}))
    else:
        print(f"capacity (closed loop, 16 workers): {capacity:.1f} answers/s")
        print_table(rows)
        print(f"accepted tasks: {lost}")
        top = rows[-1]
        for name, ok in (
            ("admitted p99 < 100 ms at the highest rate", top["admitted_p99_ms"] < 100),
            ("health p99 < 50 ms at the highest rate",
             top["health_p99_ms"] < 50 and top["grpc_health_p99_ms"] < 50),
            ("only 429s as errors at every rate", all(r["errors"] == 0 and r["timeouts"] == 0 for r in rows)),
        ):
            print(f"{'PASS' if ok else 'MISS'}: {name}")
    ok = lost["not_final"] == 0 and lost["without_task_end"] == 0 and lost["duplicate_task_end"] == 0
    if not ok:
        print(f"LOST TASKS: {lost}", file=sys.stderr)
    return 0 if ok else 1


def main() -> None:
    """Command line entry (see the module docstring for the flags)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each open-loop phase, seconds")
    parser.add_argument("--multiples", default="0.5,1,2", help="rates as multiples of the measured capacity")
    parser.add_argument("--capacity", type=float, default=0.0, help="skip the closed loop: capacity, answers/s")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parse_args(parser, smoke={"seconds": 2.0})
    args.multiples = [float(m) for m in args.multiples.split(",")]
    sys.exit(run(args))


if __name__ == "__main__":
    main()
