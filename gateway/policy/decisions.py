"""What every policy engine shares: the input as it is sent, the decision document as it is
checked, and the decision cache of the in-process engines (embedded, wasm).

The cache: a decision is a function of the input and the bundle. When no module of the
bundle can read ``input.context`` (the per-call part: transport, client address, request
id, time; see :func:`gateway.policy.bundle.ignores_context`), equal inputs without their
context get equal decisions, and :class:`DecisionCache` hands a stored one back, with a
decision id of its own.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from gateway.errors import PolicyEngineError
from gateway.models import Decision, SandboxGrant
from gateway.policy.bundle import PolicySource, ignores_context

__all__ = ["ENTRYPOINT", "DecisionCache", "decision_from_document", "encode_input"]

#: The rule every engine evaluates: ``data.mcp.decision`` (as an entry point, ``mcp/decision``).
ENTRYPOINT = "mcp/decision"

_NETWORK_MODES = frozenset({"none", "loopback", "host", "restricted"})
_DENY_CATEGORIES = frozenset({"command", "network", "file", "resource", "tool"})
_DECISION_KEYS = frozenset({"allow", "reasons", "rule_ids", "sandbox"})
_SANDBOX_INT_KEYS = ("timeout_s", "memory_bytes", "pids", "cpu_seconds")
_SANDBOX_LIST_KEYS = ("allowed_hosts", "ro_paths", "rw_paths")
_SANDBOX_KEYS = frozenset({"network", *_SANDBOX_INT_KEYS, *_SANDBOX_LIST_KEYS})


def encode_input(policy_input: Mapping[str, Any], limit: int, *, sort_keys: bool = False) -> bytes:
    """The input as compact JSON bytes (what both engines send), refused above ``limit``
    bytes; ``sort_keys`` for a canonical form (a cache key).

    Raises:
        PolicyEngineError: not JSON-encodable (NaN, a non-string key...) or too large.
    """
    try:
        encoded = json.dumps(policy_input, separators=(",", ":"), allow_nan=False, sort_keys=sort_keys).encode()
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise PolicyEngineError(f"policy input is not JSON-encodable: {exc}") from exc
    if len(encoded) > limit:
        raise PolicyEngineError(f"policy input is {len(encoded)} bytes, above the {limit} byte cap")
    return encoded


def decision_from_document(
    document: Any, *, revision: str, eval_ms: float, engine: str = "embedded", decision_id: str | None = None
) -> Decision:
    """A :class:`Decision` from the JSON value of ``data.mcp.decision``, checked strictly.

    Every engine (embedded, wasm, OPA server) goes through it, so all accept exactly the
    same shape.
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
        raise _malformed("a deny must start rule_ids with a command/network/file/resource/tool id")
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


class DecisionCache:
    """An LRU of decisions keyed by the SHA-256 of the input without ``context``.

    Args:
        entries: decisions kept (0: none). Forced to 0 when ``source`` can read the context.
        source: the bundle the decisions come from (a reload makes a new engine, and so a
            new, empty cache).
        max_input_bytes: the engine's cap on an encoded input; the key's encoding is held
            to it too, so a hit is refused exactly as a miss would be.

    Thread-safe. Errors are never cached (only what :meth:`store` is given).
    """

    def __init__(self, entries: int, source: PolicySource, max_input_bytes: int) -> None:
        self.entries = entries if ignores_context(source) else 0
        self._max_input_bytes = max_input_bytes
        self._decisions: OrderedDict[bytes, Decision] = OrderedDict()
        self._lock = threading.Lock()
        # Imported here: the embedded engine's worker processes import this module too and
        # need no metrics (prometheus-client costs each of them ~4 MB).
        from gateway.observability.metrics import POLICY_CACHE

        self._hits, self._misses = POLICY_CACHE.labels("hit"), POLICY_CACHE.labels("miss")

    def decide(self, policy_input: Mapping[str, Any], evaluate: Callable[[bytes, float], Decision]) -> Decision:
        """The decision for ``policy_input``: a cached one, or ``evaluate(encoded input,
        start)`` (``start`` a ``time.perf_counter()`` value, for ``eval_ms``), kept for next
        time. An engine's ``evaluate`` is this around its own evaluation.

        Raises:
            PolicyEngineError: as :func:`encode_input`, or what ``evaluate`` raises.
        """
        start = time.perf_counter()
        key, cached = self.lookup(policy_input, start)
        if cached is not None:
            return cached
        decision = evaluate(encode_input(policy_input, self._max_input_bytes), start)
        self.store(key, decision)
        return decision

    def lookup(self, policy_input: Mapping[str, Any], start: float) -> tuple[bytes | None, Decision | None]:
        """``(key, decision)``: the key to :meth:`store` the decision under (None when the
        cache is off), and a cached decision for ``policy_input`` with a fresh decision id
        and ``eval_ms`` since ``start`` (a ``time.perf_counter()`` value), or None.

        Raises:
            PolicyEngineError: the input without its context is not JSON-encodable or is
                over the engine's cap.
        """
        if not self.entries:
            return None, None
        key = hashlib.sha256(encode_input({k: v for k, v in policy_input.items() if k != "context"},
                                          self._max_input_bytes, sort_keys=True)).digest()
        with self._lock:
            cached = self._decisions.get(key)
            if cached is not None:
                self._decisions.move_to_end(key)
        if cached is None:
            self._misses.inc()
            return key, None
        self._hits.inc()
        return key, replace(cached, decision_id=str(uuid.uuid4()), eval_ms=(time.perf_counter() - start) * 1000)

    def store(self, key: bytes | None, decision: Decision) -> None:
        """Keep ``decision`` under ``key`` (from :meth:`lookup`; None: nothing to keep)."""
        if key is None:
            return
        with self._lock:
            self._decisions[key] = decision
            if len(self._decisions) > self.entries:
                self._decisions.popitem(last=False)


# ---- helpers -------------------------------------------------------------------------


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
