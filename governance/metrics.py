"""Prometheus metrics of one Custody process (a registry per app, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Turns by outcome, upstream latency and the latency Custody itself adds."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.turns = Counter(
            "custody_turns",
            "Turns handled, by outcome (released, denied, held, upstream_error, bad_request, ...).",
            ["outcome"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "custody_upstream_latency_seconds",
            "Time the upstream (Gemini or the emulator) took to answer.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.added_latency = Histogram(
            "custody_gateway_added_latency_seconds",
            "Time Custody added to a turn: total time minus the upstream's time.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "custody_auth_failures",
            "Requests refused because their API key was missing or unknown.",
            registry=self.registry,
        )
