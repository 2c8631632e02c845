"""The in-process engine: rego-cpp through ``regopy``, on a few threads of its own.

Contract: ``RegopyEngine.evaluate`` may be called from any number of threads, and every call into
rego-cpp (building the input, evaluating, freeing) runs on one of ``threads`` engine threads. Each
engine thread owns one interpreter, compiled once from the bundle into a plan for the decision
entry point (``Interpreter.build``); a decision only sets the input and runs that plan (re-parsing
per call costs about 3 ms). A caller waits at most its timeout and then has its answer, an
EngineError; rego-cpp cannot be interrupted, so the engine thread finishes that evaluation (or
skips it if it had not started) before taking the next. An input larger than ``max_input_bytes``
never reaches rego-cpp: it is refused whole, never evaluated in part.

Why threads of its own rather than interpreters borrowed by the calling thread: the regopy wheel
links rego-cpp with snmalloc, which keeps what a thread allocated and freed for that thread to
reuse (``malloc_trim`` cannot reach it), so each of the gateway's 32 executor threads that once
evaluated a large input kept that evaluation's peak resident for good, on top of one interpreter
per thread. Confined to a few threads, the engine's memory is a few peaks, whatever the number of
callers. The measurements are in docs/performance.md ("Policy engine memory").
"""

from __future__ import annotations

import json
import queue
import re
import threading
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import orjson
from regopy import Bundle, Interpreter, LogLevel, RegoError

from governance.policy import EngineError
from governance.policy.bundle import PolicyBundle
from governance.policy.decision import DECISION_PATH
from governance.policy.rego_input import DocumentInput

DEFAULT_THREADS = 2
# Evaluating costs about 6.5 times the input's size at its peak, kept per engine thread.
MAX_INPUT_BYTES = 4 * 1024 * 1024

_ERROR = re.compile(r"\(error \d+:([^|\s]*)\|(\d+)\|\d+\s+\(errormsg \d+:([^)]*)\)")

_Job = tuple[dict[str, Any], Future[Any]]


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


def compile_plan(bundle: PolicyBundle, entrypoint: str) -> _Compiled:
    """An interpreter and its plan for ``entrypoint``; EngineError when the policy is broken."""
    interp = new_interpreter(bundle)
    try:
        plan = interp.build(None, [entrypoint])
    except RegoError as exc:
        detail = describe_rego_error(exc, bundle.modules)
        raise EngineError(f"the policy does not compile: {detail}") from exc
    if not plan.ok():
        raise EngineError(f"the policy does not compile (entry point {entrypoint})")
    return _Compiled(interp, plan)


def evaluate_plan(compiled: _Compiled, document: dict[str, Any], entrypoint: str) -> Any:
    """The entry point's value for ``document`` (None if undefined); EngineError on failure."""
    try:
        interp = compiled.interpreter
        interp.set_input(DocumentInput(document))  # set_input_term (JSON) costs 4 times more
        output = interp.query_bundle_entrypoint(compiled.plan, entrypoint)
        if not output.ok():
            raise EngineError(f"the policy failed to evaluate: {str(output)[:500]}")
        if not output.results or not output.results[0].expressions:
            return None
        return output.results[0].expressions[0]
    except RegoError as exc:
        raise EngineError(f"the policy failed to evaluate: {exc}") from exc
    except ValueError as exc:  # rego-cpp printed something that is not JSON
        raise EngineError(f"the policy engine returned malformed output: {exc}") from exc


def _serve(
    bundle: PolicyBundle, entrypoint: str, jobs: queue.SimpleQueue[_Job | None], ready: Future[None]
) -> None:
    """One engine thread: compile, then evaluate jobs until a ``None`` arrives.

    It holds no reference to its engine, so an engine nobody uses any more is collected and its
    finaliser stops the threads.
    """
    try:
        compiled = compile_plan(bundle, entrypoint)
    except BaseException as exc:
        ready.set_exception(exc)
        return
    ready.set_result(None)
    while (job := jobs.get()) is not None:
        document, answer = job
        del job
        if not answer.set_running_or_notify_cancel():
            continue  # its caller stopped waiting before it started
        try:
            answer.set_result(evaluate_plan(compiled, document, entrypoint))
        except BaseException as exc:  # the caller decides what it means; this thread carries on
            answer.set_exception(exc)
        del document, answer


def _stop(jobs: queue.SimpleQueue[_Job | None], threads: int) -> None:
    for _ in range(threads):
        jobs.put(None)


def _input_size(document: dict[str, Any]) -> int:
    return len(orjson.dumps(document, default=_sets_as_lists))


def _sets_as_lists(value: Any) -> list[Any]:
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


class RegopyEngine:
    """Evaluates one entry point of one bundle in-process; safe to call from many threads."""

    name = "regopy"

    def __init__(
        self,
        bundle: PolicyBundle,
        entrypoint: str = DECISION_PATH,
        *,
        threads: int = DEFAULT_THREADS,
        max_input_bytes: int = MAX_INPUT_BYTES,
    ) -> None:
        if threads < 1:
            raise ValueError(f"the policy engine needs at least one thread, not {threads}")
        self.bundle = bundle
        self.entrypoint = entrypoint
        self.threads = threads
        self.max_input_bytes = max_input_bytes
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # no job is queued behind the stop markers
        self._finalizer = weakref.finalize(self, _stop, self._jobs, threads)
        started: list[Future[None]] = []
        for i in range(threads):
            ready: Future[None] = Future()
            threading.Thread(
                target=_serve,
                args=(bundle, entrypoint, self._jobs, ready),
                name=f"custody-rego-{bundle.revision[:8]}-{i}",
                daemon=True,
            ).start()
            started.append(ready)
        try:
            for ready in started:  # compiled now: a broken policy fails at load, loudly
                ready.result()
        except BaseException:
            self.close()
            raise

    def evaluate(self, document: dict[str, Any], timeout_ms: int = 0) -> Any:
        """The entry point's value for ``document`` (None if undefined); EngineError on failure.

        Waits at most ``timeout_ms`` (without limit when it is 0).
        """
        try:
            size = _input_size(document)
        except TypeError as exc:
            raise EngineError(f"the policy input is not JSON: {exc}") from exc
        if size > self.max_input_bytes:
            raise EngineError(
                f"the policy input is {size:,} bytes, over the engine's limit of"
                f" {self.max_input_bytes:,}; it is refused rather than evaluated in part."
                " Send less text in one turn (the prompt and labels reach the policy whole)"
            )
        answer: Future[Any] = Future()
        with self._lock:
            if not self._finalizer.alive:
                raise EngineError("the policy engine was closed; the service is shutting down")
            self._jobs.put((document, answer))
        try:
            return answer.result(timeout=timeout_ms / 1000 if timeout_ms > 0 else None)
        except TimeoutError:
            if answer.cancel():
                raise EngineError(
                    f"the decision did not start within the {timeout_ms} ms limit: every policy"
                    f" engine thread ({self.threads}) was busy"
                ) from None
            raise EngineError(
                f"the decision did not finish within the {timeout_ms} ms limit"
            ) from None

    def close(self) -> None:
        """Stop the engine threads once they finish what was queued before; idempotent."""
        with self._lock:
            self._finalizer()


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
