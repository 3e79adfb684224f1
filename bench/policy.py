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
decisions/s (sequential, and with ``--threads`` callers for ``--seconds``), median and p99
latency in ms. Targets for ``embedded``: median under 1 ms, p99 under 3 ms. Numbers only,
no asserts:
    python bench/policy.py [--rounds 20] [--threads 4] [--seconds 3] [--smoke]

An engine error (5003) counts as a call; a row with errors says how many, how many were
deadlines, and the first one (phase, code, time taken, message). With ``--threads`` above
the embedded engine's 2 workers, callers queue for a worker, and the table's two costliest
inputs ("many absolute args", "large shell script": 150-400 ms each in rego-cpp, more on a
loaded machine) can hold both workers long enough for a queued caller to reach the 1 s
deadline ("no policy worker free within 1000 ms"): that is saturation, not a policy bug.
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

from common import parse_args, throughput  # noqa: E402

from gateway.errors import PolicyEngineError  # noqa: E402
from gateway.policy import EmbeddedEngine, load_policy_dir  # noqa: E402
from gateway.policy.active import ActivePolicy  # noqa: E402
from gateway.policy.embedded import Evaluator, result_value  # noqa: E402
from gateway.policy.opa import OpaEngine  # noqa: E402
from gateway.service import GatewayService  # noqa: E402
from tests.policy.cases import CASES, make_bundle, policy_input  # noqa: E402
from tests.policy.opa_server import OpaServer, find_or_build_opa  # noqa: E402


def measure(call: Callable[[dict[str, Any]], Any], inputs: list[dict[str, Any]], rounds: int,
            threads: int, seconds: float = 3.0) -> dict[str, Any]:
    """Latencies of ``call`` over ``rounds`` passes of ``inputs``, then throughput with
    ``threads`` concurrent callers cycling through ``inputs`` for ``seconds``. An engine
    error (5003 in the gateway) counts as a call and is reported in ``errors``, of which
    ``deadline_errors`` ran out of time (:func:`is_deadline`); ``first_error`` is the first
    one's phase, code, duration and message, or None."""
    errors = {"count": 0, "deadline": 0}
    first_error: list[str] = []
    lock = threading.Lock()
    phase = ["warm-up"]

    def guarded(inp: dict[str, Any]) -> None:
        t = time.perf_counter()
        try:
            call(inp)
        except PolicyEngineError as exc:
            took_ms = (time.perf_counter() - t) * 1e3
            with lock:
                errors["count"] += 1
                errors["deadline"] += is_deadline(exc)
                if not first_error:
                    first_error.append(f"{phase[0]}: {exc.code} after {took_ms:.0f} ms: {exc.message}")

    for inp in inputs:  # warm up: connections, worker pages, caches
        guarded(inp)
    samples = []
    phase[0] = "sequential"
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

    phase[0] = f"{threads} threads"
    concurrent = throughput(one, threads, seconds)
    return {
        "median_ms": statistics.median(samples) * 1e3,
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e3,
        "per_s": sequential,
        "per_s_threads": concurrent,
        "errors": errors["count"],
        "deadline_errors": errors["deadline"],
        "first_error": first_error[0] if first_error else None,
    }


def is_deadline(exc: PolicyEngineError) -> bool:
    """Whether ``exc`` is an engine running out of time (a worker overran ``timeout_s`` or
    none was free within it; OPA did not answer or no connection was free in time): under
    saturation or on a loaded machine that is load, not a policy bug."""
    return any(text in exc.message for text in _DEADLINE_TEXTS)


#: How each engine words running out of time (gateway/policy/embedded.py, opa.py).
_DEADLINE_TEXTS = ("timed out", "no policy worker free within", "no free connection within")


def main() -> int:
    """Measure every engine on the fixture table and print one row each; exit status 0."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="passes over the table")
    parser.add_argument("--threads", type=int, default=4, help="concurrent callers for throughput")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each throughput run, seconds")
    args = parse_args(parser, smoke={"rounds": 1, "seconds": 0.2})
    inputs = [policy_input(case) for case in CASES]
    rows: list[tuple[str, dict[str, Any] | str]] = []
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

        rows.append(("bare (in-process)", measure(bare_call, inputs, args.rounds, args.threads, args.seconds)))
        engine = EmbeddedEngine(source, workers=2, timeout_s=1.0, max_input_bytes=1 << 20)
        rows.append(("embedded", measure(engine.evaluate, inputs, args.rounds, args.threads, args.seconds)))
        active = ActivePolicy(engine, bundle, source=source, build=None)
        step = types.SimpleNamespace(_policy=active)
        rows.append(("gateway step", measure(lambda inp: GatewayService._decide(step, inp), inputs,
                                             args.rounds, args.threads, args.seconds)))
        engine.close()

        binary, why = find_or_build_opa()
        if binary is None:
            rows.append(("opa", f"skipped: {why}"))
        else:
            server = OpaServer(binary, Path(tmp), bundle=bundle)
            server.start()
            try:
                opa = OpaEngine(server.url, timeout_s=2.0, max_input_bytes=1 << 20)
                rows.append(("opa server", measure(opa.evaluate, inputs, args.rounds, args.threads, args.seconds)))
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
    for name, result in rows:
        if not isinstance(result, str) and result["errors"]:
            deadlines = result["deadline_errors"]
            print(f"{name}: {result['errors']} error(s), {deadlines} of them deadlines"
                  f"{' (load: see the top of bench/policy.py)' if deadlines == result['errors'] else ''}; "
                  f"first: {result['first_error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
