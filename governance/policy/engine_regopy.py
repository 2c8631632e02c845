"""The in-process engine: rego-cpp through ``regopy``, with memory bounded whatever the callers.

Contract: ``RegopyEngine.evaluate`` may be called from any number of threads. The engine holds a
fixed number of interpreters (``interpreters``), each compiled once from the bundle into a plan for
the decision entry point (``Interpreter.build``); a decision only sets the input and runs that
plan (re-parsing per call costs about 3 ms). An ordinary input (up to ``inline_max_bytes``) is
evaluated on the caller's thread with an interpreter borrowed from that pool; a larger one is
handed to the engine's one large-input thread, with its own interpreter; one over
``max_input_bytes`` never reaches rego-cpp: it is refused whole, never evaluated in part. A caller
waits at most its timeout for an interpreter or for the large-input thread; rego-cpp cannot be
interrupted, so an evaluation already running on the caller's thread is judged after the fact.

Why large inputs go to a thread of their own: the regopy wheel links rego-cpp with snmalloc, which
keeps what a thread allocated and freed for that thread to reuse (``malloc_trim`` cannot reach
it). Each thread that evaluates keeps its largest evaluation's peak, about 6.5 times that input's
size, for good: the gateway's 32 executor threads each kept ~13 MB after one 2 MB input. Ordinary
inputs leave about half a megabyte per thread, and are not worth a hand-off between threads, which
costs about 0.2 ms on a busy 2-core machine. The measurements are in docs/performance.md ("Policy
engine memory").
"""

from __future__ import annotations

import ctypes
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
from regopy.rego_shared import rego, rego_get_error

from governance.policy import EngineError
from governance.policy.bundle import PolicyBundle
from governance.policy.decision import DECISION_PATH
from governance.policy.rego_input import DocumentInput, InputProjection

DEFAULT_INTERPRETERS = 2
# Evaluating keeps about 6.5 times the input's size per evaluating thread (docs/performance.md).
INLINE_MAX_BYTES = 64 * 1024
MAX_INPUT_BYTES = 4 * 1024 * 1024

_ERROR = re.compile(r"\(error \d+:([^|\s]*)\|(\d+)\|\d+\s+\(errormsg \d+:([^)]*)\)")

_Job = tuple[dict[str, Any], Future[Any]]

_query_entrypoint = rego.regoBundleQueryEntrypoint
_output_ok = rego.regoOutputOk
_output_size = rego.regoOutputJSONSize
_output_json = rego.regoOutputJSON
_free_output = rego.regoFreeOutput


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
        return _query(interp, compiled.plan, entrypoint)
    except RegoError as exc:
        raise EngineError(f"the policy failed to evaluate: {exc}") from exc
    except ValueError as exc:  # rego-cpp printed something that is not JSON
        raise EngineError(f"the policy engine returned malformed output: {exc}") from exc


def _query(interp: Interpreter, plan: Bundle, entrypoint: str) -> Any:
    """``interp.query_bundle_entrypoint(plan, entrypoint)``'s first expression, reading rego-cpp's
    output once (regopy's ``Output`` reads and copies it twice, then parses it with ``json``)."""
    output = _query_entrypoint(interp._impl, plan._impl, entrypoint.encode())
    if not output:
        raise RegoError(rego_get_error(interp._impl))
    try:
        size = _output_size(output)
        buffer = ctypes.create_string_buffer(size)
        if _output_json(output, buffer, size) != 0:
            raise RegoError(rego_get_error(interp._impl))
        text = buffer.value
        if not _output_ok(output):
            raise EngineError(
                f"the policy failed to evaluate: {text[:500].decode(errors='replace')}"
            )
    finally:
        _free_output(output)
    if text == b"undefined":
        return None
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:  # e.g. an integer beyond 64 bits: the slower parser reads it
        parsed = json.loads(text)
    first = parsed[0] if isinstance(parsed, list) else parsed
    expressions = first.get("expressions") if isinstance(first, dict) else None
    return expressions[0] if expressions else None


def _serve(
    bundle: PolicyBundle, entrypoint: str, jobs: queue.SimpleQueue[_Job | None], ready: Future[None]
) -> None:
    """The large-input thread: compile, then evaluate jobs until a ``None`` arrives.

    It holds no reference to its engine, so an engine nobody uses any more is collected and its
    finaliser stops the thread.
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


def _stop(jobs: queue.SimpleQueue[_Job | None]) -> None:
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
        *,
        entrypoint: str = DECISION_PATH,
        interpreters: int = DEFAULT_INTERPRETERS,
        inline_max_bytes: int = INLINE_MAX_BYTES,
        max_input_bytes: int = MAX_INPUT_BYTES,
    ) -> None:
        if interpreters < 1:
            raise ValueError(
                f"the policy engine needs at least one interpreter, not {interpreters}"
            )
        self.bundle = bundle
        self.entrypoint = entrypoint
        self.interpreters = interpreters
        self.inline_max_bytes = inline_max_bytes
        self.max_input_bytes = max_input_bytes
        # What the rules can read: only that is sized, handed to rego-cpp and evaluated.
        self.projection = InputProjection.of_modules(bundle.modules.values())
        # Last in, first out: the interpreter used last is the one warm in the cache.
        self._pool: queue.LifoQueue[_Compiled] = queue.LifoQueue()
        for _ in range(interpreters):  # compiled now: a broken policy fails at load, loudly
            self._pool.put(compile_plan(bundle, entrypoint))
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._large: threading.Thread | None = None  # started on the first large input
        self._lock = threading.Lock()  # no job is queued behind the stop marker
        self._finalizer = weakref.finalize(self, _stop, self._jobs)

    def evaluate(self, document: dict[str, Any], timeout_ms: int = 0) -> Any:
        """The entry point's value for ``document`` (None if undefined); EngineError on failure.

        Waits at most ``timeout_ms`` (without limit when it is 0) for an interpreter, or for the
        large-input thread's answer. Only the parts of ``document`` the rules can read reach
        rego-cpp (``InputProjection``): the decision is the same, the work smaller.
        """
        document = self.projection.project(document)
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
        if not self._finalizer.alive:
            raise EngineError("the policy engine was closed; the service is shutting down")
        wait = timeout_ms / 1000 if timeout_ms > 0 else None
        if size > self.inline_max_bytes:
            return self._on_large_input_thread(document, wait, timeout_ms)
        try:
            compiled = self._pool.get(timeout=wait)
        except queue.Empty:
            raise EngineError(
                f"no policy interpreter became free within the {timeout_ms} ms limit: all"
                f" {self.interpreters} were busy"
            ) from None
        try:
            return evaluate_plan(compiled, document, self.entrypoint)
        finally:
            self._pool.put(compiled)

    def _on_large_input_thread(
        self, document: dict[str, Any], wait: float | None, timeout_ms: int
    ) -> Any:
        answer: Future[Any] = Future()
        with self._lock:
            if not self._finalizer.alive:
                raise EngineError("the policy engine was closed; the service is shutting down")
            if self._large is None:
                ready: Future[None] = Future()
                self._large = threading.Thread(
                    target=_serve,
                    args=(self.bundle, self.entrypoint, self._jobs, ready),
                    name=f"custody-rego-{self.bundle.revision[:8]}-large",
                    daemon=True,
                )
                self._large.start()
                try:
                    ready.result()
                except BaseException:
                    self._large = None
                    raise
            self._jobs.put((document, answer))
        try:
            return answer.result(timeout=wait)
        except TimeoutError:
            if answer.cancel():
                raise EngineError(
                    f"the decision did not start within the {timeout_ms} ms limit: the policy"
                    " engine's large-input thread was busy with earlier large inputs"
                ) from None
            raise EngineError(
                f"the decision did not finish within the {timeout_ms} ms limit"
            ) from None

    def close(self) -> None:
        """Free the interpreters; the large-input thread stops after what was queued before."""
        with self._lock:
            self._finalizer()
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
    tests = [
        (rel, package_of(source) or "", name)
        for rel, source in sorted(bundle.tests.items())
        for name in dict.fromkeys(_TEST_RULE.findall(source))
    ]
    passed = _passing_in_one_plan(interp, [_entrypoint(p, n) for _, p, n in tests])
    results: list[RegoTestResult] = []
    for rel, package, name in tests:
        if _entrypoint(package, name) in passed:
            results.append(RegoTestResult(rel, package, name, "pass"))
            continue
        # Not true in the plan: the test's own query says how it failed.
        try:
            output = interp.query(f"data.{package}.{name}")
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


def _entrypoint(package: str, rule: str) -> str:
    """The plan entry point of a test rule: ``custody/decision_test/test_x``."""
    return f"{package}.{rule}".replace(".", "/")


def _passing_in_one_plan(interp: Interpreter, entrypoints: list[str]) -> set[str]:
    """The entry points that evaluate to true in one plan built for all of them.

    A query of its own compiles the whole policy for each test (~0.23 s apiece for the default
    policy's 32 tests, 7.2 s); the plan is compiled once (0.18 s, then 0.12 s for all 32). A test
    that is not true there, or a plan that cannot be built, is left to its own query, which
    reports the failure or the error."""
    try:
        plan = interp.build(None, entrypoints)
    except RegoError:
        return set()
    if not plan.ok():
        return set()
    passed = set()
    for entrypoint in entrypoints:
        try:
            if _query(interp, plan, entrypoint) is True:
                passed.add(entrypoint)
        except (RegoError, EngineError, ValueError):
            continue
    return passed
