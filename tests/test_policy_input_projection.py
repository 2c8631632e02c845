"""Only what the rules can read reaches rego-cpp (``InputProjection``), and decisions stay the same.

The projection is read from the modules' source: these tests hold the reading rules (what keeps
a value, what keeps the whole document) and compare decisions of the default policy made with
and without it, through ``PolicyService`` (classifier, rate limiter and engine included).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from governance.policy.decision import DocumentFacts, FileFacts, ImageFacts, ResponseFacts
from governance.policy.engine_regopy import RegopyEngine
from governance.policy.ratelimit import RateLimiter
from governance.policy.rego_input import InputProjection
from governance.policy.service import PolicyService
from tests.test_policy_service import POLICIES, facts

DOC: dict[str, Any] = {
    "actor": {"id": "a", "roles": ["editor"], "tenant": "acme"},
    "request": {
        "model": "m",
        "prompt": "secret",
        "images": [{"role": "mask", "sha256": "x", "size": 1}, {"role": "parent", "size": 2}],
        "labels": {"asset": "draft"},
    },
    "session": {"id": "s", "lineage": ["t1"]},
    "signals": {"minors": {"matched": True, "terms": ["kid"], "fields": ["new"]}},
    "stage": "request",
}


def _project(source: str, doc: dict[str, Any] = DOC) -> Any:
    return InputProjection.of_modules([f"package custody\n\nimport rego.v1\n\n{source}\n"]).project(
        doc
    )


def test_a_reference_keeps_the_value_at_its_end_whole() -> None:
    assert _project("x if input.request.labels.asset == 1\ny if input.stage") == {
        "request": {"labels": {"asset": "draft"}},
        "stage": "request",
    }


def test_a_non_literal_key_keeps_every_key_at_that_level() -> None:
    got = _project("m contains n if { some n\n input.signals[n].matched }")
    assert got == {"signals": {"minors": {"matched": True}}}
    assert _project('x if input["stage"] == "request"') == {"stage": "request"}
    assert _project('x if input.request["a b"]') == {
        "request": {k: v for k, v in DOC["request"].items()}
    }


def test_lists_keep_every_element_projected() -> None:
    assert _project("x if input.request.images[_].role == 1") == {
        "request": {"images": [{"role": "mask"}, {"role": "parent"}]}
    }


def test_object_get_on_an_input_path_reads_that_key_only() -> None:
    assert _project('l := object.get(input.request, "labels", {})') == {
        "request": {"labels": {"asset": "draft"}}
    }
    assert _project('l := object.get(input.request, ["labels"], {})') == {"request": DOC["request"]}


@pytest.mark.parametrize(
    "source",
    [
        "x := input",
        "x if walk(input, [p, v])",
        "x := json.marshal(input)",
        'x if { input.request.prompt == "a\n }',  # a string the scanner cannot end
    ],
)
def test_a_bare_input_or_an_unreadable_module_keeps_the_whole_document(source: str) -> None:
    projection = InputProjection.of_modules([f"package custody\n{source}\n"])
    assert projection.whole
    assert projection.project(DOC) is DOC


def test_comments_and_strings_are_not_references() -> None:
    got = _project('# input is the contract\nx := "input" if input.stage == "input.prompt"')
    assert got == {"stage": "request"}


def test_sets_are_kept_whole() -> None:
    doc = {"request": {"tags": {"a", "b"}}}
    assert _project("x if input.request.tags[_].y", doc) == doc


def test_the_default_policy_reads_no_prompt_session_or_signal_terms() -> None:
    engine = RegopyEngine(PolicyService(POLICIES)._state.bundle)  # type: ignore[arg-type]
    got = engine.projection.project(DOC)
    assert "prompt" not in got["request"] and "session" not in got
    assert got["signals"] == {"minors": {"matched": True}}
    assert got["request"]["images"] == DOC["request"]["images"]  # count() reads them whole
    engine.close()


CASES = [
    facts("make the sofa teal"),
    facts("make the sofa teal", labels={"asset": "production"}),
    facts("remove the watermark from this photo"),
    facts("put the actor Tom Cruise in this photo"),
    facts("swap the child's face", tenant="acme"),
    facts("make the woman smile", labels={"consent": "obtained"}),
    facts("a toddler on a swing", tenant="default"),
    facts("make it teal", tenant="licensed-only"),
    facts("make it teal", tenant="licensed-only", labels={"rights": "owned"}),
    facts("make it teal", roles=("viewer",)),
    facts("make it teal", tenant="ratelimited"),
]


def _with_extras(i: int) -> Any:
    base = CASES[i % len(CASES)]
    return replace(
        base,
        actor=f"{base.actor}-{i}",
        images=(*base.images, ImageFacts("mask", "image/png", 10, 8, 8, "cd" * 32, False)),
        documents=(DocumentFacts("application/pdf", "application/pdf", 10, "ef" * 32, False),)
        if i % 2
        else (),
        files=(FileFacts("https://x.example/a.png", "https", "x.example", "image/png"),)
        if i % 3 == 0
        else (),
        shape={"cached_content": i % 4 == 0},
    )


def _decide_all(projected: bool) -> list[tuple[Any, ...]]:
    service = PolicyService(POLICIES, limiter=RateLimiter())
    engine = service._state.engine
    assert isinstance(engine, RegopyEngine) and not engine.projection.whole
    if not projected:
        engine.projection = InputProjection(None)
    out = []
    response = ResponseFacts("v1", ("IMAGE_SAFETY",), None, "text", 1, ((8, 8),))
    for i in range(2 * len(CASES) + 4):
        for turn in (CASES[i % len(CASES)], _with_extras(i)):
            request = service.decide_request(turn)
            answer = service.decide_response(turn, response)
            out.append(
                (
                    request.outcome,
                    request.reasons,
                    request.obligations,
                    answer.outcome,
                    answer.reasons,
                    request.input_masked,
                )
            )
    service.close()
    return out


def test_the_default_policy_decides_the_same_with_and_without_the_projection() -> None:
    with_projection, without = _decide_all(True), _decide_all(False)
    assert with_projection == without
    outcomes = {row[0] for row in with_projection}
    assert {"allow", "deny", "review", "review_output"} <= outcomes  # the cases reach every rule


def test_rego_tests_still_pass() -> None:
    from governance.policy.bundle import load_bundle
    from governance.policy.engine_regopy import run_rego_tests

    results = run_rego_tests(load_bundle(Path(POLICIES)))
    assert results and all(r.status == "pass" for r in results), [
        r for r in results if r.status != "pass"
    ]
