"""The embedded policy engine: Rego evaluated in-process by regopy (rego-cpp).

Prepare once, evaluate many (style rule 3): :class:`EmbeddedEngine` reads the policy
directory once, compiles it into a rego-cpp bundle with the single entry point
``mcp/decision``, and then answers each :meth:`EmbeddedEngine.evaluate` with one bundle
query. An engine instance never changes; a reload builds a new engine and swaps it in.

Threads: each thread gets its own ``Interpreter`` and its own bundle, built lazily from the
sources read at construction (about 20 ms, once per thread). rego-cpp does not document a
bundle as safe to query from several threads at once, and regopy's ctypes calls release
the GIL, so a shared bundle would really be walked concurrently; a per-thread bundle costs
one compile per worker thread and removes the question.

rego-cpp 1.5 limits found while writing ``policies/`` (the shipped policy avoids them):

* ``with input as {...}`` (replacing the whole input) aborts or segfaults the process.
  :func:`load_policy_dir` refuses any module that uses it; ``with input.key as ...``
  works and is what the Rego unit tests use.
* ``replace(s, "", x)`` never returns.
* ``sprintf("%s", [s])`` emits some built-in results (``concat``, ``lower``, ...) with
  their JSON quotes, corrupting the result document; that surfaces here as a
  ``PolicyEngineError``, never as a wrong decision.

Every failure is a :class:`~gateway.errors.PolicyEngineError` (fail closed, code 5003).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from regopy import Bundle, Input, Interpreter, LogLevel, RegoError

from gateway.errors import PolicyEngineError
from gateway.models import Decision, SandboxGrant

__all__ = [
    "ENTRYPOINT",
    "EmbeddedEngine",
    "PolicySource",
    "RegoTestResult",
    "load_policy_dir",
    "run_rego_tests",
]

#: The rule every engine evaluates: ``data.mcp.decision``, as a rego-cpp entry point.
ENTRYPOINT = "mcp/decision"

_NETWORK_MODES = frozenset({"none", "loopback", "host", "restricted"})
_DENY_CATEGORIES = frozenset({"command", "network", "file", "resource"})
_DECISION_KEYS = frozenset({"allow", "reasons", "rule_ids", "sandbox"})
_SANDBOX_INT_KEYS = ("timeout_s", "memory_bytes", "pids", "cpu_seconds")
_SANDBOX_LIST_KEYS = ("allowed_hosts", "ro_paths", "rw_paths")
_SANDBOX_KEYS = frozenset({"network", *_SANDBOX_INT_KEYS, *_SANDBOX_LIST_KEYS})

_WITH_WHOLE_INPUT = re.compile(r"\bwith\s+input\s+as\b")
_PACKAGE = re.compile(r"^package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_TEST_RULE = re.compile(r"^(test_\w+)\b", re.MULTILINE)


@dataclass(frozen=True)
class PolicySource:
    """A policy directory as read from disk, in OPA bundle layout.

    Attributes:
        modules: ``(relative path, source)`` of every ``*.rego`` file, sorted by path.
        data: all ``data.json`` files merged; one in ``a/b/`` is mounted at ``data.a.b``.
        revision: ``.manifest`` ``revision``, else the first 12 hex digits of the
            SHA-256 of the sources.
    """

    modules: tuple[tuple[str, str], ...]
    data: dict[str, Any]
    revision: str


class RegoTestResult(NamedTuple):
    """One Rego unit test: ``name`` as ``data.<package>.<rule>``; ``error`` None on a pass."""

    name: str
    passed: bool
    error: str | None


def load_policy_dir(policy_dir: Path, *, include_tests: bool = False) -> PolicySource:
    """Read the ``*.rego`` modules, ``data.json`` files and ``.manifest`` under ``policy_dir``.

    ``*_test.rego`` files are skipped unless ``include_tests``.

    Raises:
        PolicyEngineError: the directory is missing or has no module, a file cannot be
            read or parsed, two data files set the same key, or a module replaces the
            whole input with ``with input as`` (which crashes rego-cpp 1.5).
    """
    root = Path(policy_dir)
    if not root.is_dir():
        raise PolicyEngineError(f"policy directory {root} does not exist")
    modules: list[tuple[str, str]] = []
    data: dict[str, Any] = {}
    digest = hashlib.sha256()
    try:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if not path.is_file():
                continue
            if path.suffix == ".rego":
                if path.name.endswith("_test.rego") and not include_tests:
                    continue
                source = path.read_text(encoding="utf-8")
                _refuse_whole_input_override(rel, source)
                modules.append((rel, source))
            elif path.name == "data.json":
                source = path.read_text(encoding="utf-8")
                mount = path.parent.relative_to(root).parts
                _merge_data(data, _mounted(mount, json.loads(source)), rel)
            else:
                continue
            digest.update(rel.encode() + b"\0" + source.encode() + b"\0")
        manifest = root / ".manifest"
        revision = ""
        if manifest.is_file():
            revision = json.loads(manifest.read_text(encoding="utf-8")).get("revision", "")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise PolicyEngineError(f"cannot load policy from {root}: {exc}") from exc
    if not modules:
        raise PolicyEngineError(f"no Rego modules under {root}")
    if not isinstance(revision, str) or not revision:
        revision = digest.hexdigest()[:12]
    return PolicySource(modules=tuple(modules), data=data, revision=revision)


class EmbeddedEngine:
    """The :class:`~gateway.policy.PolicyEngine` running Rego in-process.

    Args:
        policy_dir: an OPA-layout bundle directory (``policies/``).
        max_input_bytes: cap on the JSON-encoded input, bytes, checked before evaluation
            so a huge request never reaches the interpreter.

    Raises:
        PolicyEngineError: the policy cannot be loaded or does not compile.
    """

    name = "embedded"

    def __init__(self, policy_dir: Path, *, max_input_bytes: int = 64 * 1024) -> None:
        self._source = load_policy_dir(policy_dir)
        self.revision = self._source.revision
        self._max_input_bytes = max_input_bytes
        self._local = threading.local()
        self._runtime()  # compile now: a broken policy fails at startup, not per request

    def evaluate(self, policy_input: Mapping[str, Any]) -> Decision:
        """Evaluate ``data.mcp.decision`` for ``policy_input`` (design section 6).

        Returns:
            the decision; ``sandbox`` is None on a deny.

        Raises:
            PolicyEngineError: input not JSON-encodable or over ``max_input_bytes``;
                the interpreter failed (built-in errors are strict); the decision is
                undefined or malformed.
        """
        _check_input_size(policy_input, self._max_input_bytes)
        interpreter, bundle = self._runtime()
        start_ns = time.perf_counter_ns()
        try:
            interpreter.set_input(Input(policy_input))
            output = interpreter.query_bundle_entrypoint(bundle, ENTRYPOINT)
            ok = output.ok()
            error_text = "" if ok else str(output)
            results = output.results
        except (RegoError, ValueError, TypeError, OverflowError) as exc:
            # ValueError also covers a result document that is not valid JSON.
            raise PolicyEngineError(f"policy evaluation failed: {exc}") from exc
        eval_ms = (time.perf_counter_ns() - start_ns) / 1e6
        if not ok:
            raise PolicyEngineError(f"policy evaluation failed: {error_text.strip()}")
        if not results or not results[0].expressions:
            raise PolicyEngineError("policy decision data.mcp.decision is undefined")
        return decision_from_document(
            results[0].expressions[0], revision=self.revision, eval_ms=eval_ms
        )

    def _runtime(self) -> tuple[Interpreter, Bundle]:
        """This thread's interpreter and bundle, compiled on the thread's first call."""
        runtime: tuple[Interpreter, Bundle] | None = getattr(self._local, "runtime", None)
        if runtime is None:
            bundle = _compile(self._source, [ENTRYPOINT])
            interpreter = Interpreter()
            interpreter.strict_built_in_errors = True
            runtime = (interpreter, bundle)
            self._local.runtime = runtime
        return runtime


def decision_from_document(
    document: Any, *, revision: str, eval_ms: float, engine: str = "embedded", decision_id: str | None = None
) -> Decision:
    """A :class:`Decision` from the JSON value of ``data.mcp.decision``, checked strictly.

    Shared with the OPA server engine, so both engines accept exactly the same shape.
    ``decision_id`` is the engine's own id for the evaluation (OPA's, when its decision
    log is on); without one a fresh uuid4 is used.

    Raises:
        PolicyEngineError: "malformed decision: ..." for a missing or unknown key, a
            wrong type, a negative limit, an unknown network mode, or a deny without a
            rule id whose category (command, network, file, resource) picks the code.
    """
    doc = _object(document, "decision", _DECISION_KEYS)
    allow = doc["allow"]
    if type(allow) is not bool:
        raise _malformed("allow is not a boolean")
    reasons = _strings(doc["reasons"], "reasons")
    rule_ids = _strings(doc["rule_ids"], "rule_ids")
    if not allow and (not rule_ids or rule_ids[0].split(".", 1)[0] not in _DENY_CATEGORIES):
        raise _malformed("a deny must start rule_ids with a command/network/file/resource id")
    box = _object(doc["sandbox"], "sandbox", _SANDBOX_KEYS)
    if box["network"] not in _NETWORK_MODES:
        raise _malformed(f"sandbox.network {box['network']!r} is not a known mode")
    limits = {}
    for key in _SANDBOX_INT_KEYS:
        value = box[key]
        if type(value) is not int or value < 0:
            raise _malformed(f"sandbox.{key} is not a non-negative integer")
        limits[key] = value
    grant = SandboxGrant(
        network=box["network"],
        allowed_hosts=_strings(box["allowed_hosts"], "sandbox.allowed_hosts"),
        ro_paths=_strings(box["ro_paths"], "sandbox.ro_paths"),
        rw_paths=_strings(box["rw_paths"], "sandbox.rw_paths"),
        **limits,
    )
    return Decision(
        allow=allow,
        reasons=reasons,
        rule_ids=rule_ids,
        sandbox=grant if allow else None,
        decision_id=decision_id or str(uuid.uuid4()),
        engine=engine,
        revision=revision,
        eval_ms=eval_ms,
    )


def run_rego_tests(policy_dir: Path) -> list[RegoTestResult]:
    """Run every ``test_*`` rule of the ``*_test.rego`` files under ``policy_dir``.

    A test passes when its rule evaluates to ``true`` with input ``{}`` and strict
    built-in errors, as ``opa test`` would count it. All tests share one bundle.

    Raises:
        PolicyEngineError: the policy or its tests cannot be loaded or compiled.
    """
    source = load_policy_dir(policy_dir, include_tests=True)
    names: list[tuple[str, str]] = []  # (reported name, entry point)
    for rel, text in source.modules:
        if not rel.endswith("_test.rego"):
            continue
        package = _PACKAGE.search(text)
        if package is None:
            raise PolicyEngineError(f"{rel}: no package line")
        for rule in dict.fromkeys(_TEST_RULE.findall(text)):
            names.append(
                (f"data.{package.group(1)}.{rule}", f"{package.group(1).replace('.', '/')}/{rule}")
            )
    if not names:
        return []
    bundle = _compile(source, [entry for _, entry in names])
    results = []
    for name, entry in names:
        interpreter = Interpreter()
        interpreter.strict_built_in_errors = True
        try:
            interpreter.set_input(Input({}))  # rego-cpp errors on a never-set input
            output = interpreter.query_bundle_entrypoint(bundle, entry)
            ok, text, found = output.ok(), str(output), output.results
        except (RegoError, ValueError) as exc:
            results.append(RegoTestResult(name, False, str(exc)))
            continue
        if not ok:
            results.append(RegoTestResult(name, False, text.strip()))
        elif not found or not found[0].expressions:
            results.append(RegoTestResult(name, False, "undefined (a condition did not hold)"))
        elif found[0].expressions[0] is not True:
            results.append(RegoTestResult(name, False, f"result {found[0].expressions[0]!r}"))
        else:
            results.append(RegoTestResult(name, True, None))
    return results


# ---- helpers -------------------------------------------------------------------------


def _compile(source: PolicySource, entrypoints: Iterable[str]) -> Bundle:
    """A rego-cpp bundle of ``source`` with plans for ``entrypoints``."""
    builder = Interpreter()
    builder.log_level = LogLevel.NONE  # errors are raised to us; keep stderr clean
    try:
        for rel, text in source.modules:
            builder.add_module(rel, text)
        builder.add_data(source.data)
        bundle = builder.build(None, list(entrypoints))
    except RegoError as exc:
        raise PolicyEngineError(f"policy does not compile: {exc}") from exc
    if not bundle.ok():
        raise PolicyEngineError("policy does not compile (rego-cpp returned no bundle)")
    return bundle


def _check_input_size(policy_input: Mapping[str, Any], limit: int) -> None:
    try:
        encoded = json.dumps(policy_input, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PolicyEngineError(f"policy input is not JSON-encodable: {exc}") from exc
    size = len(encoded.encode("utf-8"))
    if size > limit:
        raise PolicyEngineError(f"policy input is {size} bytes, above the {limit} byte cap")


def _refuse_whole_input_override(rel: str, text: str) -> None:
    for number, line in enumerate(text.splitlines(), start=1):
        if _WITH_WHOLE_INPUT.search(line.split("#", 1)[0]):
            raise PolicyEngineError(
                f"{rel}:{number}: 'with input as' crashes rego-cpp 1.5; "
                "override input keys instead (with input.command as ...)"
            )


def _mounted(parts: tuple[str, ...], value: Any) -> dict[str, Any]:
    if not parts:
        if not isinstance(value, dict):
            raise ValueError("a data.json at the bundle root must hold a JSON object")
        return value
    for part in reversed(parts):
        value = {part: value}
    return value


def _merge_data(into: dict[str, Any], new: dict[str, Any], rel: str, at: str = "data") -> None:
    for key, value in new.items():
        if key not in into:
            into[key] = value
        elif isinstance(into[key], dict) and isinstance(value, dict):
            _merge_data(into[key], value, rel, f"{at}.{key}")
        else:
            raise ValueError(f"{rel} sets {at}.{key}, already set by another data file")


def _object(value: Any, what: str, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(f"{what} is not an object")
    missing, extra = keys - value.keys(), value.keys() - keys
    if missing or extra:
        raise _malformed(f"{what} keys: missing {sorted(missing)}, unexpected {sorted(extra)}")
    return value


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _malformed(f"{what} is not a list of strings")
    return tuple(value)


def _malformed(detail: str) -> PolicyEngineError:
    return PolicyEngineError(f"malformed decision: {detail}")
