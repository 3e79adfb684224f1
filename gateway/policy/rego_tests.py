"""Rego unit tests (``*_test.rego``) run on the embedded engine, as ``opa test`` runs them.

A test is every ``test_*`` rule of a ``*_test.rego`` module; it passes when it evaluates
to ``true`` (strict built-in errors; input ``{}`` as ``opa test`` gives none).

rego-cpp 1.5 aborts on ``with input as {...}`` and compiles each ``with input.key as``
clause in about a second against the shipped policy (superlinearly in their number). So
tests written in the one shape below are run by this driver instead of being compiled:

    test_name if {
        [not] <rule>[.<key>...] with input as <JSON object>
    }

The driver evaluates ``<rule>`` of the test's package with that input through the same
prepared bundle the gateway uses, which is what ``opa test`` computes for it: a test
starts from no input, so ``with input as X`` makes the input exactly ``X``. The JSON may
span lines and end collections with a trailing comma (as ``opa fmt`` writes them). Every
other test is compiled and run by rego-cpp as written. ``opa test -b policies/`` runs
all of them natively.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from gateway.errors import PolicyEngineError
from gateway.policy.bundle import PolicySource, load_policy_dir
from gateway.policy.embedded import Evaluator, result_value

__all__ = ["RegoTestResult", "run_rego_tests"]

_PACKAGE = re.compile(r"^package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_TEST_HEAD = re.compile(r"^(test_\w+)\s+if\s*\{", re.MULTILINE)
_TEST_RULE = re.compile(r"^(test_\w+)\b", re.MULTILINE)
_DRIVEN_BODY = re.compile(r"^\s*(not\s+)?([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s+with\s+input\s+as\s+(\{.*\})\s*$", re.S)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


class RegoTestResult(NamedTuple):
    """One Rego unit test: ``name`` as ``data.<package>.<rule>``; ``error`` None on a pass."""

    name: str
    passed: bool
    error: str | None


@dataclass(frozen=True)
class _DrivenTest:
    name: str
    negated: bool
    entrypoint: str  # pkg/rule
    keys: tuple[str, ...]  # path inside the rule's value
    input: dict[str, Any]


def run_rego_tests(policy_dir: Path) -> list[RegoTestResult]:
    """Run every ``test_*`` rule of the ``*_test.rego`` files under ``policy_dir``.

    Returns:
        one result per test, in file order.

    Raises:
        PolicyEngineError: the policy or its tests cannot be loaded or compiled.
    """
    source = load_policy_dir(policy_dir, include_tests=True)
    modules: list[tuple[str, str]] = []
    driven: list[_DrivenTest] = []
    compiled: list[tuple[str, str]] = []  # (reported name, entry point)
    for rel, text in source.modules:
        if not rel.endswith("_test.rego"):
            modules.append((rel, text))
            continue
        package = _PACKAGE.search(text)
        if package is None:
            raise PolicyEngineError(f"{rel}: no package line")
        pkg = package.group(1)
        text, tests = _take_driven_tests(text, pkg)
        driven.extend(tests)
        modules.append((rel, text))
        for rule in dict.fromkeys(_TEST_RULE.findall(text)):
            compiled.append((f"data.{pkg}.{rule}", f"{pkg.replace('.', '/')}/{rule}"))
    entrypoints = sorted({t.entrypoint for t in driven} | {entry for _, entry in compiled})
    if not entrypoints:
        return []
    evaluator = Evaluator(PolicySource(tuple(modules), source.data, source.revision), entrypoints)
    results = [_run_driven(evaluator, test) for test in driven]
    results += [_run_compiled(evaluator, name, entry) for name, entry in compiled]
    return results


def _take_driven_tests(text: str, pkg: str) -> tuple[str, list[_DrivenTest]]:
    """The module with the driver's tests blanked out (line numbers kept), and those tests."""
    tests: list[_DrivenTest] = []
    out, pos = [], 0
    for head in _TEST_HEAD.finditer(text):
        if head.start() < pos:
            continue
        end = _closing_brace(text, head.end())
        if end is None:
            continue
        match = _DRIVEN_BODY.match(text[head.end():end])
        if match is None:
            continue
        try:
            value = json.loads(_TRAILING_COMMA.sub(r"\1", match.group(3)))
        except ValueError:
            continue  # not plain JSON: left to rego-cpp, which reports it
        if not isinstance(value, dict):
            continue
        rule, *keys = match.group(2).split(".")
        tests.append(_DrivenTest(f"data.{pkg}.{head.group(1)}", bool(match.group(1)),
                                 f"{pkg.replace('.', '/')}/{rule}", tuple(keys), value))
        out.append(text[pos:head.start()])
        out.append("\n" * text.count("\n", head.start(), end + 1))
        pos = end + 1
    out.append(text[pos:])
    return "".join(out), tests


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the ``}`` closing the block opened just before ``start``; strings and
    comments are skipped."""
    depth, i, n = 1, start, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "`":
            i = text.find("`", i + 1)
            if i < 0:
                return None
        elif c == "#":
            i = text.find("\n", i)
            if i < 0:
                return None
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _value(evaluator: Evaluator, entry: str, input_doc: dict[str, Any]) -> tuple[bool, Any]:
    """(defined, value) of ``entry`` for ``input_doc``, through the gateway's own path
    (JSON text in, strict built-in errors). Raises PolicyEngineError."""
    text = evaluator.evaluate_json(json.dumps(input_doc), entry)
    return (False, None) if text is None else (True, result_value(text))


def _run_driven(evaluator: Evaluator, test: _DrivenTest) -> RegoTestResult:
    try:
        defined, value = _value(evaluator, test.entrypoint, test.input)
    except PolicyEngineError as exc:
        return RegoTestResult(test.name, False, exc.message)
    for key in test.keys:
        if isinstance(value, dict) and key in value:
            value = value[key]
        else:
            defined = False
            break
    holds = defined and value is not False
    if holds != test.negated:
        return RegoTestResult(test.name, True, None)
    shown = json.dumps(value) if defined else "undefined"
    return RegoTestResult(test.name, False, f"{'not ' if test.negated else ''}{test.entrypoint}: got {shown}")


def _run_compiled(evaluator: Evaluator, name: str, entry: str) -> RegoTestResult:
    try:
        defined, value = _value(evaluator, entry, {})  # as opa test: no input
    except PolicyEngineError as exc:
        return RegoTestResult(name, False, exc.message)
    if not defined:
        return RegoTestResult(name, False, "undefined (a condition did not hold)")
    if value is not True:
        return RegoTestResult(name, False, f"result {value!r}")
    return RegoTestResult(name, True, None)
