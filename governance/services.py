"""The process-wide service container: database, ledger, blobs, upstream, policy, signer.

Built once per app by ``build_services``; routes reach it through ``api.deps.get_services``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Engine

from governance.auth.keys import KeyRing
from governance.content import ContentRecorder
from governance.metrics import Metrics
from governance.outbound import OutboundRules, UrlFetcher
from governance.outbound.addresses import Network, parse_networks
from governance.pipeline.decide import PolicyGates
from governance.pipeline.forward import Forwarder, UpstreamGuard
from governance.pipeline.lineage import SessionLinker
from governance.pipeline.receive import Receiver
from governance.pipeline.review_gate import ReviewGate
from governance.pipeline.signing import OutputSigning
from governance.pipeline.turn import TurnPipeline
from governance.pipeline.url_inputs import UrlInliner
from governance.policy.ratelimit import DatabaseRateLimiter
from governance.policy.service import PolicyService
from governance.provenance.signer import OutputSigner
from governance.recovery import ProcessInstance, record_interrupted, recover_interrupted
from governance.review.desk import ReviewDesk
from governance.settings import GOOGLE_GEMINI_URL, Settings
from governance.shed_records import ShedTally
from governance.state import open_state
from governance.upstream.breaker import CircuitBreaker
from governance.upstream.client import UpstreamClient
from governance.upstream.embedded import EmbeddedEmulator
from governance.upstream.retry import MAX_RETRIES
from governance.witness.config import witness_policy
from governance.witness.publisher import WitnessPublisher
from storage import policy_revisions
from storage.blobs import BlobStore, Commitments
from storage.db import is_sqlite, make_engine
from storage.leases import Lease
from storage.ledger.log import Ledger
from storage.sessions import SessionStore

log = logging.getLogger("custody")
T = TypeVar("T")


@dataclass
class Services:
    """Everything a request may need, created at start-up and closed at shutdown."""

    settings: Settings
    engine: Engine
    read_engine: Engine
    keys: KeyRing
    ledger: Ledger
    blobs: BlobStore
    content: ContentRecorder
    upstream: UpstreamClient
    policy: PolicyService
    signer: OutputSigner
    metrics: Metrics
    executor: ThreadPoolExecutor
    pipeline: TurnPipeline
    sessions: SessionStore
    commitments: Commitments
    ledger_verifier_key: str = ""  # the note verifier key operators publish beside checkpoints
    emulator: EmbeddedEmulator | None = None
    instance: ProcessInstance = field(default_factory=ProcessInstance.current)
    interrupted: list[str] = field(default_factory=list)  # turns recorded as interrupted at start
    witness: WitnessPublisher | None = None  # submits checkpoints to CUSTODY_WITNESSES
    webhook_networks: tuple[Network, ...] = ()  # CUSTODY_WEBHOOK_ALLOW_NETWORKS
    shed: ShedTally = field(default_factory=ShedTally)  # 503s under overload, per tenant
    counter_engine: Engine | None = None  # SQLite: the rate counters' (no fsync of their own)

    async def run_blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking work (database, hashing, signing, Rego) off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, partial(fn, *args, **kwargs))

    async def aclose(self) -> None:
        await self.upstream.aclose()
        if self.ledger.signer_lease is not None:
            with contextlib.suppress(Exception):  # a lost database: the lease simply expires
                self.ledger.signer_lease.give_up()
        self.ledger.close()
        self.keys.close()
        if self.emulator is not None:
            self.emulator.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.policy.close()  # its engine's large-input thread stops (else it lived until GC)
        self.engine.dispose()
        self.read_engine.dispose()
        if self.counter_engine is not None:
            self.counter_engine.dispose()


def _upstream(settings: Settings) -> tuple[UpstreamClient, EmbeddedEmulator | None]:
    """The upstream client; its key comes only from Custody's settings (``upstream_key``), which
    refuse a Custody key — a ``ConfigError`` stops start-up before anything is sent."""
    key = settings.upstream_key()
    if settings.uses_emulator and not settings.upstream_base_url:
        emulator = EmbeddedEmulator.start(settings)
        client = UpstreamClient(
            emulator.base_url,
            "",
            timeout_s=settings.upstream_timeout_s,
            label=f"custody-emulator (built in, {emulator.base_url})",
            is_emulator=True,
        )
        return client, emulator
    base = settings.upstream_base_url or GOOGLE_GEMINI_URL
    label = "Google Gemini API" if base == GOOGLE_GEMINI_URL else base
    client = UpstreamClient(
        base,
        key.value,
        timeout_s=settings.upstream_timeout_s,
        label=label,
        is_emulator=settings.emulator == "on",
    )
    return client, None


def _upstream_guard(
    settings: Settings, policy: PolicyService, metrics: Metrics, upstream: UpstreamClient
) -> UpstreamGuard:
    """Retries (a tenant's ``upstream_retries`` in the policy data, else the setting), the
    turn's upstream deadline and the upstream's circuit breaker, watched in /metrics."""
    breaker = CircuitBreaker(
        threshold=settings.upstream_breaker_threshold,
        cooldown_s=settings.upstream_breaker_cooldown_s,
    )
    metrics.watch_circuit(upstream.label, lambda: breaker.state)

    def retries_for(tenant: str) -> int:
        for scope in (tenant, "default"):
            value = policy.tenant_settings(scope).get("upstream_retries")
            if isinstance(value, int) and not isinstance(value, bool):
                return max(0, min(value, MAX_RETRIES))
        return settings.upstream_retries

    return UpstreamGuard(
        retries_for,
        settings.upstream_retry_base_ms / 1000,
        settings.upstream_retry_max_delay_ms / 1000,
        settings.upstream_deadline_s,
        breaker,
    )


CHECKPOINT_SIGNER_LEASE = "checkpoint-signer"


def build_services(settings: Settings) -> Services:
    """Open (creating and migrating where needed) the installation; start the upstream client."""
    settings.upstream_key()  # refuse a Custody key as upstream key before creating anything
    state = open_state(settings, create=True)
    engine, ledger, blobs, note_signer = state.engine, state.ledger, state.blobs, state.signer
    read_engine = make_engine(settings.effective_database_url, immediate=False)
    instance = ProcessInstance.current()
    # One replica at a time signs checkpoints: the holder of this lease (storage.leases).
    ledger.signer_lease = Lease(
        engine,
        CHECKPOINT_SIGNER_LEASE,
        holder=f"{instance.host[:64]}:{instance.pid}:{instance.instance}",
        ttl_ms=settings.checkpoint_lease_ms,
    )
    ledger.latest_checkpoint()  # a first checkpoint at start-up: no reader's request ever signs
    # Turns a dead process left open are closed (turn.interrupted) before this one takes any.
    interrupted = recover_interrupted(
        ledger,
        engine,
        instance,
        upstream_timeout_s=max(settings.upstream_timeout_s, settings.upstream_deadline_s),
    )
    upstream, emulator = _upstream(settings)
    executor = ThreadPoolExecutor(
        max_workers=settings.executor_threads, thread_name_prefix="custody"
    )
    commitments = Commitments(engine, blobs)
    content = ContentRecorder(commitments, executor)
    # Rate counts commit without their own fsync: the turn's next ledger append flushes them
    # (on PostgreSQL storage.rate_counters says so per transaction, on the main engine).
    url = settings.effective_database_url
    counter_engine = (
        make_engine(url, pool_size=4, flush_on_commit=False) if is_sqlite(url) else None
    )
    policy = PolicyService.from_settings(
        settings, DatabaseRateLimiter(counter_engine or engine, read_engine)
    )
    metrics = Metrics()
    # This replica's policy is the newest loaded: every replica converges to it (background).
    policy_revisions.publish(
        engine,
        policy.bundle_revision,
        by=ledger.signer_lease.holder,
        now_ms=int(time.time() * 1000),
    )
    metrics.policy_is_active.set(1)
    signer = OutputSigner.from_settings(settings)
    pipeline = TurnPipeline(
        receiver=Receiver(
            tenant_settings=policy.tenant_settings,
            max_image_pixels=settings.max_image_pixels,
            process=instance.leaf_body(),
        ),
        gates=PolicyGates(policy),
        forwarder=Forwarder(upstream, _upstream_guard(settings, policy, metrics, upstream)),
        signing=OutputSigning(
            signer,
            upstream_base_url=upstream.base_url,
            is_emulator=upstream.is_emulator,
            log_origin=settings.log_origin,
            training_mining=settings.training_mining,
        ),
        review=ReviewGate(
            ReviewDesk(engine, ledger, commitments, read_engine=read_engine), ledger, commitments
        ),
        linker=SessionLinker(SessionStore(read_engine)),
        ledger=ledger,
        content=content,
        interrupt=partial(record_interrupted, ledger, engine, instance),
        metrics=metrics,
        executor=executor,
        url_inputs=UrlInliner(UrlFetcher(OutboundRules.from_settings(settings))),
    )
    witnesses = witness_policy(settings)
    return Services(
        settings=settings,
        webhook_networks=parse_networks(settings.webhook_allow_networks),
        engine=engine,
        read_engine=read_engine,
        keys=KeyRing(read_engine),
        ledger=ledger,
        blobs=blobs,
        content=content,
        upstream=upstream,
        policy=policy,
        signer=signer,
        metrics=metrics,
        executor=executor,
        pipeline=pipeline,
        sessions=SessionStore(read_engine),
        commitments=commitments,
        ledger_verifier_key=note_signer.verifier_key(),
        emulator=emulator,
        instance=instance,
        interrupted=interrupted,
        witness=WitnessPublisher(ledger, witnesses) if witnesses else None,
        counter_engine=counter_engine,
    )
