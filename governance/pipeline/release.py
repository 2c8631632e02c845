"""Stage 6, record and release: the turn's closing event, its index rows, and what goes out.

The closing path is one: whether a turn is released or fails (a deny, a hold, an upstream error,
a failure inside Custody), its last event (``turn.released`` or ``turn.failed``) and its index
rows (``turns``, ``turn_images``, ``decision_inputs``, ``turn_labels``) are built here from the
turn's state and committed in one append. ``outgoing`` puts each signed file in place of its
upstream image, re-checks that nothing unsigned is left, and serialises each document:
byte-heavy (base64 and ``orjson`` of megabytes), so the orchestrator runs it off the event loop.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from governance import __version__
from governance.ledger_vocabulary import TurnFailed, TurnReleased
from governance.pipeline.errors import TurnError
from governance.pipeline.policy_facts import parse_labels
from governance.pipeline.response import replace_images, unsigned_inline_data
from governance.pipeline.turn_types import TurnState
from governance.provenance.fingerprint import Fingerprint
from storage.fingerprint_index import fingerprint_row


def outgoing(state: TurnState) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The documents to release with every image replaced by its signed file, each serialised;
    a ``TurnError`` (500 ``UNSIGNED_OUTPUT``) if any image would go out unsigned."""
    summary = state.summary
    assert summary is not None
    signed = state.signed
    placed = replace_images(state.documents, {item.position: item.output.data for item in signed})
    if len(signed) != len(summary.images) or unsigned_inline_data(state.documents, placed):
        raise TurnError(
            500,
            "Custody refused to release this turn: its response would have carried an image"
            " Custody did not sign. Nothing was released; report this turn id to the operator.",
            reason="UNSIGNED_OUTPUT",
        )
    return state.documents, [orjson.dumps(doc) for doc in state.documents]


def released_body(state: TurnState, total_ms: float) -> TurnReleased:
    summary, result = state.summary, state.result
    assert summary is not None and result is not None
    body: TurnReleased = {
        "status": 200,
        "stream": state.request.stream,
        "stream_complete": result.stream_complete,
        "outputs": len(state.signed),
        "safety": summary.safety_outcome,
        "gateway_us": round((total_ms - state.upstream_ms) * 1000),
        "upstream_us": round(state.upstream_ms * 1000),
        "gateway_version": __version__,
    }
    if state.review_tasks:
        body["review_tasks"] = [task.task_id for task in state.review_tasks]
    if state.replay is not None:  # the approved held answer of an earlier turn, not a new call
        body["held_turn"] = state.replay.turn_id
    return body


def failed_body(err: TurnError) -> TurnFailed:
    return {"code": err.code, "status": err.status, "reason": err.reason, "message": err.message}


def turn_row(
    state: TurnState,
    *,
    status: str,
    outcome: str,
    total_ms: float,
    upstream_label: str,
    error: str | None = None,
) -> dict[str, Any]:
    """The turn's ``turns`` row. Plain hashes live only in this erasable index, never in
    ledger leaves; they were computed once, when the request was committed."""
    request, parsed, stored, summary = state.request, state.parsed, state.stored, state.summary
    result = state.result if status == "released" else None
    now = int(time.time() * 1000)
    timings = {"upstream_ms": state.upstream_ms, "total_ms": total_ms}
    return {
        "turn_id": state.turn_id,
        "tenant": state.principal.tenant,
        "actor": state.principal.actor,
        "session_id": state.session_id,
        "model": request.model,
        "api_version": request.api_version,
        "method": request.method,
        "status": status,
        "outcome": outcome,
        "prompt_sha256": stored.prompt_sha256 if parsed and stored else None,
        # Known from the commitment made on receipt (hashed once); only a turn that failed
        # before its request was committed at all hashes it here.
        "request_sha256": state.request_sha256 or hashlib.sha256(request.body).hexdigest(),
        "response_sha256": None,
        "upstream": upstream_label,
        "upstream_status": result.status if result is not None else None,
        "model_version": summary.model_version if summary else None,
        "finish_reason": (
            summary.finish_reasons[0] if summary and summary.finish_reasons else None
        ),
        "block_reason": summary.block_reason if summary else None,
        "error": error,
        "usage_json": orjson.dumps(summary.usage).decode() if summary and summary.usage else None,
        "timings_json": orjson.dumps(timings).decode(),
        "first_entry_index": state.first_index,
        "created_ms": now - int(total_ms),
        "finished_ms": now,
    }


def label_rows(state: TurnState, turn: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The turn's ``turn_labels`` rows (``LABEL_COLUMNS`` order): each ``x-custody-labels``
    pair as the policy read it, under the tenant and creation time of ``turn`` (its row)."""
    labels = parse_labels(state.request.headers.get("x-custody-labels"))
    return [
        (turn["turn_id"], name, value, turn["tenant"], turn["created_ms"])
        for name, value in sorted(labels.items())
    ]


def image_rows(state: TurnState, *, outputs: bool = True) -> list[dict[str, Any]]:
    """The turn's ``turn_images`` rows: every input it worked on, every output it signed —
    unless ``outputs`` is False (a turn that failed after signing released no output, so its
    index names none; its ``output.signed`` events and fingerprint rows stay)."""
    rows: list[dict[str, Any]] = []
    for img in state.parsed.edited_images if state.parsed else []:
        rows.append(
            {
                "turn_id": state.turn_id,
                "direction": "input",
                "role": img.role,
                "content_index": img.content_index,
                "part_index": img.part_index,
                "mime_type": img.mime_type,
                "sha256": img.sha256,
                "size": len(img.data),
                "width": img.width,
                "height": img.height,
                "signed_sha256": None,
                "manifest_sha256": None,
            }
        )
    for item in state.signed if outputs else []:
        chunk, candidate, part = item.position
        rows.append(
            {
                "turn_id": state.turn_id,
                "direction": "output",
                "role": "output",
                "content_index": candidate,
                "part_index": part if chunk == 0 else chunk * 1000 + part,
                "mime_type": item.output.mime_type,
                "sha256": item.upstream_sha256,
                "size": len(item.output.data),
                "width": None,
                "height": None,
                "signed_sha256": item.output.sha256,
                "manifest_sha256": item.output.manifest_sha256,
            }
        )
    return rows


def fingerprint_rows(
    state: TurnState, inputs: list[Fingerprint | None], created_ms: int
) -> list[tuple[Any, ...]]:
    """The turn's ``image_fingerprints`` rows: each input's and each signed output's PDQ and
    ISCC Image-Code (an image that could not be decoded has none), placed as in
    ``image_rows``; an output's row names the upstream's bytes (the signed file's pixels)."""
    rows: list[tuple[Any, ...]] = []
    edited = state.parsed.edited_images if state.parsed else []
    for img, found in zip(edited, inputs, strict=False):
        if found is not None:
            rows.append(
                _fingerprint_row(
                    state, found, "input", img.role, img.content_index, img.part_index,
                    img.sha256, created_ms,
                )
            )  # fmt: skip
    for item in state.signed:
        if item.fingerprint is None:
            continue
        chunk, candidate, part = item.position
        rows.append(
            _fingerprint_row(
                state, item.fingerprint, "output", "output", candidate,
                part if chunk == 0 else chunk * 1000 + part, item.upstream_sha256, created_ms,
            )
        )  # fmt: skip
    return rows


def _fingerprint_row(
    state: TurnState,
    found: Fingerprint,
    direction: str,
    role: str,
    content_index: int,
    part_index: int,
    sha256: str,
    created_ms: int,
) -> tuple[Any, ...]:
    return fingerprint_row(
        turn_id=state.turn_id,
        tenant=state.principal.tenant,
        direction=direction,
        role=role,
        content_index=content_index,
        part_index=part_index,
        sha256=sha256,
        pdq=found.pdq,
        pdq_quality=found.pdq_quality,
        iscc=found.iscc,
        created_ms=created_ms,
    )
