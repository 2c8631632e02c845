"""A circuit breaker for one upstream: after repeated failures, fail fast instead of piling on.

States (``state``): ``closed`` — every call goes; ``open`` — after ``threshold`` failures in a
row, no call goes for ``cooldown_s`` (``admit`` returns how long to wait, the caller's
``Retry-After``); ``half_open`` — once the cool-down is over, exactly one trial call goes: its
success closes the breaker, its failure opens it for another cool-down. A failure is what says
the upstream is unwell (no answer, a timeout, HTTP 500/502/503/504); any other answer — a 4xx, a
429 quota error, a 200 however malformed — is a success: the upstream is up and answering.

One breaker per upstream per process (replicas decide on their own; docs/operations.md,
"Upstream faults", says why). ``threshold`` 0 disables it.
Thread-safe enough for one event loop: every method runs without awaiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

FAILURE_STATUSES = frozenset({0, 500, 502, 503, 504})
STATES = ("closed", "half_open", "open")


@dataclass(frozen=True)
class Admission:
    """Whether a call may go now; when not, ``retry_after_s`` is how long until it may."""

    allowed: bool
    retry_after_s: float = 0.0
    trial: bool = False  # this call is the half-open trial


class CircuitBreaker:
    """Closed → open after ``threshold`` failures in a row → half-open after ``cooldown_s``."""

    def __init__(
        self,
        *,
        threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._on_change = on_change
        self._state = "closed"
        self._failures = 0  # consecutive failures while closed
        self._opened_at = 0.0
        self._trial_out = False  # a half-open trial call is in flight

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (an open breaker past its cool-down reads
        ``half_open``: the next call is its trial)."""
        if self._state == "open" and self._clock() - self._opened_at >= self.cooldown_s:
            self._set("half_open")
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def admit(self) -> Admission:
        """May a call go now? A half-open breaker admits one trial and refuses the rest."""
        if self.threshold <= 0:
            return Admission(True)
        state = self.state
        if state == "closed":
            return Admission(True)
        if state == "half_open" and not self._trial_out:
            self._trial_out = True
            return Admission(True, trial=True)
        if state == "half_open":
            return Admission(False, 1.0)  # the trial's answer decides; ask again shortly
        return Admission(False, max(self.cooldown_s - (self._clock() - self._opened_at), 0.001))

    def would_admit(self) -> bool:
        """``admit`` without taking the half-open trial: may a retry be planned?"""
        return self.threshold <= 0 or self.state == "closed"

    def record(self, status: int) -> None:
        """The outcome of an admitted call: its HTTP status (0: no answer / timed out)."""
        if self.threshold <= 0:
            return
        self._trial_out = False
        if status not in FAILURE_STATUSES:
            self._failures = 0
            self._set("closed")
            return
        self._failures += 1
        if self._state == "half_open" or self._failures >= self.threshold:
            self._opened_at = self._clock()
            self._set("open")

    def abandon(self) -> None:
        """An admitted call ended without an outcome (the caller went away): free the trial."""
        self._trial_out = False

    def _set(self, state: str) -> None:
        if state != self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)
