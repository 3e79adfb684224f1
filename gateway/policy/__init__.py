"""Policy engines: one interface; behind it the embedded (regopy) engine, the wasm engine
(``gateway.policy.wasm``) and the OPA server engine (``gateway.policy.opa``) (design section 6).

``PolicyEngine.evaluate(policy_input) -> Decision`` is the one seam the service calls. A
deny is a normal return (``Decision.allow`` false, ``rule_ids[0]`` naming the category);
any failure of the engine itself raises :class:`~gateway.errors.PolicyEngineError`, which
the service handles as a deny (fail closed, code 5003).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from gateway.models import Decision
from gateway.policy.bundle import PolicySource, load_policy_dir
from gateway.policy.decisions import ENTRYPOINT
from gateway.policy.embedded import EmbeddedEngine
from gateway.policy.rego_tests import RegoTestResult, run_rego_tests

__all__ = [
    "ENTRYPOINT",
    "EmbeddedEngine",
    "PolicyEngine",
    "PolicySource",
    "RegoTestResult",
    "load_policy_dir",
    "run_rego_tests",
]


@runtime_checkable
class PolicyEngine(Protocol):
    """Decides one request from its policy input.

    Attributes:
        name: engine label for decisions, logs and metrics (``embedded``, ``wasm`` or ``opa``).
        revision: revision of the loaded policy bundle.
    """

    name: str
    revision: str

    def evaluate(self, policy_input: Mapping[str, Any]) -> Decision:
        """The decision ``data.mcp.decision`` for ``policy_input`` (shape: design section 6).

        Raises:
            PolicyEngineError: the engine failed, the input is too large or not JSON,
                or the decision is undefined or malformed. Never raised for a deny.
        """
        ...

    def health(self) -> tuple[bool, str]:
        """``(True, "ok")`` while the engine can decide, else ``(False, reason)``; never
        raises."""
        ...

    def close(self) -> None:
        """Release the engine's processes or connections; evaluate fails afterwards."""
        ...
