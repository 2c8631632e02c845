"""Periodic work of a gateway process: policy hot reload, timed checkpoints, key upkeep, review
deadlines, webhook deliveries and the record of requests shed under overload.

Each job runs in the service executor (it touches files, Rego and the database) on its own timer;
a failing job is logged and retried on the next tick, never fatal to the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from governance.ledger_vocabulary import ledger_event
from storage import policy_revisions
from storage.ledger import LedgerPushback

if TYPE_CHECKING:
    from governance.services import Services

log = logging.getLogger("custody")
KEY_UPKEEP_MS = 1_000
REVIEW_UPKEEP_MS = 500


def reload_policy(services: Services) -> dict[str, Any] | None:
    """Reload changed policy files; the change is a ledger event of its own, and the new
    revision becomes the active one of every replica (``storage.policy_revisions``). A replica
    whose revision is not the active one re-reads its files; if they still differ it says so
    (``/readyz``, ``custody_policy_revision_active``)."""
    body = _reload(services, rescan=False)
    if body:
        publish_policy_revision(services)
    found = policy_revisions.active(services.engine)
    if found is None:
        publish_policy_revision(services)
    elif found.revision != services.policy.bundle_revision:
        body = _reload(services, rescan=True) or body
    converged = check_policy_revision(services)
    if not converged and found is not None:
        log.warning(
            "policy revision %s is not the active revision %s (published by %s): this replica's"
            " policy files differ from that replica's",
            services.policy.bundle_revision[:12],
            found.revision[:12],
            found.recorded_by,
        )
    return body


def _reload(services: Services, *, rescan: bool) -> dict[str, Any] | None:
    body = services.policy.reload_if_changed(rescan=rescan)
    if body:
        services.ledger.append([ledger_event("policy.reloaded", body, tenant="*", actor="custody")])
        log.warning(
            "policy reloaded: revision %s -> %s", body.get("old_revision"), body["new_revision"]
        )
    return body


def publish_policy_revision(services: Services) -> None:
    """Make this replica's policy revision the active one (it has just loaded it)."""
    policy_revisions.publish(
        services.engine,
        services.policy.bundle_revision,
        by=services.ledger.signer_lease.holder if services.ledger.signer_lease else "custody",
        now_ms=int(time.time() * 1000),
    )
    services.metrics.policy_is_active.set(1)


def check_policy_revision(services: Services) -> bool:
    """True when this replica decides with the active revision (and the gauge says so)."""
    found = policy_revisions.active(services.engine)
    same = found is None or found.revision == services.policy.bundle_revision
    services.metrics.policy_is_active.set(1 if same else 0)
    return same


def checkpoint_if_due(services: Services) -> None:
    """Sign a checkpoint when entries arrived since the last one and its interval has passed
    (only the replica holding the signer lease signs); with witnesses configured, submit the
    newest checkpoint to them (once)."""
    services.ledger.checkpoint_if_due()
    lease = services.ledger.signer_lease
    services.metrics.checkpoint_signer.set(1 if lease is not None and lease.held else 0)
    if services.witness is not None:
        services.witness.publish_if_new()
    if services.settings.evidence_tsa_url:
        timestamp_newest_checkpoint(services)


def timestamp_newest_checkpoint(services: Services) -> bytes | None:
    """With ``CUSTODY_EVIDENCE_TSA_URL``: an RFC 3161 token over the newest checkpoint's body,
    fetched once per checkpoint (whichever process gets there first stores it)."""
    from governance.evidence.timestamp import TsaClient
    from storage.ledger.note import split_note
    from storage.ledger.store import read_checkpoints
    from storage.ledger.timestamps import CheckpointTimestamps

    newest = read_checkpoints(services.read_engine, services.ledger.origin, newest_only=True)
    stamps = CheckpointTimestamps(services.engine)
    if not newest or newest[0].size == 0 or stamps.get(newest[0].size) is not None:
        return None
    token = TsaClient(services.settings.evidence_tsa_url).timestamp(
        split_note(newest[0].note)[0].encode()
    )
    stamps.add(newest[0].size, token)
    return token


def keep_keys(services: Services) -> None:
    """Record ``key.expired`` once for each key whose expiry passed (whichever process gets
    there first), and store when keys were last used (batched here, off the request path)."""
    from governance.auth.lifecycle import KeyLifecycle

    keys = KeyLifecycle(services.engine, services.ledger)
    for key_id in keys.record_expiries():
        log.warning("API key %s expired (key.expired recorded)", key_id)
    keys.record_last_used(services.keys.take_last_used())


def record_shed(services: Services) -> None:
    """Write the refusals counted under overload since the last tick (``requests.shed``, one
    event per tenant; ``governance.shed_records``)."""
    try:
        written = services.shed.flush(services.ledger)
    except LedgerPushback:  # the ledger is still full: the counts wait for the next tick
        log.info("requests.shed kept for the next tick: the ledger pushed back")
        return
    if written:
        log.warning("%d requests were refused under overload (requests.shed recorded)", written)


def keep_reviews(services: Services) -> None:
    """Expire or escalate review tasks past their deadline; send due webhook deliveries."""
    from governance.review import keep_reviews as tick

    tick(services)


async def _every(services: Services, period_ms: int, job: Callable[[Services], Any]) -> None:
    """Run ``job`` in the executor every ``period_ms``. Cancelled (shutting down) while a run is
    in its thread, it waits for that run to end first: the services close after it, so a
    checkpoint is never signed after this replica gave its signer lease up, and no job uses a
    closed ledger."""
    while True:
        await asyncio.sleep(period_ms / 1000)
        running = asyncio.ensure_future(services.run_blocking(job, services))
        try:
            await asyncio.shield(running)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await running
            raise
        except Exception:
            log.exception("background job %s failed; retrying next tick", job.__name__)


@contextlib.asynccontextmanager
async def background_jobs(services: Services) -> AsyncIterator[None]:
    """Run the periodic jobs for as long as the app serves."""
    settings = services.settings
    jobs = []
    if settings.policy_reload_ms > 0:
        jobs.append((settings.policy_reload_ms, reload_policy))
    if settings.checkpoint_every_ms > 0:
        jobs.append((max(settings.checkpoint_every_ms // 2, 50), checkpoint_if_due))
    jobs.append((KEY_UPKEEP_MS, keep_keys))
    jobs.append((REVIEW_UPKEEP_MS, keep_reviews))
    jobs.append((settings.shed_record_ms, record_shed))
    tasks = [asyncio.create_task(_every(services, ms, job)) for ms, job in jobs]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:  # what was counted since the last tick
            await services.run_blocking(record_shed, services)
        except Exception:
            log.exception("could not record the requests refused under overload at shutdown")
