"""The policy decision point the pipeline calls: facts in, a recorded ``Decision`` out.

It builds the contract input (actor, request, session, counters, signals, stage, response),
evaluates ``data.custody.decision`` on the loaded bundle (regopy in-process, or an OPA server when
``CUSTODY_OPA_URL`` is set) and FAILS CLOSED: a missing or broken policy, an engine error, a
timeout or a malformed result is a ``deny`` whose reason says the policy engine failed — never an
exception to the caller. Hot reload swaps the whole loaded state at once, so a decision always
runs on one revision and records that revision; the engine it replaced is closed when the last
decision that started on it has finished, never under one.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from governance.policy import EngineError, PolicyEngine
from governance.policy.bundle import (
    BundleError,
    PolicyBundle,
    load_bundle,
    revision_of_dir,
    scan_signature,
)
from governance.policy.classifier import Detector, PromptClassifier, run_detectors
from governance.policy.decision import (
    DECISION_PATH,
    OUTCOMES,
    Decision,
    RequestFacts,
    ResponseFacts,
    mask_input,
)
from governance.policy.ratelimit import Limiter, RateLimiter, Window, windows_from_limits

if TYPE_CHECKING:
    from governance.settings import Settings

log = logging.getLogger("custody.policy")

# Masked in every record whatever the policy says; the policy's custody/log/data.json adds more.
ALWAYS_MASKED = ("/request/prompt", "/response/text")
ERROR_ENGINE = "error"
SAFETY_FINISH_REASONS = frozenset(
    {"IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "PROHIBITED_CONTENT", "SAFETY", "NO_IMAGE"}
)
EngineFactory = Callable[[PolicyBundle], PolicyEngine]


def regopy_factory(bundle: PolicyBundle, interpreters: int | None = None) -> PolicyEngine:
    """The in-process engine with ``interpreters`` interpreters (its default when None)."""
    from governance.policy.engine_regopy import DEFAULT_INTERPRETERS, RegopyEngine

    return RegopyEngine(bundle, interpreters=interpreters or DEFAULT_INTERPRETERS)


@dataclass(frozen=True)
class LoadedPolicy:
    """Everything one revision decides with; replaced as a whole on reload."""

    revision: str
    bundle: PolicyBundle | None
    engine: PolicyEngine | None
    detectors: tuple[Detector, ...]
    mask: tuple[str, ...]
    error: str | None  # why every decision denies, when the policy could not be loaded
    files: dict[str, str]  # relative path → sha256, for the reload record

    def tenant_settings(self, tenant: str) -> dict[str, Any]:
        tenants = self.bundle.data_at("custody", "tenants", default={}) if self.bundle else {}
        if not isinstance(tenants, dict):
            return {}
        chosen = tenants.get(tenant, tenants.get("default", {}))
        return chosen if isinstance(chosen, dict) else {}

    def windows_for(self, tenant: str) -> tuple[Window, ...]:
        return windows_from_limits(self.tenant_settings(tenant).get("rate_limits"))


def load_policy(root: Path, engine_factory: EngineFactory) -> LoadedPolicy:
    """Load, compile and check a policy directory; a failure yields a deny-everything state."""
    try:
        bundle = load_bundle(root)
    except (BundleError, OSError) as exc:
        return LoadedPolicy(revision_of_dir(root), None, None, (), ALWAYS_MASKED, str(exc), {})
    try:
        detectors: tuple[Detector, ...] = (PromptClassifier.from_bundle(bundle),)
        engine = engine_factory(bundle)
    except (EngineError, ValueError, OSError) as exc:
        return LoadedPolicy(
            bundle.revision, bundle, None, (), ALWAYS_MASKED, str(exc), bundle.file_hashes
        )
    extra = bundle.data_at("custody", "log", "mask", default=[])
    mask = tuple(dict.fromkeys([*ALWAYS_MASKED, *(p for p in extra if isinstance(p, str))]))
    return LoadedPolicy(bundle.revision, bundle, engine, detectors, mask, None, bundle.file_hashes)


class PolicyService:
    """Decides every turn on the policy in force; thread-safe; never raises to its caller."""

    def __init__(
        self,
        policy_dir: Path,
        *,
        engine_factory: EngineFactory = regopy_factory,
        timeout_ms: int = 2_000,
        limiter: Limiter | None = None,
    ) -> None:
        self.policy_dir = Path(policy_dir)
        self.timeout_ms = timeout_ms
        self.limiter: Limiter = limiter or RateLimiter()
        self.on_reload: Callable[[dict[str, Any]], None] | None = None
        self._engine_factory = engine_factory
        self._reload_lock = threading.Lock()
        self._signature: tuple[tuple[str, int, int], ...] | None = scan_signature(self.policy_dir)
        self._state = load_policy(self.policy_dir, engine_factory)
        self._reservations: dict[str, str] = {}  # decision id → rate-limit reservation id
        self._reservations_lock = threading.Lock()
        self._in_use: dict[int, int] = {}  # id(state) → decisions running on it
        self._retired: dict[int, LoadedPolicy] = {}  # replaced, closed when no longer in use
        self._use_lock = threading.Lock()
        if self._state.error:
            log.error("policy at %s denies every turn: %s", self.policy_dir, self._state.error)

    @classmethod
    def from_settings(cls, settings: Settings, limiter: Limiter | None = None) -> PolicyService:
        """The service the settings describe: OPA when ``opa_url`` is set, else in-process;
        ``limiter`` counts turns (the database's, in ``custody serve``)."""
        url, timeout = settings.opa_url, settings.policy_timeout_ms
        interpreters = settings.policy_interpreters

        def factory(bundle: PolicyBundle) -> PolicyEngine:
            if url:
                from governance.policy.engine_opa import OpaEngine

                return OpaEngine(url, bundle, timeout_ms=timeout)
            return regopy_factory(bundle, interpreters)

        return cls(
            settings.policy_dir,
            engine_factory=factory,
            timeout_ms=settings.policy_timeout_ms,
            limiter=limiter,
        )

    # -- what the pipeline calls

    @property
    def bundle_revision(self) -> str:
        """The revision of the policy deciding now (SHA-256 over every policy and data file)."""
        return self._state.revision

    @property
    def load_error(self) -> str | None:
        """Why every decision denies, or None when the policy loaded."""
        return self._state.error

    def decide_request(self, facts: RequestFacts) -> Decision:
        """Decide a turn before the upstream call; reserves its rate-limit place unless denied."""
        with self._using() as state:
            return self._decide_request(state, facts)

    def _decide_request(self, state: LoadedPolicy, facts: RequestFacts) -> Decision:
        reservation_id: str | None = None
        try:
            began = time.perf_counter_ns()  # the detectors spend the policy's time budget too
            signals = run_detectors(state.detectors, facts)
            detectors_ns = time.perf_counter_ns() - began
            counters: dict[str, Any] = {}
            if state.error is None:
                reservation = self.limiter.reserve(
                    facts.tenant, facts.actor, len(facts.images), state.windows_for(facts.tenant)
                )
                reservation_id = reservation.reservation_id if reservation.keys else None
                counters = reservation.counters
            document = request_input(facts, counters, signals)
        except Exception as exc:  # a detector or the limiter broke: still an answer, a denial
            if reservation_id:
                self.limiter.release(reservation_id)
            return self._preparing_failed(state, exc)
        decision = self._decide(state, document, signals, detectors_ns)
        if reservation_id:
            if decision.outcome == "deny":
                self.limiter.release(reservation_id)
            else:
                with self._reservations_lock:
                    self._reservations[decision.decision_id] = reservation_id
                    while len(self._reservations) > 100_000:
                        self._reservations.pop(next(iter(self._reservations)))
        return decision

    def decide_response(self, facts: RequestFacts, response: ResponseFacts) -> Decision:
        """Decide on the upstream's answer, before anything is signed and released."""
        with self._using() as state:
            return self._decide_response(state, facts, response)

    def _decide_response(
        self, state: LoadedPolicy, facts: RequestFacts, response: ResponseFacts
    ) -> Decision:
        try:
            began = time.perf_counter_ns()
            signals = run_detectors(state.detectors, facts)
            detectors_ns = time.perf_counter_ns() - began
            counters = (
                self.limiter.peek(facts.tenant, facts.actor, state.windows_for(facts.tenant))
                if state.error is None
                else {}
            )
            document = request_input(facts, counters, signals, stage="response")
            document["response"] = response_input(response)
        except Exception as exc:
            return self._preparing_failed(state, exc)
        return self._decide(state, document, signals, detectors_ns)

    def release_reservation(self, decision_id: str) -> bool:
        """Give back the rate-limit place of a turn denied after its request decision."""
        with self._reservations_lock:
            reservation_id = self._reservations.pop(decision_id, None)
        return self.limiter.release(reservation_id) if reservation_id else False

    def settle_reservation(self, decision_id: str) -> None:
        """The turn is over and keeps its rate-limit place (released, or held for review): its
        reservation is forgotten, here and in the limiter, so neither holds one entry per
        turn (bounded only at 100,000). After ``release_reservation`` this is a no-op."""
        with self._reservations_lock:
            reservation_id = self._reservations.pop(decision_id, None)
        if reservation_id:
            self.limiter.forget(reservation_id)

    def tenant_settings(self, tenant: str) -> dict[str, Any]:
        """The policy data's settings for ``tenant`` (``default`` for unknown tenants)."""
        return self._state.tenant_settings(tenant)

    def rate_limit_for(self, tenant: str) -> int | None:
        """The smallest per-window turn limit that applies to one actor of ``tenant``."""
        limits = self._state.tenant_settings(tenant).get("rate_limits")
        found = [
            spec[metric]
            for spec in (limits.values() if isinstance(limits, dict) else [])
            if isinstance(spec, dict)
            for metric in ("actor_turns", "tenant_turns")
            if isinstance(spec.get(metric), int)
        ]
        return min(found) if found else None

    def evaluate_document(
        self, document: dict[str, Any], *, fresh_signals: bool = True
    ) -> Decision:
        """Decide a recorded or hand-written input as-is (no reservation): eval and replay.

        With ``fresh_signals`` the prompt is re-classified with this policy's term lists.
        """
        with self._using() as state:
            return self._evaluate_document(state, document, fresh_signals)

    def _evaluate_document(
        self, state: LoadedPolicy, document: dict[str, Any], fresh_signals: bool
    ) -> Decision:
        doc = dict(document)
        signals = dict(doc.get("signals") or {})
        if fresh_signals and state.detectors:
            prompt = str((doc.get("request") or {}).get("prompt") or "")
            facts = _prompt_only_facts(prompt)
            signals = run_detectors(state.detectors, facts)
            doc["signals"] = signals
        return self._decide(state, doc, signals)

    # -- hot reload

    def reload_if_changed(self, *, rescan: bool = False) -> dict[str, Any] | None:
        """Reload when a policy file changed; the ``policy.reloaded`` event body, or None.
        ``rescan`` re-reads the files even when their signature (sizes, times) looks the same."""
        with self._reload_lock:
            if rescan:
                self._signature = None
            signature = scan_signature(self.policy_dir)
            if signature == self._signature:
                return None
            self._signature = signature
            old = self._state
            if revision_of_dir(self.policy_dir) == old.revision and old.error is None:
                return None  # touched, not changed
            new = load_policy(self.policy_dir, self._engine_factory)
            if new.revision == old.revision and new.error == old.error:
                return None
            self._retire(old, new)
        changed = sorted(
            rel
            for rel in set(old.files) | set(new.files)
            if old.files.get(rel) != new.files.get(rel)
        )
        body: dict[str, Any] = {
            "old_revision": old.revision,
            "new_revision": new.revision,
            "files": changed,
            "engine": new.engine.name if new.engine else ERROR_ENGINE,
        }
        if new.error:
            body["error"] = new.error
            log.error("reloaded policy denies every turn: %s", new.error)
        if self.on_reload is not None:
            try:
                self.on_reload(body)
            except Exception:
                log.exception("policy on_reload callback failed")
        return body

    def close(self) -> None:
        with self._use_lock:
            retired, self._retired = list(self._retired.values()), {}
        for state in (*retired, self._state):
            _close(state.engine)

    # -- internals

    @contextmanager
    def _using(self) -> Iterator[LoadedPolicy]:
        """The policy in force, kept open until the decision made on it is done."""
        with self._use_lock:
            state = self._state
            self._in_use[id(state)] = self._in_use.get(id(state), 0) + 1
        try:
            yield state
        finally:
            with self._use_lock:
                left = self._in_use.pop(id(state)) - 1
                if left:
                    self._in_use[id(state)] = left
                done = None if left else self._retired.pop(id(state), None)
            if done is not None:
                _close(done.engine)

    def _retire(self, old: LoadedPolicy, new: LoadedPolicy) -> None:
        """Put ``new`` in force; close ``old`` now, or when its last decision is done."""
        with self._use_lock:
            self._state = new
            busy = id(old) in self._in_use
            if busy:
                self._retired[id(old)] = old
        if not busy:
            _close(old.engine)

    def _decide(
        self,
        state: LoadedPolicy,
        document: dict[str, Any],
        signals: dict[str, Any],
        detectors_ns: int = 0,
    ) -> Decision:
        """Evaluate ``document``; the detectors' time (``detectors_ns``, the classifier's, not
        the rate limiter's) counts toward ``timeout_ms`` with the engine's: the engine gets what
        they left, and none when they used it all (a deny saying so, the engine not run)."""
        if state.error is not None or state.engine is None:
            return self._failed(
                state, document, signals, f"the policy could not be loaded: {state.error}", 0
            )
        started = time.perf_counter_ns()
        detectors_us = detectors_ns // 1000
        left_ms = self.timeout_ms - detectors_us // 1000
        if left_ms <= 0:
            return self._failed(
                state,
                document,
                signals,
                f"the detectors took {detectors_us // 1000} ms, the whole {self.timeout_ms} ms"
                " limit of the decision, so the policy was not evaluated",
                0,
            )
        try:
            result = state.engine.evaluate(document, left_ms)
        except EngineError as exc:
            return self._failed(state, document, signals, str(exc), _us_since(started))
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            return self._failed(state, document, signals, detail, _us_since(started))
        elapsed_us = _us_since(started)
        if detectors_us + elapsed_us > self.timeout_ms * 1000:
            of_it = f" ({detectors_us // 1000} ms of it in the detectors)" if detectors_us else ""
            return self._failed(
                state,
                document,
                signals,
                f"the decision took {(detectors_us + elapsed_us) // 1000} ms{of_it}, over the"
                f" {self.timeout_ms} ms limit",
                elapsed_us,
            )
        problem = malformed(result)
        if problem:
            return self._failed(state, document, signals, problem, elapsed_us)
        return Decision(
            decision_id=uuid.uuid4().hex,
            path=DECISION_PATH,
            outcome=result["outcome"],
            reasons=tuple(result.get("reasons") or ()),
            obligations=dict(result.get("obligations") or {}),
            bundle_revision=state.revision,
            signals=signals,
            input_masked=_masked(document, state.mask),
            elapsed_us=elapsed_us,
            engine=state.engine.name,
            input_document=document,
        )

    def _preparing_failed(self, state: LoadedPolicy, exc: Exception) -> Decision:
        """A deny whose reason names what broke, never its repr (which can quote the input);
        the gateway log has the traceback."""
        log.error("preparing the policy input failed", exc_info=exc)
        detail = f"preparing the policy input failed ({type(exc).__name__})"
        return self._failed(state, {}, {}, detail, 0)

    def _failed(
        self,
        state: LoadedPolicy,
        document: dict[str, Any],
        signals: dict[str, Any],
        detail: str,
        elapsed_us: int,
    ) -> Decision:
        log.error("policy engine failed, denying the turn: %s", detail)
        return Decision(
            decision_id=uuid.uuid4().hex,
            path=DECISION_PATH,
            outcome="deny",
            reasons=(f"the policy engine failed, so the turn is denied: {detail}"[:2000],),
            obligations={"engine_error": True},
            bundle_revision=state.revision,
            signals=signals,
            input_masked=_masked(document, state.mask),
            elapsed_us=elapsed_us,
            engine=ERROR_ENGINE,
            input_document=document,
        )


def malformed(result: Any) -> str | None:
    """Why ``result`` is not a decision (None when it is one)."""
    if result is None:
        path = DECISION_PATH.replace("/", ".")
        return f"the policy returned no decision (data.{path} is undefined)"
    if not isinstance(result, dict):
        return f"the policy returned a malformed decision: {type(result).__name__}, not an object"
    if result.get("outcome") not in OUTCOMES:
        return f"the policy returned a malformed decision: outcome {result.get('outcome')!r}"
    reasons = result.get("reasons", [])
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        return "the policy returned a malformed decision: reasons must be a list of strings"
    if not isinstance(result.get("obligations", {}), dict):
        return "the policy returned a malformed decision: obligations must be an object"
    return None


def _image(img: Any) -> dict[str, Any]:
    return {
        "role": img.role,
        "mime_type": img.mime_type,
        "size": int(img.size),
        "width": None if img.width is None else int(img.width),  # unknown: null, not a failure
        "height": None if img.height is None else int(img.height),
        "sha256": img.sha256,
        "has_content_credentials": bool(img.has_content_credentials),
    }


def _signal(s: Any) -> dict[str, Any]:
    if not isinstance(s, dict):
        return {"matched": bool(s), "terms": [], "fields": []}
    return {
        "matched": bool(s.get("matched")),
        "terms": list(s.get("terms") or []),
        "fields": list(s.get("fields") or []),
    }


def request_input(
    facts: RequestFacts,
    counters: dict[str, Any],
    signals: dict[str, Any],
    stage: str = "request",
) -> dict[str, Any]:
    """The contract input document for a request (see docs/policy-guide.md).

    Everything the upstream acts on is here as facts; text only as ``prompt`` (the new turn,
    masked in records) and, for all of it, as the classifier's signals.
    """
    images = [_image(i) for i in facts.images]
    return {
        "actor": {"id": facts.actor, "roles": sorted(facts.roles), "tenant": facts.tenant},
        "request": {
            "model": facts.model,
            "prompt": facts.prompt,
            "images": images,
            "masks": [i for i in images if i["role"] == "mask"],
            "references": [i for i in images if i["role"] == "reference"],
            "labels": dict(facts.labels),
            "documents": [
                {
                    "mime_type": d.mime_type,
                    "declared_mime_type": d.declared_mime_type,
                    "size": int(d.size),
                    "sha256": d.sha256,
                    "history": bool(d.history),
                }
                for d in facts.documents
            ],
            "file_data": [
                {"uri": f.uri, "scheme": f.scheme, "host": f.host, "mime_type": f.mime_type}
                for f in facts.files
            ],
            **facts.shape,
        },
        "session": {
            "id": facts.session_id,
            "turn_count": int(facts.session_turn_count),
            "lineage": list(facts.lineage),
        },
        "counters": counters,
        # matched, terms and fields only: the rest is in the record; a smaller input is faster
        "signals": {name: _signal(s) for name, s in signals.items()},
        "stage": stage,
    }


def response_input(response: ResponseFacts) -> dict[str, Any]:
    """The ``input.response`` part of the contract."""
    blocked = response.block_reason is not None or any(
        r in SAFETY_FINISH_REASONS for r in response.finish_reasons
    )
    return {
        "model_version": response.model_version,
        "finish_reasons": list(response.finish_reasons),
        "block_reason": response.block_reason,
        "safety": "blocked" if blocked else "ok",
        "text": response.text,
        "output_count": int(response.output_count),
        "output_sizes": [{"width": int(w), "height": int(h)} for w, h in response.output_sizes],
    }


def _prompt_only_facts(prompt: str) -> RequestFacts:
    return RequestFacts("", "", (), "", prompt, (), None, 0, (), {})


def _masked(document: dict[str, Any], mask: tuple[str, ...]) -> dict[str, Any]:
    """The input as recorded; a document that is not JSON (a lone surrogate) is recorded as such."""
    try:
        return mask_input(document, mask)
    except (TypeError, ValueError) as exc:
        return {"unrecordable": f"the policy input is not JSON: {exc}"}


def _us_since(started_ns: int) -> int:
    return (time.perf_counter_ns() - started_ns) // 1000


def _close(engine: PolicyEngine | None) -> None:
    if engine is not None:
        try:
            engine.close()
        except Exception:
            log.exception("closing the old policy engine failed")
