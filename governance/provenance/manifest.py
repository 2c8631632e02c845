"""The C2PA manifest definition of one released image: actions, ingredients, Custody's assertion.

What goes in (and what deliberately does not): the prompt only as a salted commitment unless
policy disclosed it, masks only as commitments, no thumbnails unless policy asks (they would embed
the user's original and mask in the published file), and an explicit emulator label whenever the
image did not come from Google.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from governance.provenance.signer import ProvenanceContext

ASSERTION_LABEL = "com.custody.turn"
IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
EDITED_SOURCE = IPTC + "compositeWithTrainedAlgorithmicMedia"
CREATED_SOURCE = IPTC + "trainedAlgorithmicMedia"
TRAINING_MINING_ENTRIES = (
    "cawg.ai_generative_training",
    "cawg.ai_inference",
    "cawg.ai_training",
    "cawg.data_mining",
)


def synthid_note(ctx: ProvenanceContext) -> dict[str, Any]:
    """What the provider states about invisible watermarking, and that Custody did not check it."""
    if ctx.is_emulator:
        return {
            "provider_statement": "none: this image was produced by the Custody Gemini emulator,"
            " not by Google Gemini, and carries no SynthID watermark",
            "verified": False,
        }
    return {
        "provider_statement": f"Google states that images generated or edited by {ctx.model}"
        " carry an invisible SynthID watermark",
        "verified": False,
        "note": "not independently verified: no SynthID detector result is configured",
    }


def custody_assertion(ctx: ProvenanceContext, *, upstream_credentials: bool) -> dict[str, Any]:
    prompt: dict[str, Any] = {"commitment": ctx.prompt_commitment}
    if ctx.prompt_text is not None:
        prompt["text"] = ctx.prompt_text  # disclosed because policy said so
    return {
        "turn_id": ctx.turn_id,
        "tenant": ctx.tenant,
        "actor": ctx.actor,
        "model": ctx.model,
        "model_version": ctx.model_version,
        "generator": "custody-emulator (NOT Google Gemini)" if ctx.is_emulator else "google-gemini",
        "emulator": ctx.is_emulator,
        "prompt": prompt,
        "masks": list(ctx.mask_commitments),
        "policy": ctx.policy,
        "approvals": [
            {
                "reviewer": a.reviewer,
                "role": a.role,
                "decision": a.decision,
                "time_ms": a.time_ms,
                "comment": a.comment_commitment,
            }
            for a in ctx.approvals
        ],
        "synthid": synthid_note(ctx),
        "upstream_credentials": upstream_credentials,
        "ledger": ctx.ledger_ref,
        "gateway_version": ctx.gateway_version,
    }


def manifest_definition(
    ctx: ProvenanceContext, mime_type: str, *, parent_label: str | None, upstream_credentials: bool
) -> dict[str, Any]:
    """The manifest JSON for c2pa's Builder. ``parent_label`` names the parentOf ingredient."""
    agent = {"name": ctx.model, "version": ctx.model_version}
    if parent_label is not None:
        actions: list[dict[str, Any]] = [
            {"action": "c2pa.opened", "parameters": {"ingredientIds": [parent_label]}},
            {"action": "c2pa.edited", "digitalSourceType": EDITED_SOURCE, "softwareAgent": agent},
        ]
    else:
        actions = [
            {"action": "c2pa.created", "digitalSourceType": CREATED_SOURCE, "softwareAgent": agent}
        ]
    use = ctx.training_mining or "notAllowed"
    return {
        "claim_generator_info": [{"name": "Custody", "version": ctx.gateway_version}],
        "title": f"custody-{ctx.turn_id}",
        "format": mime_type,
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": actions}},
            {
                "label": ASSERTION_LABEL,
                "data": custody_assertion(ctx, upstream_credentials=upstream_credentials),
                "created": True,
            },
            {
                "label": "cawg.training-mining",
                "data": {"entries": {name: {"use": use} for name in TRAINING_MINING_ENTRIES}},
            },
        ],
    }
