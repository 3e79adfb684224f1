"""What sharing the limits costs: requests/s and latency of one, two and three gateway
replicas on one PostgreSQL store, with the request rate limits shared (token buckets in the
store) and off, in one run.

    .venv/bin/python bench/replicas.py [--seconds 5] [--threads 6] [--smoke]

A real PostgreSQL server (tests/pg_server.py: Debian's, started on loopback) and real
``mcp-gateway serve --dev`` processes, a fresh database per row. Closed loop: ``--threads``
client threads, each with its own HTTP connection, spread over the replicas, call
``GET /v1/tasks/<unknown id>`` for ``--seconds``: authentication, the rate limit, a store
read and a 404, without a sandbox, so the rate limit's share shows. "shared": principal
and tenant buckets of 10^6 requests/s (never refused, always asked); "off": both limits 0
(no bucket). Printed per row: requests/s, p50 and p99 ms, and the shared rows' cost per call
(p50 shared minus p50 off, the same replicas). Issue 16 asks for the number, no target.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from common import parse_args, percentile, throughput

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import GatewayProcess, start_gateway  # noqa: E402
from tests.pg_server import PostgresServer, running_postgres  # noqa: E402

FIRST_UID = 310_000  # sandbox uid ranges of this bench's own, 1000 apart
LIMITS = {
    "off": {"MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__REQUESTS_PER_S": "0",
            "MCP_GATEWAY_RATE_LIMITS__TENANT__REQUESTS_PER_S": "0"},
    "shared": {"MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__REQUESTS_PER_S": "1000000",
               "MCP_GATEWAY_RATE_LIMITS__PRINCIPAL__BURST": "1000000",
               "MCP_GATEWAY_RATE_LIMITS__TENANT__REQUESTS_PER_S": "1000000",
               "MCP_GATEWAY_RATE_LIMITS__TENANT__BURST": "1000000"},
}
UNKNOWN_TASK = "/v1/tasks/task-" + "0" * 32


def drive(urls: list[str], threads: int, seconds: float) -> tuple[float, list[float]]:
    """Requests/s and the latencies (ms) of ``threads`` closed-loop clients spread over
    ``urls``. Raises on an answer other than 404."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    clients = [httpx.Client(base_url=urls[i % len(urls)], timeout=30) for i in range(threads)]

    def call(i: int) -> None:
        started = time.perf_counter()
        code = clients[i].get(UNKNOWN_TASK).status_code
        latencies[i].append((time.perf_counter() - started) * 1e3)
        if code != 404:
            raise RuntimeError(f"unexpected answer {code} from {urls[i % len(urls)]}")

    try:
        rate = throughput(call, threads, seconds)
    finally:
        for client in clients:
            client.close()
    return rate, [ms for mine in latencies for ms in mine]


def one_row(server: PostgresServer, replicas: int, limits: str, threads: int, seconds: float,
            root: Path) -> tuple[float, list[float]]:
    """Start ``replicas`` gateways on a fresh database, drive them, stop them."""
    dbname = "bench_" + secrets.token_hex(6)
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {dbname}")
    gateways: list[GatewayProcess] = []
    try:
        for i in range(replicas):
            uid = str(FIRST_UID + 1000 * i)
            env = {"MCP_GATEWAY_TASKS__STORE_DSN": server.dsn(dbname), "MCP_GATEWAY_SANDBOX__UID": uid,
                   "MCP_GATEWAY_SANDBOX__GID": uid, "MCP_GATEWAY_ADMISSION__HTTP_IN_FLIGHT": "64",
                   "MCP_GATEWAY_ADMISSION__PRINCIPAL_IN_FLIGHT": "64", **LIMITS[limits]}
            state = Path(tempfile.mkdtemp(prefix=f"replica-{i}-", dir=root)) / "var"
            gateways.append(start_gateway(state, "--log-level", "warning", env=env))
        urls = [gw.http_url for gw in gateways]
        drive(urls, threads, min(1.0, seconds))  # warm up: connections, pools, buckets
        return drive(urls, threads, seconds)
    finally:
        for gw in gateways:
            gw.stop()
        with psycopg.connect(server.dsn("postgres"), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


def main() -> None:
    """Every replica count with the limits shared and off; print the table."""
    parser = argparse.ArgumentParser(description="requests/s and latency of 1-3 replicas, limits shared or off")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row")
    parser.add_argument("--threads", type=int, default=6, help="client threads")
    parser.add_argument("--replicas", type=int, default=3, help="up to this many replicas")
    args = parse_args(parser, smoke={"seconds": 0.5, "replicas": 2, "threads": 2})
    rows: dict[tuple[int, str], tuple[float, list[float]]] = {}
    try:
        measure(args, rows)
    except pytest.skip.Exception as exc:  # no PostgreSQL server can be had here
        print(f"skipped: {exc}")
        return
    print_table(args, rows)


def measure(args: argparse.Namespace, rows: dict[tuple[int, str], tuple[float, list[float]]]) -> None:
    """Every replica count with the limits shared and off, into ``rows``."""
    with running_postgres() as server, tempfile.TemporaryDirectory(prefix="bench-replicas-") as root:
        os.chmod(root, 0o711)
        for replicas in range(1, args.replicas + 1):
            for limits in LIMITS:
                rows[replicas, limits] = one_row(server, replicas, limits, args.threads, args.seconds, Path(root))


def print_table(args: argparse.Namespace, rows: dict[tuple[int, str], tuple[float, list[float]]]) -> None:
    """The table of ``rows`` and the cost per call of sharing."""
    print(f"GET {UNKNOWN_TASK} (authenticated, rate-limited, a store read, 404); {args.threads} client threads, "
          f"{args.seconds:g} s per row")
    print(f"{'replicas':8} | {'limits':6} | requests/s | p50 ms | p99 ms | cost per call (p50)")
    for (replicas, limits), (rate, latencies) in rows.items():
        p50 = statistics.median(latencies)
        cost = ""
        if limits == "shared":
            cost = f"{p50 - statistics.median(rows[replicas, 'off'][1]):+.2f} ms"
        print(f"{replicas:8} | {limits:6} | {rate:10.0f} | {p50:6.2f} | {percentile(latencies, 99):6.2f} | {cost}")


if __name__ == "__main__":
    main()
