"""What the egress proxy costs a restricted task: a large download and a small HTTPS request
through it, against the same over the host network, in one run.

    .venv/bin/python bench/egress.py [--mb 100] [--runs 3] [--small 20] [--smoke]

Root only (it makes the test hosts of ``tests/egress_hosts.py``: a network namespace behind a
veth pair, serving HTTP and HTTPS). Each measurement is one ``sandbox.run`` of curl, the way
the gateway runs a task (``sandbox_library.Library``'s spec, a uid of its own, a cgroup
slot), timed from spawn to reap:

- ``download``: ``curl http://<test host>/bench.bin -o /dev/null`` (``--mb`` MiB), over the
  host network (``NetworkMode.HOST``, straight over the veth) and through the proxy
  (``NetworkMode.RESTRICTED``, the name on the task's allow-list); median of ``--runs``,
  the throughput, and the ratio (target, issue 18: at most 1.2);
- ``small HTTPS``: ``curl https://allowed.test/hello.txt`` (a TLS handshake and 24 bytes),
  both ways; median of ``--small`` and the latency the proxy adds.

Numbers only: benchmarks inform, tests decide.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from common import Report, parse_args
from sandbox_library import Library

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sandbox  # noqa: E402
from gateway.config import EgressSettings  # noqa: E402
from gateway.egress.allowlist import AllowList  # noqa: E402
from gateway.egress.proxy import Denial, EgressProxy, EgressTask  # noqa: E402
from tests.egress_hosts import EgressHosts  # noqa: E402

FIRST_UID = 270_000


def main() -> None:
    """Print the download and small-request table of proxy against host network."""
    parser = argparse.ArgumentParser(description="egress proxy against the host network")
    parser.add_argument("--mb", type=int, default=100, help="size of the download, MiB")
    parser.add_argument("--runs", type=int, default=3, help="downloads per path")
    parser.add_argument("--small", type=int, default=20, help="small HTTPS requests per path")
    args = parse_args(parser, smoke={"mb": 8, "runs": 1, "small": 2})
    if os.geteuid() != 0:
        raise SystemExit("bench/egress.py needs root (a network namespace for the test hosts)")
    with tempfile.TemporaryDirectory() as workdir:
        os.chmod(workdir, 0o711)
        hosts = EgressHosts.start(Path(workdir))
        proxy = EgressProxy(EgressSettings(allow_networks=[hosts.network], static_hosts=hosts.names))
        library = Library(("true",), FIRST_UID, 1)
        try:
            with open(hosts.root / "bench.bin", "wb") as fh:
                fh.truncate(args.mb << 20)  # sparse: the disk is not what is measured
            os.chmod(hosts.root / "bench.bin", 0o644)
            ca = hosts.ca_pem.read_text()
            refused: list[Denial] = []
            attach = lambda: proxy.attach(EgressTask("bench", AllowList.parse(["allowed.test"]), refused.append))  # noqa: E731

            def task(script: str, network: str) -> float:
                argv = ("sh", "-c", script)
                restricted = network == "restricted"
                result = library.run(argv, sandbox.NetworkMode(network), {"CA": ca},
                                     egress=attach() if restricted else None)
                if result.exit_code != 0 or refused:
                    raise SystemExit(f"{network}: exit {result.exit_code}: {result.stderr[-500:]!r} {refused}")
                return result.duration_ms

            host_ip = hosts.allowed_ip
            download = {
                "host": f"curl -sS -o /dev/null http://{host_ip}/bench.bin",
                "restricted": "curl -sS -o /dev/null http://allowed.test/bench.bin",
            }
            small = {
                "host": f'printf "%s" "$CA" > /tmp/ca.pem && curl -sS -o /dev/null --cacert /tmp/ca.pem '
                        f"--resolve allowed.test:443:{host_ip} https://allowed.test/hello.txt",
                "restricted": 'printf "%s" "$CA" > /tmp/ca.pem && curl -sS -o /dev/null --cacert /tmp/ca.pem '
                              "https://allowed.test/hello.txt",
            }
            times: dict[tuple[str, str], list[float]] = {}
            for name, scripts, runs in (("download", download, args.runs), ("small HTTPS", small, args.small)):
                for _ in range(runs):  # in turns, so drift in the machine's load falls on both
                    for network, script in scripts.items():
                        times.setdefault((name, network), []).append(task(script, network))
        finally:
            library.close()
            proxy.close()
            hosts.stop()
    med = {key: statistics.median(values) for key, values in times.items()}
    size_mb = args.mb * 1.048576
    print(f"\n{args.mb} MiB download ({args.runs} runs) and small HTTPS requests ({args.small}), cpus={os.cpu_count()}")
    print(f"{'what':<12} | {'network':<10} | {'median ms':>9} | {'MB/s':>7}")
    for (name, network), value in med.items():
        rate = f"{size_mb / (value / 1000):7.0f}" if name == "download" else f"{'':>7}"
        print(f"{name:<12} | {network:<10} | {value:>9.1f} | {rate}")
    ratio = med[("download", "restricted")] / med[("download", "host")]
    added = med[("small HTTPS", "restricted")] - med[("small HTTPS", "host")]
    print(f"download through the proxy / host network: {ratio:.2f} (target <= 1.2)")
    print(f"small HTTPS request: the proxy adds {added:+.1f} ms")
    report = Report()
    report.figure(f"{args.mb} MiB download through the egress proxy (median)", med[("download", "restricted")], "ms",
                  baseline=med[("download", "host")], baseline_name="host network", target="<= 1.2 x")
    report.figure("small HTTPS request through the egress proxy (median)", med[("small HTTPS", "restricted")], "ms",
                  baseline=med[("small HTTPS", "host")], baseline_name="host network", target="")
    report.write(args)


if __name__ == "__main__":
    main()
