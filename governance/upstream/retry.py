"""When to try the upstream again, and after how long: pure decisions over one attempt's result.

Retried (at most ``retries`` more attempts, all within the turn's upstream deadline):

- HTTP 429 carrying ``google.rpc.RetryInfo``: after exactly its ``retryDelay``, when that is at
  most ``max_delay_s``; a longer one is not waited for (the 429, with its RetryInfo, goes to the
  caller, who can wait). A 429 without RetryInfo (a daily quota) is not retried.
- HTTP 500, 502, 503, 504, no answer (connection refused or reset) and a timeout: after an
  exponential backoff with jitter, ``base_delay_s · 2^(n-1)`` capped at ``max_delay_s``, of which
  a random half is waited ("equal jitter": retries of many turns spread out, none is immediate).

Never retried: any answer the upstream completed (a 200, even malformed or with an unreadable
image; a 4xx), and a stream that had begun — its events arrived; retrying would pay for a
second generation the caller never asked for. Custody buffers every answer before release, so
no retry ever follows bytes sent to the caller.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from governance.upstream.client import UpstreamResult, parse_json_object

RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
BACKOFF_STATUSES = frozenset({500, 502, 503, 504})
MAX_RETRIES = 10
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


@dataclass(frozen=True)
class RetryPolicy:
    """How one turn may retry: ``retries`` further attempts, delays capped at ``max_delay_s``."""

    retries: int
    base_delay_s: float
    max_delay_s: float


@dataclass(frozen=True)
class NextStep:
    """After an attempt: retry after ``delay_s``, or stop (``gave_up`` says why, when the
    answer was a retryable failure that is not retried)."""

    retry: bool
    delay_s: float = 0.0
    outcome: str = "answered"  # what the attempt was: answered, http_503, timeout, transport, …
    gave_up: str | None = None
    retry_after_s: float | None = None  # the upstream's RetryInfo, when it sent one


def outcome_of(result: UpstreamResult) -> str:
    """A short name for what an attempt got: ``answered`` (a 200), ``http_N``, ``timeout``,
    ``transport`` (no answer), ``stream_cut`` (a stream that began and broke off)."""
    if result.status == 0 and result.events:
        return "stream_cut"
    if result.status == 0:
        return "timeout" if result.timed_out else "transport"
    return "answered" if result.status == 200 else f"http_{result.status}"


def retry_info_delay(result: UpstreamResult) -> float | None:
    """The ``retryDelay`` (seconds) of a RetryInfo in the error's details, if any."""
    doc = parse_json_object(result.body) if result.body else None
    error = doc.get("error") if doc else None
    details = error.get("details") if isinstance(error, dict) else None
    for item in details if isinstance(details, list) else []:
        if isinstance(item, dict) and item.get("@type") == RETRY_INFO:
            delay = _seconds(item.get("retryDelay"))
            if delay is not None:
                return delay
    return None


def _seconds(value: Any) -> float | None:
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return float(match.group(1))
    if isinstance(value, dict):  # the proto3 JSON object form {"seconds": N, "nanos": M}
        try:
            return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
        except (TypeError, ValueError):
            return None
    return None


def next_step(
    result: UpstreamResult,
    attempt: int,
    policy: RetryPolicy,
    *,
    remaining_s: float,
    rng: random.Random | None = None,
) -> NextStep:
    """Retry or stop after attempt number ``attempt`` (1-based), ``remaining_s`` before the
    turn's upstream deadline."""
    outcome = outcome_of(result)
    retry_after: float | None = None
    if outcome == "http_429":
        retry_after = retry_info_delay(result)
        if retry_after is None:
            return NextStep(False, outcome=outcome)
        delay = retry_after
    elif outcome in ("timeout", "transport") or result.status in BACKOFF_STATUSES:
        ceiling = min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
        delay = ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
    else:
        return NextStep(False, outcome=outcome)
    if attempt > policy.retries:
        gave_up = "retries exhausted" if policy.retries else None  # None: none were allowed
        return NextStep(False, outcome=outcome, gave_up=gave_up, retry_after_s=retry_after)
    if delay > policy.max_delay_s:
        return NextStep(
            False, outcome=outcome, gave_up="retry delay above the cap", retry_after_s=retry_after
        )
    if delay >= remaining_s:
        return NextStep(False, outcome=outcome, gave_up="deadline", retry_after_s=retry_after)
    return NextStep(True, delay, outcome, retry_after_s=retry_after)
