"""The tools the chart's tests run, built once into ``.tools/`` and reused (a fresh machine
builds them in about 15 minutes; ../shared/notes/deploy.md says how each installs here):

- helm (``go install helm.sh/helm/v4/cmd/helm``);
- helm-unittest (``go build`` in a scratch module carrying the ``replace`` its go.mod needs);
- kubeconform (``go install``), with JSON schemas it can read offline:
  - Kubernetes': the ``kubernetes-validate`` wheel's strict schemas, their ``$ref``s to
    kubernetes.io rewritten to local files and their ``$id``s dropped;
  - the Prometheus Operator's ServiceMonitor and PrometheusRule: CRDs that controller-gen
    (``go install``) generates from the operator's API module, their ``openAPIV3Schema``
    made strict (no property a CRD does not declare) as kubeconform's CRD catalog lays
    them out.

Each function returns the path, or None with why not (no Go toolchain: the test skips).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from collections.abc import Callable
from typing import Any

import yaml

from tests.conftest import REPO
from tests.falco.plugin_build import go_binary, go_unavailable

__all__ = ["HELM_VERSION", "KUBERNETES_VERSION", "crd_schemas", "helm", "helm_unittest", "kubeconform",
           "kubernetes_schemas"]

TOOLS = REPO / ".tools"
BIN = TOOLS / "bin"
HELM_VERSION = "v4.3.2"
HELM_UNITTEST_VERSION = "v1.1.2"
KUBECONFORM_VERSION = "v0.8.0"
PROMETHEUS_OPERATOR_VERSION = "v0.95.2"
CONTROLLER_GEN_VERSION = "v0.23.0"
#: The Kubernetes release the manifests are checked against (the chart's kubeVersion floor
#: is 1.30: hostUsers and procMount).
KUBERNETES_VERSION = "1.33"
_BUILD_TIMEOUT_S = 1800


def _go(args: list[str], cwd: Path | None = None) -> str:
    """Run ``go ARGS`` (the toolchain ``go_binary`` finds) with GOBIN=.tools/bin; its stdout.

    Raises:
        RuntimeError: the command failed (its stderr).
    """
    BIN.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([str(go_binary()), *args], cwd=cwd, capture_output=True, text=True,
                         timeout=_BUILD_TIMEOUT_S,
                         env={**os.environ, "GOBIN": str(BIN), "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"})
    if out.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed: {out.stderr[-2000:]}")
    return out.stdout


def _built(name: str, version: str, build: Callable[[Path], None]) -> tuple[Path | None, str]:
    """``BIN/name`` at ``version``: reused when its stamp says so, else made by
    ``build(path)``; (None, why) without a Go toolchain."""
    binary, stamp = BIN / name, BIN / f".{name}.version"
    if binary.exists() and stamp.exists() and stamp.read_text() == version:
        return binary, ""
    why = go_unavailable()
    if why is not None:
        return None, why
    build(binary)
    stamp.write_text(version)
    return binary, ""


def _installed(name: str, module: str, version: str) -> tuple[Path | None, str]:
    """``BIN/name``, installed with ``go install module@version`` unless it is there."""
    def install(_: Path) -> None:
        _go(["install", f"{module}@{version}"])

    return _built(name, version, install)


def helm() -> tuple[Path | None, str]:
    """The helm binary (HELM_VERSION)."""
    return _installed("helm", "helm.sh/helm/v4/cmd/helm", HELM_VERSION)


def kubeconform() -> tuple[Path | None, str]:
    """The kubeconform binary (KUBECONFORM_VERSION)."""
    return _installed("kubeconform", "github.com/yannh/kubeconform/cmd/kubeconform", KUBECONFORM_VERSION)


def helm_unittest() -> tuple[Path | None, str]:
    """helm-unittest, built from a scratch module: its go.mod's ``replace`` of
    yaml-jsonpath makes ``go install`` refuse it."""
    def build(binary: Path) -> None:
        scratch = TOOLS / "build" / "helm-unittest"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        (scratch / "go.mod").write_text(
            "module build/helmunittest\n\ngo 1.24\n\n"
            f"require github.com/helm-unittest/helm-unittest {HELM_UNITTEST_VERSION}\n\n"
            "replace github.com/vmware-labs/yaml-jsonpath v0.3.2 => github.com/helm-unittest/yaml-jsonpath v0.4.0\n")
        (scratch / "tools.go").write_text(
            "//go:build tools\n\npackage tools\n\nimport _ \"github.com/helm-unittest/helm-unittest/cmd/helm-unittest\"\n")
        _go(["mod", "tidy"], cwd=scratch)
        _go(["build", "-o", str(binary), "github.com/helm-unittest/helm-unittest/cmd/helm-unittest"], cwd=scratch)

    return _built("helm-unittest", HELM_UNITTEST_VERSION, build)


def _strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that lists its
    properties and says nothing of others (openapi2jsonschema's ``--strict``)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get(
                "x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def kubernetes_schemas() -> Path:
    """A folder kubeconform reads as
    ``{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json``,
    made from the kubernetes-validate wheel's schemas for KUBERNETES_VERSION."""
    import kubernetes_validate

    name = f"v{KUBERNETES_VERSION}.0-local-strict"
    source = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / name
    if not source.is_dir():
        raise RuntimeError(f"kubernetes-validate has no schemas for {KUBERNETES_VERSION}: {source}")
    target = TOOLS / "k8s-schemas" / name
    if not (target / ".done").exists():
        target.mkdir(parents=True, exist_ok=True)
        for path in source.glob("*.json"):
            # "$ref": "/api/_definitions.json#/$defs/..." resolves against the $id
            # https://kubernetes.io/api/...: made a reference to the file beside it.
            schema = json.loads(path.read_text().replace('"/api/_definitions.json#', '"_definitions.json#'))
            schema.pop("$id", None)
            (target / path.name).write_text(json.dumps(schema))
        (target / ".done").write_text(KUBERNETES_VERSION)
    return target.parent


def crd_schemas() -> tuple[Path | None, str]:
    """A folder kubeconform reads as ``{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json``
    holding the ServiceMonitor and PrometheusRule schemas of PROMETHEUS_OPERATOR_VERSION: the
    CRDs generated by controller-gen from the operator's API types (its
    ``pkg/apis/monitoring`` module: the only part of the operator the module proxy serves)."""
    target = TOOLS / "crd-schemas"
    done = target / ".done"
    if done.exists() and done.read_text() == PROMETHEUS_OPERATOR_VERSION:
        return target, ""
    controller_gen, why = _installed("controller-gen", "sigs.k8s.io/controller-tools/cmd/controller-gen",
                                     CONTROLLER_GEN_VERSION)
    if controller_gen is None:
        return None, why
    module = "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring"
    scratch = TOOLS / "build" / "crds"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    (scratch / "go.mod").write_text(f"module build/crds\n\ngo 1.24\n\nrequire {module} {PROMETHEUS_OPERATOR_VERSION}\n")
    _go(["mod", "download", module], cwd=scratch)
    module_dir = _go(["list", "-m", "-f", "{{.Dir}}", module], cwd=scratch).strip()
    out = subprocess.run([str(controller_gen), "crd:crdVersions=v1,allowDangerousTypes=true", "paths=./v1",
                          f"output:crd:artifacts:config={scratch / 'out'}"], cwd=module_dir,
                         capture_output=True, text=True, timeout=600, env={**os.environ, "GOFLAGS": "-mod=mod"})
    if out.returncode != 0:
        raise RuntimeError(f"controller-gen failed: {out.stderr[-2000:]}")
    for kind in ("servicemonitors", "prometheusrules"):
        crd = yaml.safe_load((scratch / "out" / f"monitoring.coreos.com_{kind}.yaml").read_text())
        group = crd["spec"]["group"]
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            path = target / group / f"{crd['spec']['names']['kind'].lower()}_{version['name']}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(schema))
    done.write_text(PROMETHEUS_OPERATOR_VERSION)
    return target, ""
