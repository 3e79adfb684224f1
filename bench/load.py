"""The load test: ``locust/locustfile.py`` headless against a real gateway at a fixed rate,
then the audit trail checked against what was asked.

    .venv/bin/python bench/load.py [--rate 100] [--seconds 300] [--users 20] [--smoke]

A real ``mcp-gateway serve --dev`` (request rate limits and task quotas off: the load is
one principal's) takes ``--users`` locust users, half REST and half gRPC, each at
``rate / users`` requests per second, for ``--seconds``: the first public version's mix of
health 10 %, execute 60 %, status 30 % (see the locustfile). Then every task is let end,
and printed:

- per request type and name: requests, failures, p50 / p95 / p99 in ms (from locust's
  final response-time histograms, ``--json-file``: its CSV misses the last second), and
  the achieved rate;
- errors in all;
- the gateway's VmRSS (/proc/PID/status) at the start, after the first fifth of the run
  (caches warm) and at the end: memory is flat when the last four fifths add nothing;
- the audit trail (every file of it), by task id: every task a client was given has the
  ``decision`` event that names it and its ``task_end``, every task a decision created
  has its ``task_end``, and there are no more decision events than execute requests (a
  call shed at the edge is counted, not audited).

Targets (issue 17): 0 errors, p99 under 50 ms for every request type, memory flat, every
event written. Smoke mode (``--smoke``, run by the test suite): 30 s at 50 requests/s.
Exit status: 1 when the audit trail misses an event (a broken guarantee, not a slow
machine), else 0: the numbers inform.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import Report, memory_mb, parse_args

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import GatewayProcess, start_gateway  # noqa: E402

FIRST_UID = 280_000  # a sandbox uid range of this bench's own
#: locust's request types: FastHttpUser names a request by its HTTP method, GrpcUser by "gRPC"
TYPES = {"REST": ("GET", "POST"), "gRPC": ("gRPC",)}
NAMES = ("health", "execute", "status")


def audit_trail(gateway: GatewayProcess) -> tuple[Counter[str], set[str], set[str]]:
    """Over the whole trail (rotated files included): events by ``event_type``, the task ids
    decision events name (the tasks they created), and the task ids of ``task_end`` events."""
    counts: Counter[str] = Counter()
    decided, ended = set(), set()
    for path in sorted(gateway.state_dir.glob("audit*.jsonl")):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            counts[event["event_type"]] += 1
            if "task_id" in event:
                (decided if event["event_type"] == "decision" else ended if event["event_type"] == "task_end"
                 else set()).add(event["task_id"])
    return counts, decided, ended


def run_locust(gateway: GatewayProcess, users: int, rate: float, seconds: int,
               out: Path) -> tuple[list[dict[str, Any]], list[dict[str, str]], set[str]]:
    """Run the locustfile headless; returns locust's final statistics (``--json-file``:
    one entry per request type and name, with its response-time histogram), the rows of
    its ``_failures.csv`` (one per distinct error) and the ids of the tasks the users were
    given."""
    prefix = out / "load"
    cmd = [str(Path(sys.executable).parent / "locust"), "-f", str(REPO / "locust" / "locustfile.py"), "--headless",
           "--host", gateway.http_url, "--grpc-host", gateway.grpc_addr, "--users", str(users),
           "--spawn-rate", str(users), "--per-user-rate", str(rate / users), "--run-time", f"{seconds}s",
           "--stop-timeout", "10", "--csv", str(prefix), "--json-file", str(prefix), "--loglevel", "WARNING",
           "--task-ids", str(out / "task-ids.txt")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    # cwd elsewhere: the repository's locust/ folder must not stand in for the locust package
    done = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=seconds + 120)
    stats = Path(f"{prefix}.json")
    if not stats.exists():
        raise SystemExit(f"locust wrote no statistics (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    if done.returncode not in (0, 1):  # 1: some requests failed, which the table shows
        print(f"locust exited {done.returncode}:\n{done.stderr[-2000:]}")
    with Path(f"{prefix}_failures.csv").open() as f:
        return json.loads(stats.read_text()), list(csv.DictReader(f)), set((out / "task-ids.txt").read_text().split())


def histogram_percentile(response_times: dict[str, int], pct: float) -> float:
    """Nearest-rank percentile ``pct`` of locust's response-time histogram (milliseconds,
    rounded by locust: exact below 100 ms, to 2 significant digits above) -> count."""
    total = sum(response_times.values())
    rank, seen = max(1, math.ceil(pct / 100 * total)), 0
    for ms, count in sorted((float(k), v) for k, v in response_times.items()):
        seen += count
        if seen >= rank:
            return ms
    return 0.0


def wait_for_task_ends(gateway: GatewayProcess, timeout_s: float = 120.0) -> tuple[Counter[str], set[str], set[str]]:
    """:func:`audit_trail` once every task a decision created has its ``task_end`` (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts, decided, ended = audit_trail(gateway)
        if decided <= ended or time.monotonic() > deadline:
            return counts, decided, ended
        time.sleep(0.5)


def main() -> int:
    """Start a gateway, load it, print the table; exit 1 when an audit event is missing."""
    parser = argparse.ArgumentParser(description="locust load test of a real gateway, with the audit check")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second in all")
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--users", type=int, default=20, help="locust users, half REST and half gRPC")
    args = parse_args(parser, smoke={"rate": 50.0, "seconds": 30, "users": 10})
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        os.chmod(tmp, 0o711)  # the sandbox uids must reach the workspaces inside
        uid = str(FIRST_UID)
        gateway = start_gateway(Path(tmp) / "gateway" / "var", "--log-level", "warning", env={
            "MCP_GATEWAY_SANDBOX__UID": uid, "MCP_GATEWAY_SANDBOX__GID": uid,
            "MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__REQUESTS_PER_S": "0",
            "MCP_GATEWAY_RATE_LIMITS__TENANT__REQUESTS_PER_S": "0",
            "MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__CONCURRENT_TASKS": "0",
            "MCP_GATEWAY_RATE_LIMITS__TENANT__CONCURRENT_TASKS": "0",
            "MCP_GATEWAY_ADMISSION__PRINCIPAL_IN_FLIGHT": "0"})
        try:
            rss_start = memory_mb(gateway.proc.pid)["VmRSS"]
            samples: list[float] = []  # the gateway's RSS once a second while the load runs
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(1.0):
                    samples.append(memory_mb(gateway.proc.pid)["VmRSS"])

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                entries, failures, task_ids = run_locust(gateway, args.users, args.rate, args.seconds, Path(tmp))
            finally:
                stop.set()
                sampler.join()
            counts, decided, ended = wait_for_task_ends(gateway)
            rss_end = memory_mb(gateway.proc.pid)["VmRSS"]
        finally:
            gateway.stop()
    table = {(next(k for k, types in TYPES.items() if e["method"] in types), e["name"]): e for e in entries}
    requests = sum(e["num_requests"] for e in entries)
    elapsed = max(e["last_request_timestamp"] or 0 for e in entries) - min(e["start_time"] for e in entries)
    print(f"\nlocust: {args.users} users (REST and gRPC), {args.rate:g} requests/s for {args.seconds} s")
    print(f"{'type':<5} {'request':<8} | {'requests':>8} | {'failures':>8} | {'p50 ms':>6} | {'p95 ms':>6} | "
          f"{'p99 ms':>6} | {'per s':>6}")
    worst_p99 = 0.0
    for kind in TYPES:
        for name in NAMES:
            entry = table.get((kind, name))
            if entry is None:
                print(f"{kind:<5} {name:<8} | no requests")
                continue
            p50, p95, p99 = (histogram_percentile(entry["response_times"], pct) for pct in (50, 95, 99))
            worst_p99 = max(worst_p99, p99)
            print(f"{kind:<5} {name:<8} | {entry['num_requests']:>8} | {entry['num_failures']:>8} | {p50:>6g} | "
                  f"{p95:>6g} | {p99:>6g} | {entry['num_requests'] / max(elapsed, 1e-9):>6.1f}")
    errors = sum(e["num_failures"] for e in entries)
    executes = sum(table[(kind, "execute")]["num_requests"] for kind in TYPES if (kind, "execute") in table)
    print(f"all: {requests} requests, {requests / max(elapsed, 1e-9):.1f}/s, errors {errors}")
    for failure in failures[:5]:
        print(f"  {failure['Occurrences']} x {failure['Method']} {failure['Name']}: {failure['Error'][:300]}")
    warm = samples[len(samples) // 5] if samples else rss_start  # after the first fifth of the run
    print(f"gateway VmRSS: start {rss_start:.1f} MB, after a fifth of the run {warm:.1f} MB, end {rss_end:.1f} MB "
          f"({rss_end - warm:+.1f} MB over the last four fifths)")
    # Every task a caller was given has the decision event that names it and its task_end;
    # every task a decision created ended. (A decision can name a task the client never
    # heard of: a request cut off when locust stopped. A call shed at the edge is counted,
    # not audited, so there may be fewer decision events than execute requests, never more
    # but for those cut off.)
    unaudited = task_ids - (decided & ended)
    unended = decided - ended
    complete = not unaudited and not unended and counts["decision"] <= executes + len(decided - task_ids)
    print(f"audit: {counts['decision']} decision events for {executes} execute requests; {len(task_ids)} tasks "
          f"created as the clients saw it, {len(decided)} as the decisions say ({len(decided - task_ids)} cut off "
          f"at the stop), {len(ended)} task_end events"
          + ("" if complete else f"  INCOMPLETE: {len(unaudited)} tasks without both events, "
                                 f"{len(unended)} decided tasks without a task_end"))
    print(f"targets (issue 17): errors 0: {errors} {'PASS' if errors == 0 else 'MISS'}; p99 < 50 ms for every "
          f"request type: worst {worst_p99:g} ms {'PASS' if worst_p99 < 50 else 'MISS'}; every event written: "
          f"{'PASS' if complete else 'MISS'}")
    report = Report()
    report.figure(f"load {args.rate:g} req/s for {args.seconds} s: worst p99 of a request type", worst_p99, "ms",
                  target="< 50 ms")
    report.figure("load: errors", errors, "", target="== 0")
    report.figure("load: gateway RSS at the end", rss_end, "MB", baseline=warm,
                  baseline_name="RSS after a fifth of the load", target="<= 1.05 x")
    report.figure("load: tasks without both audit events", len(unaudited) + len(unended), "", target="== 0")
    report.write(args)
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
