"""The in-process engine: rego-cpp through ``regopy``, compiled once, re-evaluated per decision.

``Interpreter.build`` compiles the modules and data into a plan for the decision entry point;
each decision only sets the input and runs that plan (about 0.1 ms, where re-parsing per call costs
about 3 ms). An interpreter is not shared between threads: a small pool holds compiled
interpreters, one per concurrently deciding thread, each built from the same sources.
"""

from __future__ import annotations

import json
import queue
import re
from dataclasses import dataclass
from typing import Any

from regopy import Bundle, Input, Interpreter, LogLevel, RegoError

from governance.policy import EngineError
from governance.policy.bundle import PolicyBundle
from governance.policy.decision import DECISION_PATH

_ERROR = re.compile(r"\(error \d+:([^|\s]*)\|(\d+)\|\d+\s+\(errormsg \d+:([^)]*)\)")


@dataclass
class _Compiled:
    interpreter: Interpreter
    plan: Bundle


def describe_rego_error(exc: BaseException, sources: dict[str, str]) -> str:
    """rego-cpp's error s-expression as ``file:line:col: message`` lines."""
    text = str(exc)
    found = []
    for name, offset, message in _ERROR.findall(text):
        source = sources.get(name, "")
        pos = min(int(offset), len(source))
        line = source.count("\n", 0, pos) + 1
        col = pos - (source.rfind("\n", 0, pos) + 1) + 1
        found.append(f"{name}:{line}:{col}: {message}" if name else message)
    return "; ".join(dict.fromkeys(found)) if found else text.strip()[:500]


def new_interpreter(bundle: PolicyBundle, *, with_tests: bool = False) -> Interpreter:
    """An interpreter holding every module (and the tests, if asked) and the bundle's data."""
    interp = Interpreter()
    interp.log_level = LogLevel.NONE  # errors come back as RegoError; nothing goes to stderr
    sources = {**bundle.modules, **(bundle.tests if with_tests else {})}
    try:
        for name, source in sources.items():
            interp.add_module(name, source)
        if bundle.data:
            interp.add_data_json(json.dumps(bundle.data))
    except RegoError as exc:
        raise EngineError(
            f"the policy does not parse: {describe_rego_error(exc, sources)}"
        ) from exc
    return interp


class RegopyEngine:
    """Evaluates one entry point of one bundle in-process; safe to call from many threads."""

    name = "regopy"

    def __init__(self, bundle: PolicyBundle, entrypoint: str = DECISION_PATH) -> None:
        self.bundle = bundle
        self.entrypoint = entrypoint
        self._pool: queue.SimpleQueue[_Compiled] = queue.SimpleQueue()
        self._pool.put(self._compile())  # compile now: a broken policy fails at load, loudly

    def _compile(self) -> _Compiled:
        interp = new_interpreter(self.bundle)
        try:
            plan = interp.build(None, [self.entrypoint])
        except RegoError as exc:
            detail = describe_rego_error(exc, self.bundle.modules)
            raise EngineError(f"the policy does not compile: {detail}") from exc
        if not plan.ok():
            raise EngineError(f"the policy does not compile (entry point {self.entrypoint})")
        return _Compiled(interp, plan)

    def evaluate(self, document: dict[str, Any], timeout_ms: int = 0) -> Any:
        """The entry point's value for ``document`` (None if undefined); EngineError on failure.

        rego-cpp cannot be interrupted: the caller measures the elapsed time and treats a slow
        decision as a timeout after the fact.
        """
        try:
            compiled = self._pool.get_nowait()
        except queue.Empty:
            compiled = self._compile()
        try:
            interp = compiled.interpreter
            interp.set_input(Input(document))  # ~280 µs for a turn, set_input_term ~500 µs
            output = interp.query_bundle_entrypoint(compiled.plan, self.entrypoint)
            if not output.ok():
                raise EngineError(f"the policy failed to evaluate: {str(output)[:500]}")
            if not output.results or not output.results[0].expressions:
                return None
            return output.results[0].expressions[0]
        except RegoError as exc:
            raise EngineError(f"the policy failed to evaluate: {exc}") from exc
        except ValueError as exc:  # rego-cpp printed something that is not JSON
            raise EngineError(f"the policy engine returned malformed output: {exc}") from exc
        finally:
            self._pool.put(compiled)

    def close(self) -> None:
        while True:
            try:
                self._pool.get_nowait()
            except queue.Empty:
                return


_TEST_RULE = re.compile(r"^(test_\w+)\s*(?:if\b|:?=|\{)", re.MULTILINE)


@dataclass(frozen=True)
class RegoTestResult:
    """One ``test_*`` rule of a ``*_test.rego`` file: passed, failed (false/undefined) or error."""

    file: str
    package: str
    name: str
    status: str  # "pass" | "fail" | "error"
    detail: str = ""


def run_rego_tests(bundle: PolicyBundle) -> list[RegoTestResult]:
    """Evaluate every ``test_*`` rule of the bundle's test files, as ``opa test`` does.

    A test passes when its rule is true. rego-cpp 1.5 crashes on ``with input as {...}`` when the
    rules under test call built-ins: tests override parts of the input
    (``with input.request as r``) instead — see docs/policy-guide.md.
    """
    from governance.policy.bundle import package_of

    interp = new_interpreter(bundle, with_tests=True)
    results: list[RegoTestResult] = []
    for rel, source in sorted(bundle.tests.items()):
        package = package_of(source) or ""
        for name in dict.fromkeys(_TEST_RULE.findall(source)):
            query = f"data.{package}.{name}"
            try:
                output = interp.query(query)
            except RegoError as exc:
                detail = describe_rego_error(exc, {**bundle.modules, **bundle.tests})
                results.append(RegoTestResult(rel, package, name, "error", detail))
                continue
            if not output.ok():
                results.append(RegoTestResult(rel, package, name, "error", str(output)[:500]))
                continue
            exprs = output.results[0].expressions if output.results else []
            value = exprs[0] if exprs else None
            if value is True:
                results.append(RegoTestResult(rel, package, name, "pass"))
            else:
                got = "undefined" if value is None else json.dumps(value)[:200]
                results.append(RegoTestResult(rel, package, name, "fail", f"evaluated to {got}"))
    return results
