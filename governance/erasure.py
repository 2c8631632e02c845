"""Erasure of content on an authorised request, recorded in the ledger before it happens.

A target is a blob digest or a commitment to it (the blob is content-addressed, so erasing by one
commitment erases the blob and empties the salt of every commitment to it). The tenants owning
it are the tenants of the ledger entries whose leaves hold one of its commitments, and of the
turns whose index rows name its digest; a tenant's admin may erase only content no other tenant
references, an operator any.

Copies go with an input. A turn's request body (as it arrived: the prompt and every input in
base64) and its decision inputs (the full policy input: every text the upstream read) hold copies
of what the turn received, so erasing a turn's prompt, input image, mask or non-image input also
erases those blobs of every turn that received it (the turns whose ``turn.received`` entry holds
one of its commitments); their commitments are named in the same ``content.erased`` events.
Without that, an erased prompt would still be readable in the request body and the decision
input, and an erased photo in the request body.

Order: one ``content.erased`` event per owning tenant (who, why, the commitments — never the
content, and never the bare digest, which would let anyone confirm a guess of erased content)
commits together with the ``blob_erasures`` row; only then are the salts emptied and the blob
destroyed, and an erased input's rows of ``image_fingerprints`` deleted. A crash in between
leaves a recorded erasure whose blob remains; running it again finishes it. ``custody ledger
verify`` counts the erased commitments and still passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, or_, select, text

from governance.auth.lifecycle import Operator
from governance.ledger_vocabulary import ledger_event
from governance.refusal_error import Refusal
from storage.blobs import Commitments
from storage.ledger.leaf import COMMITMENT_PREFIX
from storage.ledger.log import Ledger
from storage.schema.fingerprints import IMAGE_FINGERPRINTS
from storage.schema.turns import DECISION_INPUTS, TURN_IMAGES, TURNS

_HEX = frozenset("0123456789abcdef")


class ErasureError(Refusal):
    """An erasure that cannot be done. ``code`` is the HTTP status an API answers with."""


@dataclass(frozen=True)
class ContentCopy:
    """A blob that holds a copy of the target (a request body, a decision input)."""

    digest: str
    commitments: tuple[str, ...]


@dataclass(frozen=True)
class ErasureTarget:
    """A blob to erase: its digest, every commitment to it, the tenants that own it, and the
    blobs not yet erased that hold copies of it."""

    digest: str
    commitments: tuple[str, ...]
    tenants: frozenset[str]
    already_erased: bool
    copies: tuple[ContentCopy, ...] = ()


@dataclass(frozen=True)
class ErasureDone:
    target: ErasureTarget
    blob_was_present: bool
    entries: tuple[int, ...]  # ledger indexes of the content.erased events

    def to_json(self) -> dict[str, Any]:
        return {
            "commitments": list(self.target.commitments),
            "copies": [c for copy in self.target.copies for c in copy.commitments],
            "tenants": sorted(self.target.tenants),
            "blob_was_present": self.blob_was_present,
            "ledger_entries": list(self.entries),
        }


def _leaf_holds_any(engine: Engine, commitments: tuple[str, ...]) -> tuple[str, dict[str, bytes]]:
    """A WHERE clause (and its parameters) true of a ledger entry whose leaf bytes hold one of
    ``commitments``, in the database's own substring function."""
    if engine.dialect.name == "postgresql":
        match = " OR ".join(f"position(:c{i} in leaf) > 0" for i in range(len(commitments)))
    else:
        match = " OR ".join(f"instr(leaf, :c{i}) > 0" for i in range(len(commitments)))
    return match, {f"c{i}": c.encode() for i, c in enumerate(commitments)}


def _tenants_in_ledger(engine: Engine, commitments: tuple[str, ...]) -> set[str]:
    """Tenants of the entries whose leaf bytes hold one of ``commitments`` (a scan of the
    ledger: erasure is rare, and the ledger is the record of who holds what)."""
    if not commitments:
        return set()
    match, params = _leaf_holds_any(engine, commitments)
    with engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT DISTINCT tenant FROM ledger_entries WHERE {match}"), params
        ).all()
    return {str(r[0]) for r in rows}


def _turns_received(engine: Engine, commitments: tuple[str, ...]) -> set[str]:
    """Turns whose ``turn.received`` entry holds one of ``commitments`` (the turns that
    received the content as their prompt or an input)."""
    if not commitments:
        return set()
    match, params = _leaf_holds_any(engine, commitments)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT DISTINCT turn_id FROM ledger_entries"
                f" WHERE type = 'turn.received' AND turn_id IS NOT NULL AND ({match})"
            ),
            params,
        ).all()
    return {str(r[0]) for r in rows}


def _turns_given(engine: Engine, digest: str) -> set[str]:
    """Turns whose index rows name ``digest`` as their prompt or an input image (found too
    when a turn's image list was too long for its leaf and went to a blob)."""
    turns, images = TURNS.c, TURN_IMAGES.c
    with engine.connect() as conn:
        prompts = conn.execute(select(turns.turn_id).where(turns.prompt_sha256 == digest)).all()
        inputs = conn.execute(
            select(images.turn_id).where(images.sha256 == digest, images.direction == "input")
        ).all()
    return {str(r[0]) for r in (*prompts, *inputs)}


def _tenants_in_turns(engine: Engine, digest: str) -> set[str]:
    """Tenants of the turns whose index rows name ``digest`` (inputs, outputs, manifests,
    prompts, requests, responses)."""
    turns, images = TURNS.c, TURN_IMAGES.c
    naming_images = select(images.turn_id).where(
        or_(
            images.sha256 == digest,
            images.signed_sha256 == digest,
            images.manifest_sha256 == digest,
        )
    )
    query = (
        select(turns.tenant)
        .distinct()
        .where(
            or_(
                turns.prompt_sha256 == digest,
                turns.request_sha256 == digest,
                turns.response_sha256 == digest,
                turns.turn_id.in_(naming_images),
            )
        )
    )
    with engine.connect() as conn:
        return {str(r[0]) for r in conn.execute(query).all()}


class ContentEraser:
    """Finds, authorises and erases content; the CLI and ``POST /api/v1/erasures`` use it."""

    def __init__(self, engine: Engine, ledger: Ledger, commitments: Commitments) -> None:
        self.engine = engine
        self.ledger = ledger
        self.commitments = commitments

    def find(self, digest_or_commitment: str) -> ErasureTarget:
        """The blob named by a hex SHA-256 digest or by a commitment to it."""
        value = digest_or_commitment.strip()
        if value.startswith(COMMITMENT_PREFIX):
            digest = self.commitments.digest_of(value)
            if digest is None:
                raise ErasureError(
                    404,
                    f"Custody holds no content with commitment {value}: check it against the"
                    " ledger entry it came from.",
                    "CONTENT_NOT_FOUND",
                )
        elif len(value) == 64 and set(value.lower()) <= _HEX:
            digest = value.lower()
        else:
            raise ErasureError(
                400,
                "Name the content by its SHA-256 digest (64 hex characters) or by a commitment"
                f" ({COMMITMENT_PREFIX}...) from its ledger entry.",
                "BAD_ERASURE_TARGET",
            )
        commitments = tuple(self.commitments.commitments_of(digest))
        present = self.commitments.blobs.exists(digest)
        if not commitments and not present:
            raise ErasureError(
                404, f"Custody holds no content with digest {digest}.", "CONTENT_NOT_FOUND"
            )
        tenants = _tenants_in_ledger(self.engine, commitments) | _tenants_in_turns(
            self.engine, digest
        )
        copies = self._copies(digest, commitments)
        for copy in copies:
            tenants |= _tenants_in_ledger(self.engine, copy.commitments)
            tenants |= _tenants_in_turns(self.engine, copy.digest)
        erased = self.commitments.erased(digest) and not present and not copies
        return ErasureTarget(digest, commitments, frozenset(tenants), erased, copies)

    def _copies(self, digest: str, commitments: tuple[str, ...]) -> tuple[ContentCopy, ...]:
        """The request bodies and decision inputs, not yet erased, of the turns that received
        ``digest`` (see the module docstring)."""
        turn_ids = sorted(
            _turns_received(self.engine, commitments) | _turns_given(self.engine, digest)
        )
        if not turn_ids:
            return ()
        found: list[str] = []
        inputs: list[str] = []
        with self.engine.connect() as conn:  # closed before Commitments opens its own
            for first in range(0, len(turn_ids), 500):
                ids = turn_ids[first : first + 500]
                found += [
                    str(r[0])
                    for r in conn.execute(
                        select(TURNS.c.request_sha256).where(
                            TURNS.c.turn_id.in_(ids), TURNS.c.request_sha256.is_not(None)
                        )
                    )
                ]
                inputs += [
                    str(r[0])
                    for r in conn.execute(
                        select(DECISION_INPUTS.c.input_commitment).where(
                            DECISION_INPUTS.c.turn_id.in_(ids)
                        )
                    )
                ]
        found += [d for c in inputs if (d := self.commitments.digest_of(c)) is not None]
        copies = []
        for copy in dict.fromkeys(found):
            if copy == digest:
                continue
            present = self.commitments.blobs.exists(copy)
            if self.commitments.erased(copy) and not present:
                continue
            copies.append(ContentCopy(copy, tuple(self.commitments.commitments_of(copy))))
        return tuple(copies)

    def _forget_fingerprints(self, digest: str) -> None:
        """An erased input's perceptual fingerprints go with it: they would still let anyone
        holding the picture find the turn that used it. (A released output's stay: they are in
        its public ``output.signed`` leaf, as its hashes are.)"""
        fp = IMAGE_FINGERPRINTS.c
        with self.engine.begin() as conn:
            conn.execute(
                IMAGE_FINGERPRINTS.delete().where(fp.sha256 == digest, fp.direction == "input")
            )

    def erase(self, target: ErasureTarget, *, reason: str, by: Operator) -> ErasureDone:
        """Record the erasure (ledger events and erasure row, one transaction), then destroy."""
        if not reason.strip():
            raise ErasureError(
                400, "Say why the content is erased (a reason is recorded).", "REASON_REQUIRED"
            )
        if target.already_erased:
            raise ErasureError(409, "This content was already erased.", "ALREADY_ERASED")
        body = {
            "commitments": [
                *target.commitments,
                *(c for copy in target.copies for c in copy.commitments),
            ],
            "reason": reason,
            "by": by.body(),
            "tenants": sorted(target.tenants),
        }
        events = [
            ledger_event("content.erased", body, tenant=tenant, actor=by.actor)
            for tenant in sorted(target.tenants) or ["*"]
        ]
        digests = [target.digest, *(copy.digest for copy in target.copies)]
        records = [
            self.commitments.erasure_record(d, reason=reason, actor=by.actor)
            for d in digests
            if d != target.digest or not self.commitments.erased(d)
        ]
        entries = self.ledger.append(events, records)
        present = self.commitments.destroy(target.digest)
        for copy in target.copies:
            self.commitments.destroy(copy.digest)
        self._forget_fingerprints(target.digest)
        return ErasureDone(target, present, tuple(e.index for e in entries))
