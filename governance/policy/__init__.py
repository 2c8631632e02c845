"""Policy: every turn decided by Rego, in-process (regopy) or on an OPA server.

Public surface: ``service.PolicyService`` (what the pipeline calls), ``decision`` (facts and
decisions), ``bundle`` (policy files and their revision), ``replay`` (``custody policy diff``).
"""

from __future__ import annotations

from typing import Any, Protocol

from governance.policy.cxx_allocator import use_one_allocator

# Before any module of this package loads rego-cpp (regopy): see governance.policy.cxx_allocator.
use_one_allocator()


class EngineError(Exception):
    """The policy engine could not produce a decision; the message says why, for the record."""


class PolicyEngine(Protocol):
    """Evaluates ``data.custody.decision`` (or another path) of one loaded bundle."""

    name: str

    def evaluate(self, document: dict[str, Any], timeout_ms: int) -> Any:
        """The value of the decision path for this input; None when it is undefined."""
        ...

    def close(self) -> None:
        """Release what the engine holds (connections, interpreters)."""
        ...
