"""Copy into the Helm chart the files it ships that have their one declaration elsewhere in
the repository (Helm reads only files inside the chart directory):

- ``policies/`` -> ``files/policies/``: the default policy bundle;
- ``deploy/prometheus/mcp-gateway.rules.yaml`` -> ``files/prometheus/``: the alert and
  recording rules of the PrometheusRule;
- ``deploy/grafana/dashboards/*.json`` -> ``files/dashboards/``: the dashboard ConfigMaps;
- ``falco/rules/mcp_audit_rules.yaml`` and ``falco/config/falco.yaml`` -> ``files/falco/``:
  the Falco sidecar's rules and configuration;

and writes ``values.schema.json``: the chart's own values (:data:`VALUES_SCHEMA`) with
``config`` checked against the gateway's settings schema, generated from
``gateway/config.py`` (pydantic's JSON Schema of ``Settings``), so `helm install` refuses a
setting the gateway would refuse.

    .venv/bin/python scripts/gen_chart.py          # write the copies
    .venv/bin/python scripts/gen_chart.py --check  # exit 1 when a copy is stale

tests/deploy/test_chart.py runs the check.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "mcp-gateway"
CHART_FILES = CHART / "files"
sys.path.insert(0, str(REPO))

#: (chart sub-folder, source folder, glob of the files copied from it)
SOURCES = (
    ("policies", REPO / "policies", "**/*"),
    ("prometheus", REPO / "deploy" / "prometheus", "mcp-gateway.rules.yaml"),
    ("dashboards", REPO / "deploy" / "grafana" / "dashboards", "*.json"),
    ("falco", REPO / "falco" / "rules", "mcp_audit_rules.yaml"),
    ("falco", REPO / "falco" / "config", "falco.yaml"),
)


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON Schema object that takes only ``properties``."""
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_MAP = {"type": "object"}
_LIST = {"type": "array"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_NAME = {"type": "string", "pattern": "^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$", "maxLength": 253}
_PULL = {"enum": ["Always", "IfNotPresent", "Never"]}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_RESOURCES = _object({"requests": _MAP, "limits": _MAP})


def _image(tag: dict[str, Any]) -> dict[str, Any]:
    return _object({"repository": {"type": "string", "minLength": 1}, "tag": tag, "pullPolicy": _PULL},
                   ("repository",))


#: The chart's values (values.yaml), except ``config``.
VALUES_SCHEMA: dict[str, Any] = _object({
    "replicaCount": {"type": "integer", "minimum": 0},
    "image": _image(_STR),
    "imagePullSecrets": {"type": "array", "items": _object({"name": _NAME}, ("name",))},
    "nameOverride": _STR,
    "fullnameOverride": _STR,
    "serviceAccount": _object({"create": _BOOL, "name": _NAME, "annotations": _STRING_MAP}),
    "podAnnotations": _STRING_MAP,
    "podLabels": _STRING_MAP,
    "auth": _object({"apiKeysSecret": _NAME, "jwt": _object({
        "enabled": _BOOL, "issuer": _STR, "audience": _STR,
        "jwksUrl": {"type": "string", "pattern": "^(https?://.*)?$"}, "jwksSecret": _NAME})}),
    "tls": _object({"secretName": _NAME, "clientCertificates": _BOOL, "terminatedUpstream": _BOOL}),
    "audit": _object({"signingKeySecret": _NAME, "stdout": _BOOL}),
    "store": _object({"dsnSecret": _object({"name": _NAME, "key": {"type": "string", "minLength": 1}})}),
    "persistence": _object({"existingClaim": _NAME,
                            "sizeLimit": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?([KMGTPE]i?)?$"}}),
    "workspaces": _object({"existingClaim": _NAME}),
    "sandbox": _object({
        "seccompProfile": {"oneOf": [
            _object({"type": {"const": "Localhost"}, "localhostProfile": {"type": "string", "minLength": 1}},
                    ("type", "localhostProfile")),
            _object({"type": {"const": "Unconfined"}}, ("type",)),
        ]},
        "appArmorUnconfined": _BOOL}),
    "resources": _RESOURCES,
    "service": _object({"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "httpPort": _PORT,
                        "grpcPort": _PORT, "annotations": _STRING_MAP}),
    "opa": _object({"enabled": _BOOL, "image": _image(_STR), "resources": _RESOURCES}),
    "falco": _object({"enabled": _BOOL, "image": _image(_STR), "pluginImage": _image(_STR),
                      "resources": _RESOURCES}),
    "podDisruptionBudget": _object({"enabled": _BOOL, "maxUnavailable": {"type": ["integer", "string"]}}),
    "autoscaling": _object({"enabled": _BOOL, "minReplicas": {"type": "integer", "minimum": 1},
                            "maxReplicas": {"type": "integer", "minimum": 1},
                            "targetCPUUtilizationPercentage": {"type": "integer", "minimum": 1, "maximum": 100}}),
    "networkPolicy": _object({"enabled": _BOOL, "ingressFrom": _LIST, "egress": _LIST}),
    "metrics": _object({
        "serviceMonitor": _object({"enabled": _BOOL, "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                   "labels": _STRING_MAP}),
        "prometheusRule": _object({"enabled": _BOOL, "labels": _STRING_MAP})}),
    "dashboards": _object({"enabled": _BOOL, "labels": _STRING_MAP, "annotations": _STRING_MAP}),
    "helmTest": _object({"apiKeySecret": _NAME}),
    "nodeSelector": _STRING_MAP,
    "tolerations": _LIST,
    "affinity": _MAP,
    "topologySpreadConstraints": _LIST,
    "config": {"$ref": "#/$defs/Settings"},
    "global": _MAP,
})


def values_schema() -> str:
    """values.schema.json: :data:`VALUES_SCHEMA` with the gateway's ``Settings`` schema as
    ``config``."""
    from gateway.config import Settings

    settings = Settings.model_json_schema(ref_template="#/$defs/{model}")
    defs = settings.pop("$defs")
    defs["Settings"] = settings
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "title": "mcp-gateway chart values",
              **VALUES_SCHEMA, "$defs": defs}
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def expected() -> dict[Path, bytes]:
    """Path under ``files/`` -> content, for every file the chart ships from elsewhere."""
    out: dict[Path, bytes] = {}
    for folder, source, pattern in SOURCES:
        for path in sorted(source.glob(pattern)):
            if path.is_file():
                out[Path(folder) / path.relative_to(source)] = path.read_bytes()
    return out


def stale() -> list[str]:
    """What differs between the chart's generated files and their sources (empty when
    current), as paths under helm/mcp-gateway/."""
    want = {Path("files") / p: c for p, c in expected().items()}
    want[Path("values.schema.json")] = values_schema().encode()
    have = {p.relative_to(CHART): p.read_bytes() for p in CHART_FILES.rglob("*") if p.is_file()}
    schema = CHART / "values.schema.json"
    if schema.exists():
        have[Path("values.schema.json")] = schema.read_bytes()
    return sorted({str(p) for p in want.keys() | have.keys() if want.get(p) != have.get(p)})


def main() -> int:
    """Write the copies, or with --check report the stale ones."""
    parser = argparse.ArgumentParser(description="copy the chart's files from their sources")
    parser.add_argument("--check", action="store_true", help="only report stale copies (exit 1)")
    if parser.parse_args().check:
        differ = stale()
        for path in differ:
            print(f"stale: helm/mcp-gateway/{path} (run scripts/gen_chart.py)", file=sys.stderr)
        return 1 if differ else 0
    shutil.rmtree(CHART_FILES, ignore_errors=True)
    for path, content in expected().items():
        (CHART_FILES / path).parent.mkdir(parents=True, exist_ok=True)
        (CHART_FILES / path).write_bytes(content)
    (CHART / "values.schema.json").write_text(values_schema())
    return 0


if __name__ == "__main__":
    sys.exit(main())
