"""The C2PA manifest definition of one released image: actions, ingredients, Custody's assertion.

What goes in (and what deliberately does not): the prompt only as a salted commitment unless
policy disclosed it, masks only as commitments, no thumbnails unless policy asks (they would embed
the user's original and mask in the published file). The generator, the ``softwareAgent`` and the
SynthID note follow from the upstream's identity (``governance.upstream.identity``), never from a
default: Google and Google's SynthID statement only when the endpoint and the ``modelVersion`` are
Google's; the emulator says it is the emulator; any other upstream is named by its host, with no
watermark claim.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from governance.provenance.fingerprint import ISCC_ALG
from governance.provenance.types import ASSERTION_LABEL, ProvenanceContext

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
EDITED_SOURCE = IPTC + "compositeWithTrainedAlgorithmicMedia"
CREATED_SOURCE = IPTC + "trainedAlgorithmicMedia"
TRAINING_MINING_ENTRIES = (
    "cawg.ai_generative_training",
    "cawg.ai_inference",
    "cawg.ai_training",
    "cawg.data_mining",
)
TRAINING_MINING_USES = ("allowed", "notAllowed", "constrained")
GEMINI_SYNTHID = (
    "Google states that images from this model carry a SynthID watermark;"
    " not independently verified"
)
EMULATOR_SYNTHID = (
    "This image was produced by the Custody emulator, not by Google Gemini;"
    " it carries no SynthID watermark"
)
EMULATOR_GENERATOR = "custody-emulator (NOT Google Gemini)"
EMULATOR_AGENT = "custody-emulator"
GOOGLE_GENERATOR = "google-gemini"


def unknown_synthid(host: str) -> str:
    return (
        f"not stated: the upstream {host} is not Google's endpoint;"
        " Custody makes no watermark claim"
    )


def generator(ctx: ProvenanceContext) -> str:
    """Who made the pixels, as the manifest names it."""
    if ctx.upstream.is_google:
        return GOOGLE_GENERATOR
    if ctx.upstream.is_emulator:
        return EMULATOR_GENERATOR
    return f"unknown upstream at {ctx.upstream.host} (not Google's endpoint)"


def software_agent(ctx: ProvenanceContext) -> dict[str, str]:
    """The ``softwareAgent`` of the actions: the model only when Google answered."""
    if ctx.upstream.is_google:
        return {"name": ctx.model, "version": ctx.model_version}
    if ctx.upstream.is_emulator:
        return {"name": EMULATOR_AGENT, "version": ctx.model_version}
    return {"name": f"model served by {ctx.upstream.host}", "version": ctx.model_version}


def synthid_note(ctx: ProvenanceContext) -> dict[str, Any]:
    """What the provider states about invisible watermarking, and that Custody did not check it."""
    if ctx.upstream.is_google:
        return {"statement": GEMINI_SYNTHID, "provider": "Google", "verified": False}
    if ctx.upstream.is_emulator:
        return {"statement": EMULATOR_SYNTHID, "watermark": False, "verified": False}
    return {"statement": unknown_synthid(ctx.upstream.host), "verified": False}


def custody_assertion(
    ctx: ProvenanceContext, *, upstream_credentials: bool, upstream_credentials_kind: str
) -> dict[str, Any]:
    """The ``com.custody.turn`` assertion: who, under which policy, with which approvals.

    ``upstream_credentials`` is true only for the provider's own credentials on its output;
    ``upstream_credentials_kind`` says what the output carried: ``none``, ``provider``,
    ``custody`` (an earlier Custody output, verified as ours) or ``input`` (an input's, echoed).
    """
    prompt: dict[str, Any] = {"commitment": ctx.prompt_commitment}
    if ctx.prompt_text is not None:
        prompt["text"] = ctx.prompt_text  # disclosed because policy said so
        prompt["disclosed"] = True
    body: dict[str, Any] = {
        "turn_id": ctx.turn_id,
        "tenant": ctx.tenant,
        "actor": ctx.actor,
        "model": ctx.model,
        "model_version": ctx.model_version,
        "generator": generator(ctx),
        "emulator": ctx.upstream.is_emulator,
        "upstream": ctx.upstream.to_dict(),
        "prompt": prompt,
        "masks": list(ctx.mask_commitments),
        "policy": ctx.policy,
        "approvals": [
            {
                "reviewer": a.reviewer,
                "identity": a.identity,
                "group": a.group,
                "decision": "approve",
                "decision_id": a.decision_id,
                "time_ms": a.time_ms,
                "task": a.task,
                "stage": a.stage,
                "turn": a.turn,
                "shown": a.shown,
                "shown_digest": a.shown_digest,
                "ledger_index": a.ledger_index,
            }
            for a in ctx.approvals
        ],
        "synthid": synthid_note(ctx),
        "upstream_credentials": upstream_credentials,
        "upstream_credentials_kind": upstream_credentials_kind,
        "ledger": ctx.ledger_ref,
        "gateway_version": ctx.gateway_version,
    }
    if ctx.lineage is not None:
        body["session"] = ctx.lineage
    return body


SOFT_BINDING_LABEL = "c2pa.soft-binding"


def soft_binding_assertion(iscc: str) -> dict[str, Any]:
    """The ``c2pa.soft-binding`` assertion (C2PA 2.x, soft-binding-map) carrying the image's
    ISCC Image-Code: ``alg`` from the C2PA soft-binding algorithm list, one block over the whole
    image (an empty scope), the code as its value, and the required ``pad``."""
    return {
        "label": SOFT_BINDING_LABEL,
        "data": {
            "alg": ISCC_ALG,
            "name": "ISCC Image-Code (ISO 24138) of the whole image",
            "blocks": [{"scope": {}, "value": iscc}],
            "pad": [],
        },
    }


def signing_time() -> str:
    """Now, as the ``when`` of the model's action: ISO 8601 UTC to the second. SB 942's latent
    disclosure names the time of creation or alteration; without a timestamp authority this is
    the only time the file itself states."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _actions(ctx: ProvenanceContext, parent_label: str | None) -> list[dict[str, Any]]:
    agent = software_agent(ctx)
    when = signing_time()
    if parent_label is None:
        return [
            {
                "action": "c2pa.created",
                "digitalSourceType": CREATED_SOURCE,
                "softwareAgent": agent,
                "when": when,
            }
        ]
    if ctx.lineage is not None and ctx.lineage.get("kind") == "rollback":
        # A rollback re-signs an earlier version unchanged: it was opened, not edited.
        return [{"action": "c2pa.opened", "parameters": {"ingredientIds": [parent_label]}}]
    edit = any(i.role == "parent" for i in ctx.inputs)
    opened: dict[str, Any] = {
        "action": "c2pa.opened",
        "parameters": {"ingredientIds": [parent_label]},
    }
    if not edit:
        # Generation from text whose output already carried credentials (the provider's, or an
        # earlier Custody output echoed back): that output is opened (C2PA allows no c2pa.created
        # after it); its source is still the model.
        opened.update(digitalSourceType=CREATED_SOURCE, softwareAgent=agent, when=when)
        return [opened]
    return [
        opened,
        {
            "action": "c2pa.edited",
            "digitalSourceType": EDITED_SOURCE,
            "softwareAgent": agent,
            "when": when,
        },
    ]


def manifest_definition(
    ctx: ProvenanceContext,
    mime_type: str,
    *,
    ingredients: list[dict[str, Any]],
    parent_label: str | None,
    upstream_credentials: bool,
    upstream_credentials_kind: str,
    soft_binding: str | None = None,
) -> dict[str, Any]:
    """The manifest JSON for c2pa's Builder.

    ``ingredients`` are described here (inputs without credentials: title, format, relationship,
    label — no pixels, no hash); ingredients with credentials are added from their bytes by the
    signer. ``parent_label`` names the parentOf ingredient, None for generation from text.
    ``soft_binding`` (the image's ISCC Image-Code) adds the ``c2pa.soft-binding`` assertion.
    """
    use = ctx.training_mining if ctx.training_mining in TRAINING_MINING_USES else "notAllowed"
    definition: dict[str, Any] = {
        "claim_generator_info": [{"name": "Custody", "version": ctx.gateway_version}],
        "title": f"custody-{ctx.turn_id}",
        "format": mime_type,
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": _actions(ctx, parent_label)}},
            {
                "label": ASSERTION_LABEL,
                "data": custody_assertion(
                    ctx,
                    upstream_credentials=upstream_credentials,
                    upstream_credentials_kind=upstream_credentials_kind,
                ),
                "created": True,
            },
            {
                "label": "cawg.training-mining",
                "data": {"entries": {name: {"use": use} for name in TRAINING_MINING_ENTRIES}},
            },
        ],
    }
    if soft_binding is not None:
        definition["assertions"].append(soft_binding_assertion(soft_binding))
    if ingredients:
        definition["ingredients"] = ingredients
    return definition
