"""Policy decision cost on the fixture table (tests/policy/decision_cases.json), per engine.

Prints, in one run, for every case input of the table (tenant overlay included), the
normal-size inputs (~400 bytes of JSON) and, apart, the oversized stress rows (over
:data:`OVERSIZED_BYTES`: thousands of arguments, a 36 KB shell script):
- ``bare rego-cpp``: one rego-cpp interpreter in this process (``Evaluator.evaluate_json``);
- ``embedded``: :class:`EmbeddedEngine` (rego-cpp in worker processes);
- ``wasm``: :class:`WasmEngine` (the bundle compiled by ``opa build -t wasm``, wasmtime in
  this process), no decision cache: every call evaluates;
- ``gateway step (wasm)``: the gateway's policy step (``GatewayService._decide``: the
  active policy, the decision check, metrics) over the wasm engine;
- ``wasm, cache hits``: the wasm engine with its decision cache, every input seen before
  (what a repeated request costs);
- ``opa server``: a real OPA server (``opa run -s -b``) over its Data API.
The wasm and OPA rows need an opa binary (found, or built with ``go install``); without
one they are skipped, with the reason. Columns: decisions/s (sequential, and with
``--threads`` callers for ``--seconds``), median and p99 latency in ms; for the oversized
rows median and max. Targets (issue 17), on normal inputs: median under 0.5 ms, p99 under
2 ms, never slower than the OPA server. Numbers only, no asserts:
    python bench/policy.py [--rounds 20] [--threads 4] [--seconds 3] [--smoke]

An engine error (5003) counts as a call; a row with errors says how many, how many were
deadlines, and the first one (phase, code, time taken, message).
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

from common import Report, parse_args, throughput  # noqa: E402

from gateway.errors import PolicyEngineError  # noqa: E402
from gateway.policy import EmbeddedEngine, load_policy_dir  # noqa: E402
from gateway.policy.active import ActivePolicy  # noqa: E402
from gateway.policy.embedded import Evaluator, result_value  # noqa: E402
from gateway.policy.opa import OpaEngine  # noqa: E402
from gateway.policy.wasm import WasmEngine  # noqa: E402
from gateway.service import GatewayService  # noqa: E402
from tests.policy.cases import CASES, make_bundle, policy_input  # noqa: E402
from tests.policy.opa_server import OpaServer, find_or_build_opa  # noqa: E402

#: Inputs above this many bytes of JSON are reported apart (the table's stress rows: 5-40 KB
#: of arguments or script; a request is ~400 bytes).
OVERSIZED_BYTES = 2048


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
    concurrent = throughput(one, threads, seconds) if seconds > 0 else 0.0
    return {
        "median_ms": statistics.median(samples) * 1e3,
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e3,
        "max_ms": samples[-1] * 1e3,
        "samples_ms": [t * 1e3 for t in samples],
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
    normal = [i for i in inputs if len(json.dumps(i)) <= OVERSIZED_BYTES]
    oversized = [i for i in inputs if len(json.dumps(i)) > OVERSIZED_BYTES]
    rows: list[tuple[str, dict[str, Any] | str, dict[str, Any] | None]] = []

    def row(name: str, call: Callable[[dict[str, Any]], Any], big: bool = True) -> None:
        rows.append((name, measure(call, normal, args.rounds, args.threads, args.seconds),
                     measure(call, oversized, max(1, args.rounds // 10), 1, 0.0) if big else None))

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

        row("bare rego-cpp", bare_call)
        embedded = EmbeddedEngine(source, workers=2, timeout_s=1.0, max_input_bytes=1 << 20)
        row("embedded", embedded.evaluate)
        embedded.close()

        binary, why = find_or_build_opa()
        if binary is None:
            rows.append(("wasm", f"skipped: {why}", None))
            rows.append(("opa server", f"skipped: {why}", None))
        else:
            wasm = WasmEngine(source, opa_binary=binary, instances=2, timeout_s=1.0, max_input_bytes=1 << 20)
            row("wasm", wasm.evaluate)
            active = ActivePolicy(wasm, bundle, source=source, build=None)
            step = types.SimpleNamespace(_policy=active)
            row("gateway step (wasm)", lambda inp: GatewayService._decide(step, inp))
            wasm.close()
            cached = WasmEngine(source, opa_binary=binary, instances=2, timeout_s=1.0, max_input_bytes=1 << 20,
                                cache_entries=4096)
            for inp in inputs:  # every later call is a hit
                cached.evaluate(inp)
            row("wasm, cache hits", cached.evaluate, big=False)
            cached.close()
            server = OpaServer(binary, Path(tmp), bundle=bundle)
            server.start()
            try:
                opa = OpaEngine(server.url, timeout_s=2.0, max_input_bytes=1 << 20)
                row("opa server", opa.evaluate)
                opa.close()
            finally:
                server.stop()

    print(f"policy decisions over the fixture table: {len(normal)} normal inputs x {args.rounds} rounds "
          f"(throughput also with {args.threads} threads), and apart {len(oversized)} oversized inputs "
          f"(over {OVERSIZED_BYTES} bytes of JSON)")
    print(f"{'engine':<20} {'median ms':>10} {'p99 ms':>8} {'per s':>8} {'per s x' + str(args.threads):>10} | "
          f"{'oversized median ms':>19} {'max ms':>8}")
    opa_median = next((r["median_ms"] for name, r, _ in rows if name == "opa server" and not isinstance(r, str)),
                      None)
    for name, result, big in rows:
        if isinstance(result, str):
            print(f"{name:<20} {result}")
            continue
        tail = f"{big['median_ms']:>19.3f} {big['max_ms']:>8.3f}" if big else f"{'-':>19} {'-':>8}"
        print(f"{name:<20} {result['median_ms']:>10.3f} {result['p99_ms']:>8.3f} {result['per_s']:>8.0f} "
              f"{result['per_s_threads']:>10.0f} | {tail}"
              f"{'  errors: %d' % result['errors'] if result['errors'] else ''}")
    for name, result, big in rows:
        for what, r in (("", result), (" (oversized)", big)):
            if isinstance(r, dict) and r["errors"]:
                deadlines = r["deadline_errors"]
                print(f"{name}{what}: {r['errors']} error(s), {deadlines} of them deadlines"
                      f"{' (load: see the top of bench/policy.py)' if deadlines == r['errors'] else ''}; "
                      f"first: {r['first_error']}")
    wasm_row = next((r for name, r, _ in rows if name == "wasm" and not isinstance(r, str)), None)
    if wasm_row is not None:
        print(f"targets (issue 17), wasm on normal inputs: median < 0.5 ms: {wasm_row['median_ms']:.3f} "
              f"{'PASS' if wasm_row['median_ms'] < 0.5 else 'MISS'}; p99 < 2 ms: {wasm_row['p99_ms']:.3f} "
              f"{'PASS' if wasm_row['p99_ms'] < 2 else 'MISS'}; not slower than the OPA server: "
              + (f"{wasm_row['median_ms'] / opa_median:.2f}x {'PASS' if wasm_row['median_ms'] <= opa_median else 'MISS'}"
                 if opa_median else "no OPA server"))
    report = Report()
    measured = {name: r for name, r, _ in rows if not isinstance(r, str)}
    for name in ("wasm", "embedded"):
        if name in measured:
            report.figure(f"policy decision, {name} engine (median, normal inputs)", measured[name]["median_ms"], "ms",
                          baseline=opa_median, baseline_name="OPA server", target="< 0.5 ms")
    if "wasm" in measured:
        report.figure("policy decision, wasm engine (p99, normal inputs)", measured["wasm"]["p99_ms"], "ms",
                      baseline=measured.get("opa server", {}).get("p99_ms"), baseline_name="OPA server",
                      target="< 2 ms")
    for name, result in measured.items():
        if name != "gateway step (wasm)":
            report.samples(f"policy: {name}", result["samples_ms"])
    report.write(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
