"""Human review of held turns: tasks, decisions, deadlines, webhooks.

The pipeline's interface (phase 2 wires it in; every call below is blocking unless marked
``async``: run it through ``Services.run_blocking``)::

    from governance.review import HeldTurn, ReviewDesk, Shown, desk_for

    desk: ReviewDesk = desk_for(services)

1. A turn policy holds (``decision.outcome`` ``review`` at stage ``request``, or
   ``review``/``review_output`` at stage ``response``)::

       task: ReviewTask = desk.open(
           HeldTurn(
               tenant=principal.tenant, turn_id=turn_id,
               stage="request" | "response",
               requester=principal.actor, requester_key=principal.key_id,
               session=headers.get("x-custody-session"),
               request_hash=<sha-256 hex of the request as received: api version, model,
                            method and raw body>,
               shown=Shown(request=<digest or commitment of the raw request>,
                           prompt=<of the prompt text, or None>,
                           inputs=(<of each input image>,), masks=(<of each mask>,),
                           outputs=(<of each held output image; stage "response" only>,)),
               reasons=decision.reasons),
           decision.obligations)   # raises ReviewError(500, BAD_REVIEW_OBLIGATIONS): fail closed

   ``ReviewTerms.from_obligations(decision.obligations).wait_s`` is how long to hold the
   caller's connection (the policy's ``review_wait_s``; 0: answer 409 at once, naming
   ``task.task_id``).

2. Waiting (``async``): ``task = await desk.wait(task.task_id, timeout_s=wait_s)``. It returns
   when the task is *settled* — closed and its outcome recorded in the ledger — or as it stands
   at the timeout. ``task.status``: ``approved`` (release), ``rejected`` /
   ``changes_requested`` / ``expired`` (refuse, with ``task.reason``, the reviewer's comment or
   the deadline's), ``pending`` / ``escalated`` (still held: answer 409 naming the task).

3. The identical request again: ``desk.find_by_request_hash(tenant, request_hash)`` -> the
   newest ``ReviewTask`` (or None). ``settled`` and ``approved``: release the approved, signed
   result without calling upstream again; closed otherwise: the reason; open: still pending.

4. An approval in the manifest: ``task.approvals_for_manifest()`` -> ``list[Approval]``, one per
   approval of the round that approved it: ``credit`` (the reviewer as the policy's
   ``reviewer_identity`` allows: ``name`` -> the actor; ``pseudonym`` -> ``key:<key id>``;
   ``commitment`` -> ``salted-sha256:…`` of the actor), ``identity``, ``decision_id``,
   ``time_ms``, ``group``, ``shown_digest`` (SHA-256 of the RFC 8785 JSON of ``task.shown``:
   the approval covers exactly those digests, so a verifier holding the released bytes checks
   the approval covered them) and ``ledger_index`` (its ``review.decided`` entry).

Reviewers (the native API, the console) use ``claim``, ``decide``, ``queue``, ``get``;
``governance.background`` runs ``keep_reviews`` (deadlines, webhook deliveries).
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import Engine

from governance.outbound.addresses import Network
from governance.review.desk import ReviewDesk
from governance.review.errors import ReviewError
from governance.review.groups import ReviewGroups
from governance.review.shown import Shown, shown_digest
from governance.review.tasks import Approval, Decision, HeldTurn, QueueFilter, ReviewTask
from governance.review.terms import ReviewTerms
from governance.review.webhooks import WebhookRegistry, WebhookSender
from storage.blobs import BlobStore
from storage.ledger.log import Ledger


class Installation(Protocol):
    """What the desk is built on (``governance.services.Services`` has it; the review package
    does not import it, so the pipeline may import the review package)."""

    engine: Engine
    read_engine: Engine  # reads only: on SQLite it never takes the write lock
    ledger: Ledger
    blobs: BlobStore
    webhook_networks: tuple[Network, ...]  # CUSTODY_WEBHOOK_ALLOW_NETWORKS, parsed at start-up


__all__ = [
    "Approval",
    "Decision",
    "HeldTurn",
    "QueueFilter",
    "ReviewDesk",
    "ReviewError",
    "ReviewGroups",
    "ReviewTask",
    "ReviewTerms",
    "Shown",
    "WebhookRegistry",
    "WebhookSender",
    "desk_for",
    "keep_reviews",
    "shown_digest",
]


def desk_for(services: Installation) -> ReviewDesk:
    """The review desk on the process's database and ledger (cheap: it holds references)."""
    from storage.blobs import Commitments

    return ReviewDesk(
        services.engine,
        services.ledger,
        Commitments(services.engine, services.blobs),
        read_engine=services.read_engine,
    )


def keep_reviews(services: Installation) -> None:
    """One tick of the review job: apply deadlines, then send due webhook deliveries."""
    desk_for(services).apply_deadlines()
    sender = WebhookSender(
        services.engine, services.ledger, allowed_networks=services.webhook_networks
    )
    sender.deliver_due()
