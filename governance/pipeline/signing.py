"""Sign every output image of a turn with C2PA Content Credentials, in parallel worker threads.

What a manifest says about the generator comes from the facts of this turn: the upstream's
endpoint, the configured emulator flag and the ``modelVersion`` the upstream answered with
(``governance.upstream.identity``) — never from a default.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from governance import __version__
from governance.api.errors import GeminiError
from governance.auth.principal import Principal
from governance.pipeline.parse import ParsedRequest
from governance.pipeline.response import OutputImage, ResponseSummary
from governance.provenance.types import InputImage as ProvenanceInput
from governance.provenance.types import ProvenanceContext, ProvenanceError, SignedOutput
from governance.upstream.identity import identify_upstream

if TYPE_CHECKING:
    from governance.pipeline.turn import TurnRequest
    from governance.policy.decision import Decision
    from governance.services import Services


@dataclass(frozen=True)
class SignedItem:
    """One signed output and where it goes back into the response."""

    position: tuple[int, int, int]  # (stream chunk, candidate, part)
    upstream_sha256: str
    output: SignedOutput

    def ledger_body(self) -> dict[str, Any]:
        """The ``output.signed`` event: published hashes (the file is public once released)."""
        chunk, candidate, part = self.position
        return {
            "chunk": chunk,
            "candidate": candidate,
            "part": part,
            "mime_type": self.output.mime_type,
            "upstream_sha256": self.upstream_sha256,
            "signed_sha256": self.output.sha256,
            "manifest_sha256": self.output.manifest_sha256,
            "upstream_had_credentials": self.output.upstream_had_credentials,
            "upstream_credentials": self.output.upstream_credentials,
        }


def _context(
    s: Services,
    turn_id: str,
    principal: Principal,
    request: TurnRequest,
    parsed: ParsedRequest,
    summary: ResponseSummary,
    decision: Decision,
    leaf_index: int | None,
    prompt_commitment: str | None,
    mask_commitments: list[str],
) -> ProvenanceContext:
    inputs = [
        ProvenanceInput(
            data=img.data,
            mime_type=img.mime_type,
            sha256=img.sha256,
            role=img.role,  # type: ignore[arg-type]
            title=f"input {n + 1} ({img.mime_type})",
        )
        for n, img in enumerate(parsed.edited_images)
    ]
    disclose = bool(decision.obligations.get("disclose_prompt"))
    upstream = identify_upstream(
        s.upstream.base_url,
        is_emulator=s.upstream.is_emulator,
        model_version=summary.model_version,
    )
    return ProvenanceContext(
        turn_id=turn_id,
        tenant=principal.tenant,
        actor=principal.actor,
        model=request.model,
        model_version=summary.model_version or request.model,
        is_emulator=s.upstream.is_emulator,
        upstream=upstream,
        inputs=inputs,
        prompt_commitment=prompt_commitment,
        prompt_text=parsed.prompt if disclose else None,
        mask_commitments=mask_commitments,
        policy={
            "bundle_revision": decision.bundle_revision,
            "outcome": decision.outcome,
            "reasons": list(decision.reasons),
        },
        approvals=[],
        ledger_ref={
            "log_origin": s.settings.log_origin,
            "turn_id": turn_id,
            "leaf_index": leaf_index,
        },
        gateway_version=__version__,
        training_mining=s.settings.training_mining,
        thumbnails=bool(decision.obligations.get("thumbnails", False)),
    )


async def sign_outputs(
    s: Services,
    turn_id: str,
    principal: Principal,
    request: TurnRequest,
    parsed: ParsedRequest,
    summary: ResponseSummary,
    decision: Decision,
    leaf_index: int | None,
    prompt_commitment: str | None,
    mask_commitments: list[str],
) -> list[SignedItem]:
    """Sign each output image the response walk found (never re-encoded); a file c2pa cannot
    sign fails the turn with a 502 naming the upstream, so no image goes out unsigned."""
    if not summary.images:
        return []
    ctx = _context(
        s,
        turn_id,
        principal,
        request,
        parsed,
        summary,
        decision,
        leaf_index,
        prompt_commitment,
        mask_commitments,
    )

    def sign(img: OutputImage) -> SignedItem:  # in a worker thread: hashing included
        position = (img.chunk, img.candidate, img.part)
        try:
            out = s.signer.sign_output(img.data, img.mime_type, ctx)
        except ProvenanceError as exc:
            # The walk already read the image's header; c2pa failing on its structure is the
            # upstream's fault, and nothing unsigned may go out instead.
            raise GeminiError(
                502,
                f"The upstream's {img.mime_type} image at candidates[{img.candidate}].content"
                f".parts[{img.part}] could not be signed ({exc}); nothing was released.",
                reason="UPSTREAM_MALFORMED",
            ) from exc
        return SignedItem(position, hashlib.sha256(img.data).hexdigest(), out)

    return list(await asyncio.gather(*(s.run_blocking(sign, img) for img in summary.images)))
