"""What a policy's obligations open a review with: the default policy's terms per tenant, safe
defaults, and a refusal (fail closed) for unusable values; and the shown digest's definition."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from governance.policy.service import PolicyService
from governance.review import ReviewError, ReviewTerms, Shown
from tests.test_policy_service import facts

POLICIES = Path(__file__).resolve().parents[1] / "policies"


@pytest.fixture(scope="module")
def service() -> PolicyService:
    return PolicyService(POLICIES)


def test_the_default_policy_gives_each_tenant_its_review_terms(service: PolicyService) -> None:
    acme = service.decide_request(facts("make the woman smile", labels={"consent": "obtained"}))
    assert acme.outcome == "review"
    assert ReviewTerms.from_obligations(acme.obligations) == ReviewTerms(
        reviewer_group="acme-brand-review",
        approvals_required=1,
        deadline_s=14_400,
        on_deadline="escalate",
        escalate_to="acme-legal",
        reviewer_identity="pseudonym",
        wait_s=0,
    )
    anyone = service.decide_request(facts("make the woman smile", tenant="nowhere"))
    assert ReviewTerms.from_obligations(anyone.obligations) == ReviewTerms()


def test_absent_obligations_take_the_safe_defaults() -> None:
    terms = ReviewTerms.from_obligations({})
    assert (terms.reviewer_group, terms.approvals_required, terms.on_deadline) == (
        "reviewers",
        1,
        "reject",
    )
    assert terms.escalate_to is None and terms.wait_s == 0


@pytest.mark.parametrize(
    "obligations",
    [
        {"approvals_required": 0},
        {"approvals_required": "2"},
        {"approvals_required": True},
        {"review_deadline_s": 0},
        {"review_deadline_s": 1.5},
        {"on_deadline": "approve"},
        {"on_deadline": "escalate"},
        {"on_deadline": "escalate", "escalate_to": "reviewers"},
        {"reviewer_identity": "email"},
        {"reviewer_group": "bad group name"},
        {"review_wait_s": -1},
    ],
)
def test_unusable_obligations_open_no_task(obligations: dict[str, Any]) -> None:
    with pytest.raises(ReviewError) as caught:
        ReviewTerms.from_obligations(obligations)
    assert caught.value.code == 500 and caught.value.reason == "BAD_REVIEW_OBLIGATIONS"


def test_the_shown_digest_is_sha256_of_the_rfc8785_json() -> None:
    shown = Shown(request="ab" * 32, prompt=None, inputs=("cd" * 32,), masks=("ef" * 32,))
    expected = hashlib.sha256(rfc8785.dumps(shown.to_json())).hexdigest()
    assert shown.digest == expected
    assert Shown.from_json(shown.to_json()) == shown
    assert Shown(request="ab" * 32, outputs=("01" * 32,)).digest != shown.digest


def test_shown_names_content_by_digest_or_commitment_only() -> None:
    Shown(request="salted-sha256:" + "A" * 43)
    with pytest.raises(ReviewError):
        Shown(request="make the sofa teal")
