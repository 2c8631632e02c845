"""Read Gemini responses (safety outcome, usage, images) and swap each image for its signed file.

Only ``inlineData.data`` of output images changes; every other field, known or not, and every
``thoughtSignature`` reaches the caller exactly as the upstream sent it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pybase64

from governance.pipeline.parse import decode_base64


@dataclass(frozen=True)
class OutputImage:
    """One image the model returned: where it sits in the response and its bytes."""

    chunk: int  # stream event index (0 for a unary response)
    candidate: int
    part: int
    mime_type: str
    data: bytes


@dataclass
class ResponseSummary:
    """What the ledger and policy need to know about a response."""

    model_version: str | None = None
    response_id: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    block_reason: str | None = None
    usage: dict[str, Any] | None = None
    text: str = ""
    images: list[OutputImage] = field(default_factory=list)

    @property
    def safety_outcome(self) -> str:
        """``blocked`` (prompt), a finish reason naming an image-safety stop, or ``ok``."""
        if self.block_reason:
            return "blocked"
        for reason in self.finish_reasons:
            if reason not in ("STOP", "MAX_TOKENS", "FINISH_REASON_UNSPECIFIED"):
                return reason.lower()
        return "ok"


def _parts(candidate: dict[str, Any]) -> list[Any]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return parts if isinstance(parts, list) else []


def _inline(part: Any) -> dict[str, Any] | None:
    if not isinstance(part, dict):
        return None
    blob = part.get("inlineData", part.get("inline_data"))
    return blob if isinstance(blob, dict) else None


def summarise(documents: list[dict[str, Any]]) -> ResponseSummary:
    """Summarise one unary response (one document) or every chunk of a stream, in order."""
    summary = ResponseSummary()
    texts: list[str] = []
    for chunk, doc in enumerate(documents):
        summary.model_version = doc.get("modelVersion") or summary.model_version
        summary.response_id = doc.get("responseId") or summary.response_id
        feedback = doc.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            summary.block_reason = str(feedback["blockReason"])
        if isinstance(doc.get("usageMetadata"), dict):
            summary.usage = doc["usageMetadata"]
        candidates = doc.get("candidates")
        for ci, cand in enumerate(candidates if isinstance(candidates, list) else []):
            if not isinstance(cand, dict):
                continue
            if cand.get("finishReason"):
                summary.finish_reasons.append(str(cand["finishReason"]))
            for pi, part in enumerate(_parts(cand)):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    if not part.get("thought"):
                        texts.append(part["text"])
                    continue
                blob = _inline(part)
                if blob is None:
                    continue
                mime = str(blob.get("mimeType", blob.get("mime_type", ""))).lower()
                if not mime.startswith("image/"):
                    continue
                data = decode_base64(blob.get("data", ""), f"upstream candidates[{ci}].parts[{pi}]")
                summary.images.append(OutputImage(chunk, ci, pi, mime, data))
    summary.text = "".join(texts)
    return summary


def replace_images(
    documents: list[dict[str, Any]], signed: dict[tuple[int, int, int], bytes]
) -> None:
    """Put each signed file in place of the upstream image at (chunk, candidate, part), in place."""
    for (chunk, ci, pi), data in signed.items():
        part = documents[chunk]["candidates"][ci]["content"]["parts"][pi]
        blob = _inline(part)
        assert blob is not None, "replace_images: the part summarised as an image has no data"
        blob["data"] = pybase64.b64encode(data).decode("ascii")
