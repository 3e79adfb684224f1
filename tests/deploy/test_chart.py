"""The Helm chart helm/mcp-gateway (issue 16), checked the ways a chart can be without a
cluster (../shared/notes/deploy.md): helm lint --strict; helm template with the default,
minimal and all-features values; every rendered object validated by kubeconform -strict
against Kubernetes' and the Prometheus Operator's schemas; values.schema.json refusing bad
values; the helm-unittest suites (helm/mcp-gateway/tests) for the invariants; and the
chart's generated files current with their sources."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.deploy import chart_tools

sys.path.insert(0, str(REPO / "scripts"))
import gen_chart  # noqa: E402

CHART = REPO / "helm" / "mcp-gateway"
VALUES = {"default": [], "minimal": [CHART / "ci" / "minimal-values.yaml"],
          "all-features": [CHART / "ci" / "all-features-values.yaml"]}


def test_the_generated_files_are_current() -> None:
    assert gen_chart.stale() == [], "run .venv/bin/python scripts/gen_chart.py"


def _tool(build: Any) -> Path:
    path, why = build()
    if path is None:
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def helm() -> Path:
    return _tool(chart_tools.helm)


def run(*command: Any, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], input=stdin, capture_output=True, text=True, timeout=300)


def template(helm: Path, *args: Any) -> subprocess.CompletedProcess[str]:
    return run(helm, "template", "gw", CHART, "--namespace", "mcp", "--kube-version",
               chart_tools.KUBERNETES_VERSION, *args)


def values_args(name: str) -> Iterator[str]:
    for path in VALUES[name]:
        yield from ("--values", str(path))


@pytest.mark.parametrize("values", VALUES)
def test_helm_lint_strict_is_clean(helm: Path, values: str) -> None:
    out = run(helm, "lint", "--strict", CHART, *values_args(values))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("values", VALUES)
def test_every_rendered_object_is_valid_for_kubernetes(helm: Path, values: str) -> None:
    kubeconform = _tool(chart_tools.kubeconform)
    crds, why = chart_tools.crd_schemas()
    if crds is None:
        pytest.skip(why)
    rendered = template(helm, *values_args(values))
    assert rendered.returncode == 0, rendered.stderr
    objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
    k8s = chart_tools.kubernetes_schemas()
    out = run(kubeconform, "-strict", "-summary", "-output", "text",
              "-kubernetes-version", f"{chart_tools.KUBERNETES_VERSION}.0",
              "-schema-location", f"{k8s}/{{{{ .NormalizedKubernetesVersion }}}}-local{{{{ .StrictSuffix }}}}/"
                                  "{{ .ResourceKind }}{{ .KindSuffix }}.json",
              "-schema-location", f"{crds}/{{{{ .Group }}}}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json",
              "-", stdin=rendered.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Valid: {len(objects)}, Invalid: 0, Errors: 0, Skipped: 0" in out.stdout, out.stdout
    kinds = {o["kind"] for o in objects}
    if values == "all-features":
        assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget",
                "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor", "PrometheusRule", "Pod"} <= kinds


@pytest.mark.parametrize("bad", [
    ["--set", "replicaCount=-1"],
    ["--set", "unknown=1"],
    ["--set", "config.tasks.max_concurrent=0"],
    ["--set", "config.no_such_setting=1"],
    ["--set", "sandbox.seccompProfile.type=RuntimeDefault"],
    ["--set", "image.pullPolicy=Sometimes"],
    ["--set", "auth.apiKeysSecret=Not_A_Name"],
])
def test_the_values_schema_refuses_bad_values(helm: Path, bad: list[str]) -> None:
    out = template(helm, *bad)
    assert out.returncode != 0 and "values don't meet the specifications of the schema" in out.stderr, out.stderr


def test_a_settings_change_rolls_the_pods(helm: Path) -> None:
    def checksum(*args: str) -> str:
        rendered = template(helm, "--show-only", "templates/deployment.yaml", *args)
        assert rendered.returncode == 0, rendered.stderr
        return yaml.safe_load(rendered.stdout)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = checksum()
    assert checksum() == base  # the same values, the same pods
    assert checksum("--set", "config.tasks.max_concurrent=5") != base
    assert checksum("--set", "opa.enabled=true") != base  # the policy engine changes


def test_the_helm_unittest_suites_pass() -> None:
    unittest = _tool(chart_tools.helm_unittest)
    out = run(unittest, "--strict", "--file", "tests/*_test.yaml", CHART)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Tests:" in out.stdout and " failed" not in out.stdout.split("Tests:")[1].splitlines()[0], out.stdout
