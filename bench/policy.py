"""Policy decision cost on the fixture table (tests/policy/decision_cases.json), per engine.

Prints, in one run, for every case input of the table (tenant overlay included):
- ``bare``: one rego-cpp interpreter in this process (``Evaluator.evaluate_json``): the
  engine call with nothing around it, the baseline;
- ``embedded``: :class:`EmbeddedEngine` (worker processes; what the gateway uses);
- ``gateway step``: the gateway's policy step (``GatewayService._decide``: the active
  policy, the decision check, metrics) over the embedded engine, with its ratio to
  ``bare`` (target: at most 1.10);
- ``opa``: a real OPA server (``opa run -s -b``) over its Data API (skipped, with the
  reason, when no opa binary can be found or built);
decisions/s (sequential, and with ``--threads`` callers), median and p99 latency in ms.
Targets for ``embedded``: median under 1 ms, p99 under 3 ms. Numbers only, no asserts:
    python bench/policy.py [--rounds 20] [--threads 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import throughput  # noqa: E402

from gateway.errors import PolicyEngineError  # noqa: E402
from gateway.policy import EmbeddedEngine, load_policy_dir  # noqa: E402
from gateway.policy.active import ActivePolicy  # noqa: E402
from gateway.policy.embedded import Evaluator, result_value  # noqa: E402
from gateway.policy.opa import OpaEngine  # noqa: E402
from gateway.service import GatewayService  # noqa: E402
from tests.policy.cases import CASES, make_bundle, policy_input  # noqa: E402
from tests.policy.opa_server import OpaServer, find_or_build_opa  # noqa: E402


def measure(call: Callable[[dict[str, Any]], Any], inputs: list[dict[str, Any]], rounds: int,
            threads: int, seconds: float = 3.0) -> dict[str, float]:
    """Latencies of ``call`` over ``rounds`` passes of ``inputs``, then throughput with
    ``threads`` concurrent callers cycling through ``inputs`` for ``seconds``. An engine
    error (5003 in the gateway) counts as a call and is reported in ``errors``."""
    errors = [0]

    def guarded(inp: dict[str, Any]) -> None:
        try:
            call(inp)
        except PolicyEngineError:
            errors[0] += 1

    for inp in inputs:  # warm up: connections, worker pages, caches
        guarded(inp)
    samples = []
    start = time.perf_counter()
    for _ in range(rounds):
        for inp in inputs:
            t = time.perf_counter()
            guarded(inp)
            samples.append(time.perf_counter() - t)
    sequential = len(samples) / (time.perf_counter() - start)
    samples.sort()
    cycle = [0] * threads

    def one(i: int) -> None:
        guarded(inputs[cycle[i] % len(inputs)])
        cycle[i] += 1

    concurrent = throughput(one, threads, seconds)
    return {
        "median_ms": statistics.median(samples) * 1e3,
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e3,
        "per_s": sequential,
        "per_s_threads": concurrent,
        "errors": errors[0],
    }


def main() -> int:
    """Measure every engine on the fixture table and print one row each; exit status 0."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="passes over the table")
    parser.add_argument("--threads", type=int, default=4, help="concurrent callers for throughput")
    args = parser.parse_args()
    inputs = [policy_input(case) for case in CASES]
    rows: list[tuple[str, dict[str, float] | str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp) / "bundle")
        source = load_policy_dir(bundle)

        bare = Evaluator(source)
        lock = threading.Lock()  # one interpreter: callers take turns

        def bare_call(inp: dict[str, Any]) -> Any:
            text = json.dumps(inp, separators=(",", ":"))
            with lock:
                result = bare.evaluate_json(text)
            return result_value(result) if result is not None else None

        rows.append(("bare (in-process)", measure(bare_call, inputs, args.rounds, args.threads)))
        engine = EmbeddedEngine(source, workers=2, timeout_s=1.0, max_input_bytes=1 << 20)
        rows.append(("embedded", measure(engine.evaluate, inputs, args.rounds, args.threads)))
        active = ActivePolicy(engine, bundle, source=source, build=None)
        step = types.SimpleNamespace(_policy=active)
        rows.append(("gateway step", measure(lambda inp: GatewayService._decide(step, inp), inputs,
                                             args.rounds, args.threads)))
        engine.close()

        binary, why = find_or_build_opa()
        if binary is None:
            rows.append(("opa", f"skipped: {why}"))
        else:
            server = OpaServer(binary, Path(tmp), bundle=bundle)
            server.start()
            try:
                opa = OpaEngine(server.url, timeout_s=2.0, max_input_bytes=1 << 20)
                rows.append(("opa server", measure(opa.evaluate, inputs, args.rounds, args.threads)))
                opa.close()
            finally:
                server.stop()

    print(f"policy decisions over {len(inputs)} fixture inputs x {args.rounds} rounds "
          f"(throughput also with {args.threads} threads)")
    print(f"{'engine':<20} {'median ms':>10} {'p99 ms':>8} {'per s':>8} {'per s x' + str(args.threads):>10}")
    base = None
    for name, result in rows:
        if isinstance(result, str):
            print(f"{name:<20} {result}")
            continue
        base = base or result["median_ms"]
        print(f"{name:<20} {result['median_ms']:>10.3f} {result['p99_ms']:>8.3f} {result['per_s']:>8.0f} "
              f"{result['per_s_threads']:>10.0f}   x{result['median_ms'] / base:.2f} bare"
              f"{'  errors: %d' % result['errors'] if result['errors'] else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
