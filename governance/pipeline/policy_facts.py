"""Turn a parsed request (and later the response) into the facts the policy decides on.

The request facts carry everything the upstream will act on — every piece of text with the field
it sits in, every image and non-image input, file references, tools and generation config — so
that policy decides on what the model sees, not on the last user turn alone.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from PIL import Image

from governance.auth.principal import Principal
from governance.pipeline.parse import ParsedRequest
from governance.pipeline.response import ResponseSummary
from governance.policy.decision import (
    DocumentFacts,
    FileFacts,
    ImageFacts,
    RequestFacts,
    ResponseFacts,
)
from governance.provenance.credentials import carries_content_credentials

# generationConfig reaches the policy as given unless it is larger than this (then: its keys).
MAX_CONFIG_BYTES = 4096

if TYPE_CHECKING:
    from governance.pipeline.turn_types import TurnRequest


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
        texts=tuple((t.field, t.text) for t in parsed.texts),
        documents=tuple(
            DocumentFacts(
                mime_type=d.mime_type,
                declared_mime_type=d.declared_mime_type,
                size=len(d.data),
                sha256=d.sha256,
                history=d.history,
            )
            for d in parsed.documents
        ),
        files=tuple(_file_facts(f.uri, f.mime_type) for f in parsed.files),
        shape=request_shape(parsed),
    )


def _file_facts(uri: str, mime_type: str | None) -> FileFacts:
    """A file reference as policy sees it: scheme, host, and the URI without its query string
    or fragment (a signed URL's token is a credential, not a fact), at most 512 characters."""
    try:
        split = urlsplit(uri)
        scheme, host = split.scheme.lower()[:32], (split.hostname or "")[:255]
        bare = urlunsplit((split.scheme, split.netloc.rpartition("@")[2], split.path, "", ""))
    except ValueError:
        scheme, host, bare = "", "", ""
    return FileFacts(uri=bare[:512], scheme=scheme, host=host, mime_type=mime_type)


def request_shape(parsed: ParsedRequest) -> dict[str, Any]:
    """What else the upstream acts on, as plain facts: no text, only kinds and counts."""
    chars: dict[str, int] = {}
    parts: dict[str, int] = {}
    for piece in parsed.texts:
        chars[piece.field] = chars.get(piece.field, 0) + len(piece.text)
        parts[piece.field] = parts.get(piece.field, 0) + 1
    config: Any = parsed.generation_config
    try:
        fits = len(orjson.dumps(config)) <= MAX_CONFIG_BYTES
    except TypeError:  # nested deeper than any real config (orjson's recursion limit)
        fits = False
    if not fits:
        config = {"keys": sorted(str(k)[:64] for k in config)[:64], "truncated": True}
    return {
        "system_instruction": parsed.system_instruction,
        "history_turns": parsed.history_turns,
        "thought_parts": parsed.thought_parts,
        "text_chars": chars,
        "text_parts": parts,
        "structured_parts": dict(parsed.structured_parts),
        "tools": sorted(set(parsed.tools)),
        "tool_config": parsed.tool_config,
        "generation_config": config,
        "cached_content": parsed.cached_content,
        "safety_settings": list(parsed.safety_settings),
    }


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
