"""The default policy through PolicyService, fail-closed behaviour and the decision record."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from governance.policy import EngineError
from governance.policy.bundle import PolicyBundle
from governance.policy.decision import ImageFacts, RequestFacts, ResponseFacts
from governance.policy.service import PolicyService

POLICIES = Path(__file__).resolve().parents[1] / "policies"
PHOTO = ImageFacts("parent", "image/png", 1000, 64, 64, "ab" * 32, False)


def facts(
    prompt: str,
    tenant: str = "acme",
    labels: dict[str, str] | None = None,
    roles: tuple[str, ...] = ("editor",),
    actor: str = "",
) -> RequestFacts:
    return RequestFacts(
        tenant=tenant,
        actor=actor or f"editor@{tenant}",
        roles=roles,
        model="gemini-2.5-flash-image",
        prompt=prompt,
        images=(PHOTO,),
        session_id=None,
        session_turn_count=0,
        lineage=(),
        labels=labels or {},
    )


@pytest.fixture(scope="module")
def service() -> PolicyService:
    return PolicyService(POLICIES)


def test_default_policy_loads(service: PolicyService) -> None:
    assert service.load_error is None
    assert len(service.bundle_revision) == 64


def test_plain_edit_is_allowed(service: PolicyService) -> None:
    decision = service.decide_request(facts("make the sofa teal"))
    assert decision.outcome == "allow", decision.reasons
    assert decision.engine == "regopy"


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        ("make him look like Donald Trump", "public figure"),
        ("put Taylor Swift's face on this", "public figure"),
        ("undress her", "intimate"),
        ("make her naked", "intimate"),
        ("remove the watermark in the corner", "watermark"),
        ("erase the Getty Images logo", "watermark"),
    ],
)
def test_forbidden_edits_are_denied(service: PolicyService, prompt: str, reason: str) -> None:
    decision = service.decide_request(facts(prompt))
    assert decision.outcome == "deny"
    assert any(reason in r for r in decision.reasons), decision.reasons
    assert "status_code" not in decision.obligations


def test_identifiable_people_go_to_review_with_consent(service: PolicyService) -> None:
    decision = service.decide_request(facts("make the woman smile", labels={"consent": "obtained"}))
    assert decision.outcome == "review"
    assert decision.obligations["reviewer_group"] == "acme-brand-review"
    assert decision.signals["identifiable_people"]["matched"] is True


def test_tenant_requiring_consent_denies_without_it(service: PolicyService) -> None:
    decision = service.decide_request(facts("make the woman smile"))
    assert decision.outcome == "deny"
    assert "consent" in decision.reasons[0]


def test_tenant_requiring_rights_denies_unlabelled_inputs(service: PolicyService) -> None:
    assert service.decide_request(facts("teal sofa", tenant="licensed-only")).outcome == "deny"
    labelled = facts("teal sofa", tenant="licensed-only", labels={"rights": "owned"})
    assert service.decide_request(labelled).outcome == "allow"


def test_minors_go_to_review(service: PolicyService) -> None:
    decision = service.decide_request(facts("a toddler on a swing", tenant="default"))
    assert decision.outcome == "review"


def test_production_assets_hold_the_output(service: PolicyService) -> None:
    decision = service.decide_request(facts("teal sofa", labels={"asset": "production"}))
    assert decision.outcome == "review_output"
    out = service.decide_response(
        facts("teal sofa", labels={"asset": "production"}),
        ResponseFacts("v1", ("STOP",), None, "", 1, ((64, 64),)),
    )
    assert out.outcome == "review_output"


def test_upstream_safety_block_is_allowed_through_with_a_reason(service: PolicyService) -> None:
    out = service.decide_response(
        facts("teal sofa"), ResponseFacts("v1", ("IMAGE_SAFETY",), None, "", 0, ())
    )
    assert out.outcome == "allow"
    assert "IMAGE_SAFETY" in out.reasons[0]


def test_roles_without_edit_rights_are_denied(service: PolicyService) -> None:
    assert service.decide_request(facts("teal sofa", roles=("auditor",))).outcome == "deny"


def test_rate_limit_denial_carries_429() -> None:
    service = PolicyService(POLICIES)
    outcomes = [service.decide_request(facts("sofa", tenant="ratelimited")) for _ in range(7)]
    assert [d.outcome for d in outcomes] == ["allow"] * 5 + ["deny"] * 2
    assert outcomes[-1].obligations["status_code"] == 429
    assert service.rate_limit_for("ratelimited") == 5


def test_record_has_no_floats_and_masks_the_prompt(service: PolicyService) -> None:
    decision = service.decide_request(facts("a secret-campaign teal sofa"))
    record = decision.record()
    raw = orjson.dumps(record)
    assert b"secret-campaign" not in raw
    assert record["input"]["request"]["prompt"] == "[masked]"
    assert decision.input_document["request"]["prompt"] == "a secret-campaign teal sofa"
    assert len(raw) < 64 * 1024
    for key in ("decision_id", "path", "bundle_revision", "engine", "elapsed_us", "outcome"):
        assert key in record

    def no_floats(value: Any) -> None:
        assert not isinstance(value, float)
        if isinstance(value, dict):
            for v in value.values():
                no_floats(v)
        elif isinstance(value, list):
            for v in value:
                no_floats(v)

    no_floats(record)


def test_record_of_a_huge_input_stays_small() -> None:
    service = PolicyService(POLICIES)
    big = RequestFacts(
        "acme", "e@acme", ("editor",), "m", "sofa", (PHOTO,) * 14, None, 0,
        tuple({"turn": i, "note": "x" * 200} for i in range(400)), {"k": "v" * 5000},
    )  # fmt: skip
    assert len(orjson.dumps(service.decide_request(big).record())) < 64 * 1024


# -- fail closed


def _write(dir_: Path, source: str) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "custody.rego").write_text(source)
    return dir_


@pytest.mark.parametrize(
    "source",
    [
        "package custody\n\ndecision := {{{ this is not rego",
        'package custody\n\ndecision := "allow"\n',
        'package custody\n\ndecision := {"outcome": "maybe", "reasons": []}\n',
        "package custody\n\nother := 1\n",
    ],
    ids=["syntax", "not-an-object", "bad-outcome", "undefined"],
)
def test_broken_policy_denies_every_turn(tmp_path: Path, source: str) -> None:
    service = PolicyService(_write(tmp_path / "p", source))
    decision = service.decide_request(facts("teal sofa"))
    assert decision.outcome == "deny"
    assert decision.engine == "error"
    assert "policy engine failed" in decision.reasons[0]
    assert (
        service.decide_response(facts("x"), ResponseFacts("v", (), None, "", 0, ())).outcome
        == "deny"
    )


def test_missing_policy_dir_denies_every_turn(tmp_path: Path) -> None:
    service = PolicyService(tmp_path / "nowhere")
    assert service.load_error
    decision = service.decide_request(facts("teal sofa"))
    assert decision.outcome == "deny" and decision.engine == "error"


class _Raising:
    name = "raising"

    def __init__(self, bundle: PolicyBundle) -> None:
        pass

    def evaluate(self, document: dict[str, Any], timeout_ms: int) -> Any:
        raise EngineError("the engine fell over")

    def close(self) -> None:
        pass


class _Slow(_Raising):
    def evaluate(self, document: dict[str, Any], timeout_ms: int) -> Any:
        time.sleep(0.05)
        return {"outcome": "allow", "reasons": [], "obligations": {}}


class _Crashing(_Raising):
    def evaluate(self, document: dict[str, Any], timeout_ms: int) -> Any:
        raise RuntimeError("segfault-ish")


@pytest.mark.parametrize("engine", [_Raising, _Slow, _Crashing])
def test_engine_failure_or_timeout_denies(engine: type[_Raising]) -> None:
    service = PolicyService(POLICIES, engine_factory=engine, timeout_ms=10)
    decision = service.decide_request(facts("teal sofa", tenant="ratelimited"))
    assert decision.outcome == "deny"
    assert decision.engine == "error"
    assert "policy engine failed" in decision.reasons[0]
    # a failed decision gives its rate-limit place back
    windows = service._state.windows_for("ratelimited")
    counters = service.limiter.peek("ratelimited", "editor@ratelimited", windows)
    assert windows and counters["per_minute"]["actor_turns"] == 0


def test_policy_dir_copy_decides_the_same(tmp_path: Path) -> None:
    shutil.copytree(POLICIES, tmp_path / "copy")
    a = PolicyService(POLICIES)
    b = PolicyService(tmp_path / "copy")
    assert a.bundle_revision == b.bundle_revision


@pytest.mark.parametrize("stage", ["request", "response"])
def test_a_detector_that_breaks_denies_without_quoting_the_input(
    stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's reason names what broke (its type), never the exception's text, which can
    quote the prompt; the gateway log keeps the traceback."""

    def broken(*_args: Any, **_kw: Any) -> Any:
        raise ValueError("could not read 'a private prompt about Ms Example'")

    service = PolicyService(POLICIES)
    monkeypatch.setattr("governance.policy.service.run_detectors", broken)
    request = facts("a private prompt about Ms Example")
    if stage == "request":
        decision = service.decide_request(request)
    else:
        answer = ResponseFacts("m", ("STOP",), None, "", 0, ())
        decision = service.decide_response(request, answer)
    assert decision.outcome == "deny"
    assert decision.reasons == (
        "the policy engine failed, so the turn is denied: preparing the policy input failed"
        " (ValueError)",
    )
    assert "Ms Example" not in str(decision.reasons)
