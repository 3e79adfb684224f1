"""deploy/docker-compose.yml (issue 16), checked without a Docker engine: it is valid against
the Compose Specification's JSON schema (the one compose-go, Docker Compose's loader, embeds);
every file it mounts exists (or is the Falco plugin the test setup builds); every port it
publishes or points at is one its service listens on; every gateway variable is a setting."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.config import Settings
from tests.conftest import REPO
from tests.falco.plugin_build import OUT_DIR as FALCO_OUT
from tests.falco.plugin_build import go_binary

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_GO_VERSION = "v2.16.2"
# What each service listens on inside its container: the gateway's settings defaults, the
# upstream images' documented ports, OPA's --addr.
LISTENS = {"gateway": {8080, 8081}, "prometheus": {9090}, "grafana": {3000}, "opa": {8181}, "postgres": {5432}}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_it_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    go = go_binary()
    if go is None:
        pytest.skip("no Go toolchain to fetch compose-go's schema with")
    out = subprocess.run([go, "mod", "download", "-json", f"github.com/compose-spec/compose-go/v2@{COMPOSE_GO_VERSION}"],
                         capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**os.environ, "GOFLAGS": "-mod=mod"})
    assert out.returncode == 0, out.stdout + out.stderr
    schema = json.loads((Path(json.loads(out.stdout)["Dir"]) / "schema" / "compose-spec.json").read_text())
    jsonschema.validate(compose, schema)


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"
                continue
            path = (DEPLOY / source).resolve()
            if path.is_relative_to(REPO / ".tools"):  # a build output
                assert path == FALCO_OUT / "libmcp_audit.so", f"{name}: {source} is no build output of the tests"
            else:
                assert path.exists(), f"{name}: {source} does not exist"
        for option in service.get("security_opt", []):
            if option.startswith("seccomp="):
                assert (DEPLOY / option.removeprefix("seccomp=")).is_file()


def test_every_port_is_one_its_service_listens_on(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host, host_port, container_port = port.split(":")
            assert host == "127.0.0.1", f"{name} publishes beyond loopback: {port}"
            assert int(container_port) in LISTENS[name], f"{name}: nothing listens on {container_port}"
    # Where services point at each other.
    gateway_env = compose["services"]["gateway"]["environment"]
    targets = [gateway_env["MCP_GATEWAY_POLICY__OPA_URL"], gateway_env["MCP_GATEWAY_TASKS__STORE_DSN"],
               *yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())["scrape_configs"][0]
               ["static_configs"][0]["targets"],
               yaml.safe_load((DEPLOY / "compose" / "grafana-datasources.yaml").read_text())["datasources"][0]["url"]]
    for target in targets:
        service, port = re.search(r"(?:^|//|@)([a-z]+):(\d+)", target).groups()  # type: ignore[union-attr]
        assert int(port) in LISTENS[service], target


def test_the_gateways_variables_are_settings(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    env = dict(compose["services"]["gateway"]["environment"])  # the keys: interpolated by compose
    env["MCP_GATEWAY_AUTH__API_KEYS"] = json.dumps([{"hash": "sha256:" + "0" * 64, "principal": "me",
                                                     "tenant": "demo", "scopes": ["tasks:read"]}])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.policy.engine == "opa" and settings.tasks.store_dsn is not None
    assert str(settings.audit.path) == "/var/log/mcp-gateway/audit.jsonl" and settings.auth.api_keys
