"""Prometheus metrics of one Custody process (a registry per app, so tests can run several).

Turn series carry a ``tenant`` label, so each tenant's auditor can be served exactly their own
series (``tenant_view``): how much a tenant uses Custody is that tenant's business. Series without
a tenant (authentication failures, which belong to no known tenant) are process-wide and served
only to operators.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Turns by tenant and outcome, upstream latency and the latency Custody itself adds."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._reason_counts: dict[str, _ReasonCounts] = {}
        self.turns = Counter(
            "custody_turns",
            "Turns handled, by tenant and outcome (released, denied, held, upstream_error, ...).",
            ["tenant", "outcome"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "custody_upstream_latency_seconds",
            "Time the upstream (Gemini or the emulator) took to answer, by tenant.",
            ["tenant"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.added_latency = Histogram(
            "custody_gateway_added_latency_seconds",
            "Time Custody added to a turn (total time minus the upstream's), by tenant.",
            ["tenant"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_attempts = Counter(
            "custody_upstream_attempts",
            "Upstream attempts by tenant and outcome (answered, http_503, timeout, transport,"
            " circuit_open, ...): retried ones and the one that ended the upstream phase.",
            ["tenant", "outcome"],
            registry=self.registry,
        )
        self.upstream_circuit = Gauge(
            "custody_upstream_circuit_state",
            "The upstream's circuit breaker: 1 for its current state (closed, half_open, open).",
            ["upstream", "state"],
            registry=self.registry,
        )
        self.policy_is_active = Gauge(
            "custody_policy_revision_active",
            "1 when this replica decides with the active policy revision (policy_revisions), 0"
            " while it does not (its policy files differ from the replica that published it).",
            registry=self.registry,
        )
        self.checkpoint_signer = Gauge(
            "custody_checkpoint_signer",
            "1 when this replica holds the checkpoint signer lease (it signs checkpoints).",
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "custody_auth_failures",
            "Requests refused because their API key was missing or unknown.",
            registry=self.registry,
        )

    def watch_circuit(self, upstream: str, state: Callable[[], str]) -> None:
        """Serve the breaker gauge live: 1 for the state ``state()`` reads at scrape time."""
        for name in ("closed", "half_open", "open"):
            self.upstream_circuit.labels(upstream, name).set_function(
                lambda name=name: 1.0 if state() == name else 0.0  # type: ignore[misc]
            )

    def count_from(self, name: str, documentation: str, counts: Mapping[str, int]) -> None:
        """Expose a plain ``reason -> count`` mapping kept by a layer below the app (the
        connection guard, the request limits) as the process-wide counter ``name``."""
        previous = self._reason_counts.pop(name, None)
        if previous is not None:  # the same services served by a second app (tests)
            self.registry.unregister(previous)
        self._reason_counts[name] = _ReasonCounts(name, documentation, counts)
        self.registry.register(self._reason_counts[name])

    def tenant_view(self, tenant: str | None) -> TenantView:
        """What ``generate_latest`` should expose to a reader of ``tenant`` (None: operator)."""
        return TenantView(self.registry, tenant)


class TenantView:
    """A collector over a registry that yields only one tenant's samples (all, for None)."""

    def __init__(self, registry: CollectorRegistry, tenant: str | None) -> None:
        self.registry = registry
        self.tenant = tenant

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if self.tenant is None:
                yield family
                continue
            samples = [s for s in family.samples if s.labels.get("tenant") == self.tenant]
            if not samples:
                continue  # another tenant's series, or a process-wide one
            kept = Metric(family.name, family.documentation, family.type, family.unit)
            kept.samples = samples
            yield kept


class _ReasonCounts:
    """A collector reading a live ``reason -> count`` mapping at each scrape."""

    def __init__(self, name: str, documentation: str, counts: Mapping[str, int]) -> None:
        self.name = name
        self.documentation = documentation
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=["reason"])
        for reason, value in sorted(self.counts.items()):
            family.add_metric([reason], value)
        yield family
