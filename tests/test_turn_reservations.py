"""A turn's rate-limit reservation is kept only while the turn runs.

Released, held or failed, a turn that is over needs nothing to give its place back later, so the
policy service and the limiter keep no entry for it (they once kept one per turn until 100,000
later turns: about 1.3 KB each, ~130 MiB at that bound). The place itself stays counted.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.genai import errors

from tests.conftest import RunningCustody

MODEL = "gemini-2.5-flash-image"


def test_released_and_refused_turns_leave_no_reservation(custody: RunningCustody) -> None:
    client: Any = custody.client()
    for prompt in ("a red bicycle", "a blue sofa"):  # released
        client.models.generate_content(model=MODEL, contents=prompt)
    client.models.generate_content(model=MODEL, contents="gore")  # answered, but blocked
    with pytest.raises(errors.APIError):  # denied by the default policy
        client.models.generate_content(model=MODEL, contents="remove the watermark")
    policy: Any = custody.services.policy  # type: ignore[attr-defined]
    assert policy._reservations == {}
    assert not policy.limiter._held
    counts = policy.limiter.peek("acme", "editor@acme", policy._state.windows_for("acme"))
    assert any(window.get("actor_turns", 0) >= 2 for window in counts.values()), counts
