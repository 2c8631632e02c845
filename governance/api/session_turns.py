"""Native-API turns on session versions: one target, a linked edit on several, a rollback.

Each target is its own pipeline turn — policy, review gates, upstream, signing and ledger exactly
as on the Gemini routes — built as the Gemini request the upstream will read: the instruction,
the target image, then (when given) the mask as an extra image part after a text part naming it,
then the reference image. A linked edit fans its targets out with bounded concurrency under one
intent id; a target that fails leaves the others released, and its failure is recorded (its
``turn.failed`` and ``lineage.recorded``); sending that target again with the same intent
completes the set. A rollback runs the pipeline with no upstream call: its output is the earlier
version, re-signed.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any

import orjson

from governance.auth.principal import Principal
from governance.pipeline.errors import TurnError
from governance.pipeline.turn import TurnPipeline
from governance.pipeline.turn_types import TurnRequest
from governance.sessions.lineage import Provenance, SessionHint

MASK_TEXT = "Mask for the image above: edit only where this mask is white."
REFERENCE_TEXT = "Reference image for consistency with the edit above:"


@dataclass(frozen=True)
class VersionBytes:
    """A version as a turn sends it: its ids, bytes and the provenance of its image."""

    version_id: str
    image_id: str
    data: bytes
    mime_type: str
    provenance: Provenance


@dataclass(frozen=True)
class TargetSpec:
    """One target of a linked edit: the version, its mask (PNG bytes) if any."""

    target: VersionBytes
    mask: bytes | None = None


def _inline(mime_type: str, data: bytes) -> dict[str, Any]:
    return {"inlineData": {"mimeType": mime_type, "data": base64.b64encode(data).decode()}}


def gemini_body(
    instruction: str,
    target: VersionBytes,
    mask: bytes | None,
    reference: VersionBytes | None,
) -> bytes:
    """The Gemini request of one target (parts: instruction, target, [mask text, mask],
    [reference text, reference])."""
    parts: list[dict[str, Any]] = [{"text": instruction}, _inline(target.mime_type, target.data)]
    if mask is not None:
        parts += [{"text": MASK_TEXT}, _inline("image/png", mask)]
    if reference is not None:
        parts += [{"text": REFERENCE_TEXT}, _inline(reference.mime_type, reference.data)]
    return orjson.dumps({"contents": [{"role": "user", "parts": parts}]})


def _request(model: str, body: bytes, hint: SessionHint) -> TurnRequest:
    return TurnRequest(
        api_version="v1beta",
        model=model,
        method="generateContent",
        body=body,
        headers={},
        params={},
        hint=hint,
    )


async def run_target(
    pipeline: TurnPipeline,
    principal: Principal,
    *,
    session_id: str,
    model: str,
    instruction: str,
    spec: TargetSpec,
    reference: VersionBytes | None,
    intent_id: str | None,
    kind: str = "edit",
) -> dict[str, Any]:
    """Run one target's turn; its result, released or failed (never raised)."""
    target = spec.target
    provenance = [target.provenance, *([reference.provenance] if reference else [])]
    hint = SessionHint(
        session_id=session_id,
        image_id=target.image_id,
        target_version=target.version_id,
        kind=kind,
        intent_id=intent_id,
        references=(reference.version_id,) if reference else (),
        provenance=tuple(provenance),
    )
    body = gemini_body(instruction, target, spec.mask, reference)
    result: dict[str, Any] = {"target": target.version_id, "masked": spec.mask is not None}
    try:
        outcome = await pipeline.run(_request(model, body, hint), principal)
    except TurnError as err:
        result.update(
            status="failed", turn=err.turn_id, code=err.code, reason=err.reason, error=err.message
        )
        return result
    lineage = outcome.lineage
    outputs = lineage.outputs if lineage is not None else []
    result.update(status="released", turn=outcome.turn_id, versions=[o.version_id for o in outputs])
    return result


async def run_linked_edit(
    pipeline: TurnPipeline,
    principal: Principal,
    *,
    session_id: str,
    model: str,
    instruction: str,
    specs: list[TargetSpec],
    reference: VersionBytes | None,
    intent_id: str,
    concurrency: int,
) -> list[dict[str, Any]]:
    """Every target's turn, at most ``concurrency`` upstream calls at once; results in order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(spec: TargetSpec) -> dict[str, Any]:
        async with gate:
            return await run_target(
                pipeline,
                principal,
                session_id=session_id,
                model=model,
                instruction=instruction,
                spec=spec,
                reference=reference,
                intent_id=intent_id,
            )

    return list(await asyncio.gather(*(one(s) for s in specs)))
