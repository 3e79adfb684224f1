"""The Falco rules (issue 14, item 5) as close to Falco as this machine allows.

- The rules file is checked against a schema modelled on Falco's rule loader, loads (lists
  and macros resolve, overrides apply) and uses only fields the built plugin reports.
- Every rule's condition, lists and macros expanded, is evaluated by a real Falco filter
  engine (libsinsp in Debian's sysdig 0.29, through the test-only plugin API bridge, see
  ``tests/falco/sysdig.py``) on events our plugin extracts from the S1-S4, gateway and stdio
  fixtures; the matched events must be exactly the expected alerts.
- The fixtures are recorded again from a real gateway, and the rules raise on the new trail
  exactly what its driver expects, equal to the fixtures' alerts but for per-run values.
- An operator's override file changes what fires as Falco's ``override:`` would.
- With a ``falco`` binary on PATH, ``falco -V`` validates the rules and a replay of the
  fixtures raises the expected alerts; without one the test is skipped, saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.audit.fields import FIELDS
from tests.falco import scenarios, sysdig
from tests.falco.plugin_build import build_harness, plugin_or_skip
from tests.falco.rules import RULES_FILE, SCHEMA_FILE, Rules, condition_fields, load, output_fields

BASELINE = {
    "MCP Unapproved Endpoint Access": "WARNING",
    "MCP Insecure TLS": "NOTICE",
    "MCP Excessive Data Transfer": "WARNING",
    "MCP Excessive Tool Invocations": "NOTICE",
}
GATEWAY_RULES = {"MCP Command Denied by Policy", "MCP Sandbox Limit Hit", "MCP Authentication Failure",
                 "MCP Cross-Tenant Probe", "MCP Policy Reload", "MCP Audit Sink Failure", "MCP Egress Refused"}
# Values that differ from run to run (ports, ids, keys, timings), left out when a new
# recording is compared with the fixtures.
PER_RUN = {"mcp.server_port", "mcp.task_id", "mcp.credential_sha256", "mcp.duration_ms", "mcp.failed_events",
           "mcp.outage_ms", "mcp.policy_reason"}
FIXTURE_NAMES = [*scenarios.SCENARIOS, "stdio"]


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load()


@pytest.fixture(scope="module")
def plugin() -> Path:
    return plugin_or_skip()


@pytest.fixture(scope="module")
def engine(plugin: Path) -> Path:
    """The plugin, with sysdig and the bridge ready to evaluate conditions on its events."""
    reason = sysdig.ensure_sysdig()
    if reason:
        pytest.skip(reason)
    sysdig.build_bridge(plugin)
    return plugin


def fired(plugin: Path, trail: Path, rules: Rules) -> list[dict[str, Any]]:
    """What the filter engine raises on ``trail``: one alert per (event, enabled rule) whose
    expanded condition matches, as ``{"seq", "rule", "priority", "output_fields"}``."""
    alerts = []
    for rule in rules.expanded():
        if not rule.enabled:
            continue
        fields = output_fields(rule.output)
        for hit in sysdig.match(plugin, trail, rule.condition, ["mcp.seq", *fields]):
            alerts.append({"seq": int(hit["mcp.seq"]), "rule": rule.name, "priority": rule.priority,
                           "output_fields": {f: hit[f] for f in fields}})
    return sorted(alerts, key=lambda a: (a["seq"], a["rule"]))


def printed(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``alerts`` with their output fields as the filter engine prints them."""
    return [{**a, "output_fields": {f: sysdig.as_printed(v) for f, v in a["output_fields"].items()}} for a in alerts]


def per_run_values_left_out(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``alerts`` without what differs between two recordings of a scenario: the position
    in the trail (decisions and task ends of concurrent tasks interleave) and the values
    of :data:`PER_RUN`."""
    return [{"rule": a["rule"], "priority": a["priority"],
             "output_fields": {f: v for f, v in a["output_fields"].items() if f not in PER_RUN}}
            for a in printed(alerts)]


# -- the file itself ----------------------------------------------------------------


def test_the_rules_file_is_valid_for_falcos_loader(rules: Rules) -> None:
    document = yaml.safe_load(RULES_FILE.read_text())
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(document)]
    assert not errors, errors
    assert list(document[0]) == ["required_engine_version"] and list(document[1]) == ["required_plugin_versions"]
    assert rules.required_plugins == {"mcp_audit": "0.1.0"}
    expanded = {r.name: r for r in rules.expanded()}  # every list and macro resolves
    assert {name: expanded[name].priority for name in BASELINE} == BASELINE
    assert GATEWAY_RULES <= set(expanded)
    assert all(r.source == "mcp_audit" and r.enabled for r in expanded.values())
    # Every list and macro is used: a tuning knob that nothing reads tunes nothing.
    text = " ".join([*rules.macros.values(), *(r["condition"] for r in rules.rules.values())])
    assert [n for n in [*rules.lists, *rules.macros] if n not in text.replace("(", " ").replace(")", " ").split()] == []


def test_the_plugin_reports_every_field_the_rules_use(rules: Rules, plugin: Path) -> None:
    harness = build_harness()
    assert harness is not None
    info = json.loads(subprocess.run([str(harness), "-plugin", str(plugin), "-info"], capture_output=True,
                                     text=True, check=True, timeout=60).stdout)
    reported = {f["name"]: f["type"] for f in info["fields"]}
    assert info["name"] == "mcp_audit" and info["event_source"] == "mcp_audit"
    assert info["version"] == rules.required_plugins["mcp_audit"]
    used = set()
    for rule in rules.expanded():
        used |= condition_fields(rule.condition) | set(output_fields(rule.output))
    assert used - set(reported) == set()
    assert {f"mcp.{f.name}" for f in FIELDS} <= set(reported)


def test_a_condition_naming_an_unknown_macro_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(RULES_FILE.read_text().replace("mcp_call_arrived and mcp_network_call\n",
                                                     "mcp_call_arived and mcp_network_call\n", 1))
    with pytest.raises(ValueError, match="mcp_call_arived"):
        load(broken).expanded()


# -- the filter engine on the fixtures -------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_each_fixture_raises_exactly_its_expected_alerts(name: str, engine: Path, rules: Rules) -> None:
    trail = scenarios.FIXTURES / f"{name}.jsonl"
    expected = json.loads((scenarios.FIXTURES / f"{name}.alerts.json").read_text())
    assert fired(engine, trail, rules) == printed(expected)


def test_the_baseline_fixtures_raise_their_scenarios_rule(rules: Rules) -> None:
    """What each scenario is for, read off the committed expectations: S1-S5 raise their
    baseline rule (S4 on calls 101-120 only, S5 on MCP calls 101-105 of any tool), stdio
    sessions and a response of exactly 10 MiB raise nothing."""
    def alerts(name: str) -> list[dict[str, Any]]:
        return json.loads((scenarios.FIXTURES / f"{name}.alerts.json").read_text())

    assert {a["rule"] for a in alerts("s1_unapproved_endpoint")} == {"MCP Unapproved Endpoint Access"}
    assert {a["rule"] for a in alerts("s2_plaintext")} == {"MCP Insecure TLS"}
    assert [a["output_fields"]["mcp.response_bytes"] for a in alerts("s3_large_response")] == [10485761]
    s3 = [json.loads(line) for line in (scenarios.FIXTURES / "s3_large_response.jsonl").read_text().splitlines()]
    assert sorted(e["response_bytes"] for e in s3 if e["event_type"] == "task_end") == [10485760, 10485761]
    assert [a["output_fields"]["mcp.tool_invoke_count"] for a in alerts("s4_many_calls")] == list(range(101, 121))
    s5 = alerts("s5_mcp_many_calls")  # over MCP, reading a task counts as much as running one
    assert [a["output_fields"]["mcp.tool_invoke_count"] for a in s5] == list(range(101, 106))
    assert {a["output_fields"]["mcp.transport"] for a in s5} == {"mcp"}
    assert alerts("stdio") == []
    assert {a["rule"] for a in alerts("gateway")} == GATEWAY_RULES


# -- the same from today's gateway ------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(state_root: Path) -> dict[str, scenarios.Recording]:
    return scenarios.record_all(Path(tempfile.mkdtemp(prefix="falco-live-", dir=state_root)))


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_todays_gateway_raises_what_the_fixtures_record(name: str, recorded: dict[str, scenarios.Recording],
                                                         engine: Path, rules: Rules, tmp_path: Path) -> None:
    recording = recorded[name]
    trail = tmp_path / f"{name}.jsonl"
    trail.write_text("".join(line + "\n" for line in recording.lines))
    expected = scenarios.expected_alerts(recording, rules)
    assert fired(engine, trail, rules) == printed(expected)
    fixture = json.loads((scenarios.FIXTURES / f"{name}.alerts.json").read_text())
    assert per_run_values_left_out(expected) == per_run_values_left_out(fixture), (
        "the fixtures are not what the gateway writes today: python -m tests.falco.scenarios records them anew")


def test_an_operators_overrides_change_what_fires(engine: Path, tmp_path: Path) -> None:
    local = tmp_path / "mcp_audit_local.yaml"
    local.write_text(yaml.safe_dump([
        {"list": "mcp_approved_endpoints", "items": [scenarios.UNAPPROVED_HOST], "override": {"items": "append"}},
        {"macro": "mcp_excessive_invocations", "condition": "(mcp.tool_invoke_count > 115)",
         "override": {"condition": "replace"}},
        {"rule": "MCP Insecure TLS", "enabled": False},
    ], sort_keys=False))
    tuned = load(RULES_FILE, local)
    counts: Counter[str] = Counter()
    for name in ("s1_unapproved_endpoint", "s2_plaintext", "s4_many_calls"):
        counts.update(a["rule"] for a in fired(engine, scenarios.FIXTURES / f"{name}.jsonl", tuned))
    assert counts == {"MCP Excessive Tool Invocations": 5}


# -- a real Falco, where there is one ------------------------------------------------------


@pytest.fixture(scope="module")
def falco_binary() -> Iterator[str]:
    binary = shutil.which("falco")
    if binary is None:
        pytest.skip("no falco binary on PATH: no registry this machine reaches ships Falco "
                    "(the rules were checked by schema and evaluated by sysdig's libsinsp instead)")
    yield binary


def falco_config(plugin: Path, trail: Path, into: Path) -> Path:
    config = yaml.safe_load((RULES_FILE.parent.parent / "config" / "falco.yaml").read_text())
    config["plugins"][0].update(library_path=str(plugin), open_params=str(trail))
    config["plugins"][0]["init_config"]["follow"] = False
    config["rules_files"] = [str(RULES_FILE)]
    path = into / "falco.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_falco_validates_the_rules_and_replays_the_fixtures(falco_binary: str, plugin: Path,
                                                            tmp_path: Path) -> None:
    config = falco_config(plugin, scenarios.FIXTURES / "s1_unapproved_endpoint.jsonl", tmp_path)
    check = subprocess.run([falco_binary, "-c", str(config), "-V", str(RULES_FILE)], capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0 and "warning" not in (check.stdout + check.stderr).lower(), check.stdout + check.stderr
    for name in FIXTURE_NAMES:
        config = falco_config(plugin, scenarios.FIXTURES / f"{name}.jsonl", tmp_path)
        run = subprocess.run([falco_binary, "-c", str(config)], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        alerts = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
        expected = json.loads((scenarios.FIXTURES / f"{name}.alerts.json").read_text())
        assert Counter((a["rule"], a["priority"].upper()) for a in alerts) == \
            Counter((e["rule"], e["priority"].upper()) for e in expected)
