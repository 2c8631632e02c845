"""The ledger vocabulary: one list of event types and body fields, and one number rule.

Route-level proof that real turns go through it: tests/test_upstream_malformed.py (an upstream's
floats in ``upstream.returned``) and tests/test_docs_match_code.py (the list against the docs).
"""

from __future__ import annotations

import math

import pytest

from governance.ledger_vocabulary import (
    EVENT_BODIES,
    MAX_SAFE_INTEGER,
    body_fields,
    ledger_event,
    ledger_value,
)
from storage.ledger.leaf import encode_leaf


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3.0, 3),
        (0.25, "0.25"),
        (-1.5, "-1.5"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (1e300, "1e+300"),
        (MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
        (MAX_SAFE_INTEGER + 1, str(MAX_SAFE_INTEGER + 1)),
        (-(10**30), str(-(10**30))),
        (True, True),
        (None, None),
        ({"a": 1.5, 2: [0.5, 7.0]}, {"a": "1.5", "2": ["0.5", 7]}),
        ({"b", "a"}, ["a", "b"]),
        ((1, 2.5), [1, "2.5"]),
    ],
)
def test_the_number_rule(value: object, expected: object) -> None:
    assert ledger_value(value) == expected


def test_every_event_of_the_vocabulary_makes_a_canonical_leaf() -> None:
    """A body with every field of its type, holding floats, encodes as RFC 8785 leaf bytes."""
    for event_type in EVENT_BODIES:
        required, optional = body_fields(event_type)
        body = {name: 0.5 for name in required | optional}
        event = ledger_event(event_type, body, tenant="acme", actor="a@acme", turn="t1")
        assert all(v == "0.5" for v in event.body.values())
        encode_leaf("custody.test/ledger", event, 1)


def test_a_field_the_vocabulary_does_not_list_is_refused() -> None:
    body = {"stage": "request", "reasons": [], "prompt": "secret"}
    with pytest.raises(ValueError, match=r"review\.requested body must have"):
        ledger_event("review.requested", body, tenant="acme", actor="a@acme")


def test_a_missing_field_is_refused() -> None:
    with pytest.raises(ValueError, match=r"upstream\.requested"):
        ledger_event("upstream.requested", {"upstream": "x"}, tenant="acme", actor="a@acme")


def test_an_unknown_event_type_is_refused() -> None:
    with pytest.raises(ValueError, match="not a Custody ledger event type"):
        ledger_event("turn.teleported", {}, tenant="acme", actor="a@acme")
