"""Stage 1, receive: parse the request as the upstream will read it, and describe it for the
ledger (``turn.received``) as commitments and plain facts.

Parsing is byte-heavy (base64 of every image, header sniffing, hashing): ``parse`` is a plain
function the orchestrator runs off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from governance.ledger_vocabulary import TurnReceived
from governance.pipeline.parse import InputLimits, ParsedRequest, parse_request
from governance.pipeline.turn_types import StoredRequest, TurnRequest
from storage.blobs import Commitment


def request_content(
    parsed: ParsedRequest, body_sha256: str | None = None
) -> list[bytes | tuple[bytes, str]]:
    """What a turn commits to on receipt, in this order: the request as it arrived, its prompt,
    every image the turn works on and every non-image input — the last two with the SHA-256
    parsing computed, the body with ``body_sha256`` when it was hashed beside the parse, so
    nothing is hashed twice."""
    return [
        parsed.body if body_sha256 is None else (parsed.body, body_sha256),
        parsed.prompt.encode(),
        *((i.data, i.sha256) for i in parsed.edited_images),
        *((d.data, d.sha256) for d in parsed.documents),
    ]


def stored_request(parsed: ParsedRequest, made: Sequence[Commitment]) -> StoredRequest:
    """The commitments to ``request_content`` with the digests the ``turns`` index keeps."""
    request_c, prompt_c, *content_cs = made
    edited = parsed.edited_images
    image_cs = [c.commitment for c in content_cs[: len(edited)]]
    return StoredRequest(
        request_commitment=request_c.commitment,
        request_sha256=request_c.digest,
        prompt_commitment=prompt_c.commitment if parsed.prompt else None,
        prompt_sha256=prompt_c.digest,
        image_commitments=image_cs,
        mask_commitments=[c for img, c in zip(edited, image_cs, strict=True) if img.role == "mask"],
        document_commitments=[c.commitment for c in content_cs[len(edited) :]],
    )


class Receiver:
    """Parses turns under each tenant's input limits; names the process in ``turn.received``."""

    def __init__(
        self,
        *,
        tenant_settings: Callable[[str], dict[str, Any]],
        max_image_pixels: int,
        process: dict[str, Any],
    ) -> None:
        self._tenant_settings = tenant_settings
        self._max_image_pixels = max_image_pixels
        self._process = process

    def parse(self, request: TurnRequest, tenant: str) -> ParsedRequest:
        """Parse and check ``request``'s body; raises ``TurnError`` (400) on bad input."""
        limits = InputLimits.from_tenant(
            self._tenant_settings(tenant), self._tenant_settings("default")
        )
        return parse_request(request.body, max_pixels=self._max_image_pixels, limits=limits)

    def received_body(
        self, request: TurnRequest, parsed: ParsedRequest, stored: StoredRequest
    ) -> TurnReceived:
        """The ``turn.received`` body: what came in, as commitments and plain facts, and the
        process running the turn (for crash recovery)."""
        images = [
            {
                "role": img.role,
                "content": img.content_index,
                "part": img.part_index,
                "mime_type": img.mime_type,
                "bytes": len(img.data),
                "width": img.width,
                "height": img.height,
                "commitment": commitment,
            }
            for img, commitment in zip(parsed.edited_images, stored.image_commitments, strict=True)
        ]
        documents = [
            {
                "content": d.content_index,
                "part": d.part_index,
                "mime_type": d.mime_type,
                "declared_mime_type": d.declared_mime_type,
                "bytes": len(d.data),
                "history": d.history,
                "commitment": commitment,
            }
            for d, commitment in zip(parsed.documents, stored.document_commitments, strict=True)
        ]
        return {
            "api_version": request.api_version,
            "model": request.model,
            "method": request.method,
            "stream": request.stream,
            "request": stored.request_commitment,
            "request_bytes": len(request.body),
            "prompt": stored.prompt_commitment,
            "prompt_chars": len(parsed.prompt),
            "images": images,
            "history_images": sum(1 for i in parsed.images if i.role == "history"),
            "file_uris": len(parsed.file_uris),
            "documents": documents,
            "process": self._process,
        }
