"""Every benchmark of the speed issue (17) in one go: one table of figures, each with its
baseline from the same run, the ratio and the target, and a PNG of the latency distributions.

    .venv/bin/python bench/report.py [--out DIR] [--skip NAME ...] [--smoke]

Runs, one after the other (each alone on the machine), with ``--figures`` so each hands over
its figures and samples (``common.Report``):

- ``gateway_vs_sandbox.py``: /bin/true to the final result, gRPC and REST one-shot waits
  against the sandbox library; the gateway's CPU per task beyond the library's;
- ``policy.py``: the policy engines on the fixture table;
- ``sandbox_spawn.py``: the full sandbox profile against plain bwrap, start latency and
  sandboxes per second with 4 spawners;
- ``throughput.py``: echo tasks/s at concurrency 4 and 16 against the library, and the
  gateway's memory after 10,000 more tasks;
- ``load.py``: the locust mix at 100 requests/s for 5 minutes.

The other benches (audit, auth, observability, overload, replicas, spawn_steps) measure
other issues' figures and are run by themselves.

Printed: one row per figure: value, baseline (and what it is), ratio value/baseline, target,
PASS / MISS. Written to ``--out`` (default ``bench/out``): ``report.txt`` (the table),
``report.json`` (every figure and sample) and ``latency.png`` (the distributions as
cumulative curves, log time axis: gateway against library, the policy engines, the spawn
paths). In smoke mode (``--smoke``, which the suite runs) only ``gateway_vs_sandbox.py``
and ``policy.py`` run, in their smoke modes: it checks the pipeline, not the numbers.
Exit status 0 unless a bench fails to run.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import parse_args

BENCH = Path(__file__).resolve().parent
BENCHES = ("gateway_vs_sandbox.py", "policy.py", "sandbox_spawn.py", "throughput.py", "load.py")
SMOKE_BENCHES = ("gateway_vs_sandbox.py", "policy.py")
_TARGET = re.compile(r"^(<=|>=|<|>|==)\s*([\d.]+)\s*(x|.*)$")


def verdict(figure: dict[str, Any]) -> tuple[float | None, str]:
    """``(ratio value/baseline or None, "PASS" | "MISS" | "")`` of a figure against its target
    (``<op> <number> x`` compares the ratio; ``<op> <number> <unit>`` the value)."""
    value, baseline = figure["value"], figure["baseline"]
    ratio = value / baseline if baseline else None
    match = _TARGET.match(figure["target"] or "")
    if match is None:
        return ratio, ""
    op, bound, unit = match.group(1), float(match.group(2)), match.group(3).strip()
    subject = ratio if unit == "x" else value
    if subject is None:
        return ratio, ""
    ok = {"<=": subject <= bound, ">=": subject >= bound, "<": subject < bound, ">": subject > bound,
          "==": subject == bound}[op]
    return ratio, "PASS" if ok else "MISS"


def run_bench(name: str, smoke: bool, out: Path) -> dict[str, Any]:
    """Run ``bench/<name>`` with ``--figures``; its figures and samples."""
    result = out / f"{name.removesuffix('.py')}.json"
    cmd = [sys.executable, str(BENCH / name), "--figures", str(result), *(["--smoke"] if smoke else [])]
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=BENCH.parent)
    print(f"  {name}: exit {done.returncode} in {time.monotonic() - start:.0f} s", flush=True)
    (out / f"{name.removesuffix('.py')}.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0 or not result.exists():
        raise SystemExit(f"{name} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(result.read_text())


def table(figures: list[dict[str, Any]]) -> str:
    """The report's table, one line per figure."""
    lines = [f"{'figure':<72} | {'value':>10} | {'baseline':>10} | {'ratio':>6} | {'target':>10} | verdict",
             "-" * 132]
    for f in figures:
        ratio, mark = verdict(f)
        base = f"{f['baseline']:.3g}" if f["baseline"] is not None else "-"
        lines.append(f"{f['name'][:72]:<72} | {f['value']:>7.3g} {f['unit'][:2]:<2} | {base:>10} | "
                     f"{f'{ratio:.2f}' if ratio is not None else '-':>6} | {f['target']:>10} | {mark}")
    bases = sorted({f"{f['baseline_name']}" for f in figures if f["baseline_name"]})
    lines.append(f"baselines (measured in the same run): {', '.join(bases)}")
    return "\n".join(lines)


def plot(samples: dict[str, list[float]], path: Path) -> None:
    """Cumulative latency curves (log time axis), one panel per group of samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in ("/bin/true", "policy", "spawn") if any(k.startswith(g) for k in samples)]
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(6 * max(1, len(groups)), 4.5), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=False):
        for name, values in sorted(samples.items()):
            if not name.startswith(group) or not values:
                continue
            ordered = sorted(v for v in values if v > 0)
            ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))],
                    label=name.split(": ", 1)[-1])
        ax.set_xscale("log")
        ax.set_xlabel("latency, ms (log)")
        ax.set_ylabel("fraction of calls at or below")
        ax.set_title({"/bin/true": "/bin/true to final result", "policy": "policy decision (normal inputs)",
                      "spawn": "sandbox start"}[group])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    """Run the benches, print and write the table, draw the plot."""
    parser = argparse.ArgumentParser(description="every benchmark of issue 17: one table, one plot")
    parser.add_argument("--out", type=Path, default=BENCH / "out", help="where the table, JSON and plot go")
    parser.add_argument("--skip", nargs="*", default=[], help="benches not to run (e.g. load.py)")
    args = parse_args(parser, smoke={})
    names = [n for n in (SMOKE_BENCHES if args.smoke else BENCHES) if n not in args.skip]
    out = Path(tempfile.mkdtemp(prefix="bench-report-")) if args.smoke else args.out
    out.mkdir(parents=True, exist_ok=True)
    print(f"running {', '.join(names)}{' (smoke)' if args.smoke else ''}; output in {out}")
    figures: list[dict[str, Any]] = []
    samples: dict[str, list[float]] = {}
    for name in names:
        result = run_bench(name, args.smoke, out)
        figures += [{**f, "bench": name} for f in result["figures"]]
        samples.update(result["samples"])
    text = table(figures)
    print("\n" + text)
    (out / "report.txt").write_text(text + "\n")
    (out / "report.json").write_text(json.dumps({"figures": figures, "samples": samples}))
    plot(samples, out / "latency.png")
    print(f"plot: {out / 'latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
