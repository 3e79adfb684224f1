"""Helpers shared by the benchmark scripts (run as ``python bench/<name>.py``).

Smoke mode, the one switch every script takes: ``--smoke`` on the command line, or
``MCP_BENCH_SMOKE=1`` in the environment. It runs the script's whole code path (the same
gateway, engines and tables) with a handful of iterations, so the test suite can check
in seconds that the script still runs and prints its table
(``tests/e2e/test_bench_smoke.py`` runs every ``bench/*.py`` that has a
``__main__`` block as ``python bench/<name>.py --smoke`` and expects exit status 0). The
numbers a smoke run prints mean nothing.

How a script takes it: build its parser as usual, then parse with :func:`parse_args`,
naming the smoke-mode value of each flag that sets an amount of work::

    from common import parse_args

    parser = argparse.ArgumentParser(description=...)
    parser.add_argument("--runs", type=int, default=200)
    args = parse_args(parser, smoke={"runs": 3})

:func:`parse_args` adds ``--smoke`` itself (a script must not declare its own); in smoke
mode the ``smoke`` values replace those flags' defaults (a flag given explicitly still
wins) and ``args.smoke`` is True, which the script reads for any amount that has no flag.
A smoke run should finish within about 30 s on a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["SMOKE_ENV", "Report", "children", "cpu_seconds", "memory_mb", "parse_args", "percentile", "throughput"]

#: The environment variable that turns smoke mode on ("1"), like ``--smoke``.
SMOKE_ENV = "MCP_BENCH_SMOKE"


def parse_args(parser: argparse.ArgumentParser, smoke: Mapping[str, Any],
               argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser``'s arguments from ``argv`` (default: ``sys.argv[1:]``), with ``--smoke``
    added. In smoke mode (``--smoke``, or ``MCP_BENCH_SMOKE=1``) the values in ``smoke``
    (dest name -> value) are the defaults, and ``args.smoke`` is True."""
    parser.add_argument("--smoke", action="store_true",
                        help=f"a handful of iterations, to check that it runs (also: {SMOKE_ENV}=1)")
    parser.add_argument("--figures", dest="figures_out", default=None, metavar="PATH",
                        help="also write the figures (and latency samples) as JSON here, for bench/report.py")
    args = parser.parse_args(argv)
    if args.smoke or os.environ.get(SMOKE_ENV) == "1":
        unknown = set(smoke) - set(vars(args))
        if unknown:
            raise ValueError(f"smoke values for flags the parser does not have: {sorted(unknown)}")
        parser.set_defaults(**smoke)
        args = parser.parse_args(argv)
        args.smoke = True
    return args


def throughput(fn: Callable[[int], None], concurrency: int, seconds: float) -> float:
    """Calls of ``fn(thread_index)`` completed per second by ``concurrency`` threads
    looping for ``seconds``.

    Raises:
        the first exception a call raised (the others stop at once), after every thread
        ended: a failing call fails the bench instead of lowering its rate.
    """
    done = [0] * concurrency
    stop = time.monotonic() + seconds
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            while time.monotonic() < stop and not errors:
                fn(i)
                done[i] += 1
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(done) / (time.monotonic() - t0)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile ``pct`` (0..100) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def latency_table(times: Mapping[str, Sequence[float]], baseline: str, ratio_label: str) -> float:
    """Print one row per path of ``times`` (latencies in ms): median, p99 and the median's
    ratio to ``baseline``'s (a key of ``times``), under a header naming the ratio
    ``ratio_label``; returns the baseline's median, ms."""
    base = statistics.median(times[baseline])
    width = max(len(name) for name in times)
    print(f"{'path':<{width}} | {'median ms':>9} | {'p99 ms':>7} | {ratio_label:>8}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<{width}} | {median:>9.2f} | {percentile(samples, 99):>7.2f} | {median / base:>8.2f}")
    return base


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid``, all its threads, not its children
    (utime and stime, fields 14 and 15 of /proc/PID/stat, proc(5))."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid`` in MB, from /proc/PID/status (proc(5), values in kB)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def children(pid: int) -> list[int]:
    """Child pids of every thread of ``pid`` (/proc/PID/task/TID/children)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(int(c) for c in (task / "children").read_text().split())
        except OSError:  # the thread ended meanwhile
            continue
    return sorted(found)


class Report:
    """What a bench hands ``bench/report.py`` (``--figures PATH``): its figures, each with the
    baseline measured in the same run and the issue's target, and latency samples to plot.

    ``figure(name, value, unit, baseline=..., baseline_name=..., target=...)``: ``target`` is
    text such as ``"<= 1.25 x"`` (on the ratio value/baseline) or ``"< 2 ms"`` (on the
    value). ``samples(name, values_ms)``: a latency distribution. :meth:`write` writes
    ``{"figures": [...], "samples": {...}}`` to ``args.figures_out`` when it was given.
    """

    def __init__(self) -> None:
        self.figures: list[dict[str, Any]] = []
        self.distributions: dict[str, list[float]] = {}

    def figure(self, name: str, value: float, unit: str, *, baseline: float | None = None,
               baseline_name: str = "", target: str = "") -> None:
        self.figures.append({"name": name, "value": value, "unit": unit, "baseline": baseline,
                             "baseline_name": baseline_name, "target": target})

    def samples(self, name: str, values_ms: Sequence[float]) -> None:
        self.distributions[name] = [float(v) for v in values_ms]

    def write(self, args: argparse.Namespace) -> None:
        if getattr(args, "figures_out", None):
            with open(args.figures_out, "w") as f:
                json.dump({"figures": self.figures, "samples": self.distributions}, f)
