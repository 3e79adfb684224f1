"""promtool and a real, throwaway Prometheus server for the tests.

``prometheus_binaries()`` finds ``promtool`` and ``prometheus`` (on PATH or in /usr/bin) and,
when they are missing and we are root on a machine with apt-get, installs Debian's
``prometheus`` package (2.42 on bookworm) with the package's service kept from starting; where
they cannot be had, the calling test is skipped with the reason. ``PrometheusServer.start`` runs
the server on a free 127.0.0.1 port with a temp config and TSDB directory (nothing else on the
machine is touched) until ``stop``; the ``/api/v1`` helpers read it. Also here: where the rule
files and dashboards live, and the names a PromQL expression reads.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.debian import find_or_install
from tests.procs import free_port

_START_TIMEOUT_S = 30.0
REPO = Path(__file__).resolve().parent.parent
RULES_DIR = REPO / "deploy" / "prometheus"
RULE_FILES = sorted(RULES_DIR.glob("*.rules.yaml"))
DASHBOARD_DIR = REPO / "deploy" / "grafana" / "dashboards"
# a metric or recording-rule name in PromQL (label names in by (...) never start like these)
METRIC_NAME = re.compile(r"(?<![\w:\"])((?:mcp_|process_|python_)[\w:]*|[a-z_]+:[\w:]+)")


def rules() -> list[dict[str, Any]]:
    """Every rule (recording and alerting) of the rule files."""
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def exported_names() -> set[str]:
    """Every sample name a gateway process can expose (the families of the default registry)."""
    from prometheus_client import REGISTRY

    import gateway.observability.metrics  # noqa: F401 - registers the mcp_* families

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}
    return {family.name + suffix for family in REGISTRY.collect() for suffix in suffixes.get(family.type, ("",))}


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def dashboard_targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) of every query of a dashboard."""
    return [(panel, target) for panel in dashboard["panels"] for target in panel.get("targets", [])]


@dataclass(frozen=True)
class PrometheusBinaries:
    promtool: Path
    prometheus: Path


def _find() -> PrometheusBinaries | None:
    found = []
    for name in ("promtool", "prometheus"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path is None:
            return None
        found.append(Path(path))
    return PrometheusBinaries(*found)


def prometheus_binaries() -> PrometheusBinaries:
    """promtool and prometheus, installed with apt-get when missing (root only), or skip."""
    return find_or_install("prometheus", _find, "Prometheus tests need promtool and prometheus (on PATH or /usr/bin)")


class PrometheusServer:
    """A Prometheus server on 127.0.0.1 with the given config (a dict written as YAML)."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, root: Path) -> None:
        self.proc, self.url, self.root = proc, url, root
        self.http = httpx.Client(base_url=url, timeout=10)

    @classmethod
    def start(cls, binary: Path, config: dict[str, Any]) -> PrometheusServer:
        root = Path(tempfile.mkdtemp(prefix="mcp-prometheus-", dir="/tmp"))
        (root / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        log = open(root / "prometheus.log", "wb")
        try:
            proc = subprocess.Popen(
                [str(binary), f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                cwd=root, stdout=log, stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        server = cls(proc, f"http://127.0.0.1:{port}", root)
        try:
            server._wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                if self.http.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"test Prometheus did not start (exit {self.proc.poll()}); log:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        path = self.root / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def api(self, path: str, **params: Any) -> Any:
        """``data`` of a ``/api/v1`` answer (raises on an error answer)."""
        reply = self.http.get(f"/api/v1/{path}", params=params)
        body = reply.json()
        if reply.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"/api/v1/{path} {params}: {reply.status_code} {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now (a scalar comes back as one labelless sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "vector":
            return data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        raise AssertionError(f"{expr}: a {data['resultType']}, not an instant vector")

    def rule_groups(self) -> list[dict[str, Any]]:
        return self.api("rules")["groups"]

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
