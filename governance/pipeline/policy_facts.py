"""Turn a parsed request (and later the response) into the facts the policy decides on."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from PIL import Image

from governance.auth.principal import Principal
from governance.pipeline.parse import ParsedRequest
from governance.pipeline.response import ResponseSummary
from governance.policy.decision import ImageFacts, RequestFacts, ResponseFacts
from governance.provenance.verify import may_carry_manifest

if TYPE_CHECKING:
    from governance.pipeline.turn import TurnRequest


def carries_content_credentials(data: bytes) -> bool:
    """Whether the image has an embedded C2PA manifest store: the same structural check the
    signer uses (``provenance.verify.may_carry_manifest``), so policy and provenance agree.

    A signal for policy only; provenance validates the manifest for real when it signs.
    """
    return may_carry_manifest(data)


def parse_labels(header: str | None) -> dict[str, str]:
    """``x-custody-labels: asset=production, consent=obtained`` → a dict (bad pairs are ignored)."""
    labels: dict[str, str] = {}
    for pair in (header or "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            labels[key.strip().lower()] = value.strip()
    return labels


def request_facts(
    principal: Principal, request: TurnRequest, parsed: ParsedRequest
) -> RequestFacts:
    """The policy's view of the request: who, which model, what prompt, which images."""
    contents = parsed.document.get("contents") or []
    user_turns = sum(1 for c in contents if isinstance(c, dict) and c.get("role", "user") == "user")
    return RequestFacts(
        tenant=principal.tenant,
        actor=principal.actor,
        roles=principal.roles,
        model=request.model,
        prompt=parsed.prompt,
        images=tuple(
            ImageFacts(
                role=img.role if img.role != "history" else "reference",
                mime_type=img.mime_type,
                size=len(img.data),
                width=img.width,
                height=img.height,
                sha256=img.sha256,
                has_content_credentials=carries_content_credentials(img.data),
            )
            for img in parsed.edited_images
        ),
        session_id=request.headers.get("x-custody-session"),
        session_turn_count=max(user_turns - 1, 0),
        lineage=(),
        labels=parse_labels(request.headers.get("x-custody-labels")),
    )


def _size_of(data: bytes) -> tuple[int, int]:
    """Width and height from the image header (no pixel is decoded); (0, 0) if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:
        return (0, 0)


def response_facts(summary: ResponseSummary) -> ResponseFacts:
    """The policy's view of the upstream's answer."""
    return ResponseFacts(
        model_version=summary.model_version or "",
        finish_reasons=tuple(summary.finish_reasons),
        block_reason=summary.block_reason,
        text=summary.text,
        output_count=len(summary.images),
        output_sizes=tuple(_size_of(img.data) for img in summary.images),
    )
