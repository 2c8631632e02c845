"""Gemini's REST wire format for image models: parse a generateContent body, build the answer.

Request (camelCase as Gemini documents it; snake_case accepted too, as the SDK and REST clients
send either): ``contents[].role`` / ``contents[].parts[]`` with ``text``, ``thought``,
``thoughtSignature``, ``inlineData{mimeType,data}``; ``generationConfig.imageConfig{aspectRatio,
imageSize, outputMimeType}``. Base64 in either alphabet (standard or URL-safe), padding optional.

Response: ``candidates[0].content{role: "model", parts}``, ``finishReason``, ``index``,
``safetyRatings``; ``promptFeedback{blockReason}`` when blocked; ``usageMetadata``;
``modelVersion``; ``responseId``. Streams split the same parts into chunks: thoughts, then text,
then the image, the last chunk carrying ``finishReason`` and ``usageMetadata``.
"""

from __future__ import annotations

import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson
import pybase64

from governance.upstream.emulator import edits
from governance.upstream.emulator.faults import invalid_argument

HARM_CATEGORIES = (
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
)


@dataclass
class InputImage:
    """One inline image of the request, decoded from base64 (not yet from its image format)."""

    data: bytes
    mime_type: str
    where: str  # e.g. "contents[0].parts[1]", for error messages
    mask: InputImage | None = None  # the mask sent for this image (white = edit, black = keep)


@dataclass
class ModelTurnSignature:
    """A ``thoughtSignature`` found on a part of a model turn of the history."""

    where: str
    signature: bytes | None  # None: the base64 itself was broken


@dataclass
class GenerateRequest:
    """What the emulator needs from one generateContent body."""

    model: str
    prompt: str  # text of the last user turn (thought parts excluded)
    images: list[InputImage]  # inline images of the last user turn, in order
    history_image: InputImage | None  # latest image earlier in the chat: the edit target
    history_versions: list[InputImage] = field(default_factory=list)  # per turn, oldest first
    history_mask: InputImage | None = None  # a mask in the last turn sent for history_image
    signatures: list[ModelTurnSignature] = field(default_factory=list)
    unsigned_model_images: list[str] = field(default_factory=list)  # model-turn images, no sig
    has_model_turns: bool = False
    aspect_ratio: str | None = None
    image_size: str | None = None
    output_mime: str | None = None
    digest: bytes = b""  # identifies the request: seeds signatures, responseId, generation


def decode_base64(value: object, where: str) -> bytes:
    """Standard or URL-safe base64, padding optional, surrounding whitespace ignored; else 400."""
    if not isinstance(value, str):
        raise invalid_argument(f"Invalid value at '{where}' (TYPE_BYTES): expected a string")
    text = value.strip()
    if "\n" in text or "\r" in text or " " in text:
        text = "".join(text.split())
    text += "=" * (-len(text) % 4)
    urlsafe = "-" in text or "_" in text
    try:
        if urlsafe and ("+" in text or "/" in text):
            raise ValueError("both base64 alphabets in one value")
        if urlsafe:
            return pybase64.b64decode(text, altchars=b"-_", validate=True)
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument(
            f"Invalid value at '{where}' (TYPE_BYTES), Base64 decoding failed"
        ) from None


def _get(mapping: dict[str, Any], camel: str, snake: str) -> Any:
    return mapping[camel] if camel in mapping else mapping.get(snake)


def _contents(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        raise invalid_argument("Invalid JSON payload received. Expected an object.")
    contents = body.get("contents")
    if isinstance(contents, dict):
        contents = [contents]
    if not isinstance(contents, list) or not contents:
        raise invalid_argument("* GenerateContentRequest.contents: contents is not specified")
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
            raise invalid_argument(f"* GenerateContentRequest.contents[{i}].parts: must be a list")
        if content.get("role", "user") not in ("user", "model"):
            raise invalid_argument(f"Please use a valid role: user, model. (contents[{i}].role)")
    return contents


def _inline_image(part: dict[str, Any], where: str) -> InputImage | None:
    inline = _get(part, "inlineData", "inline_data")
    if inline is None:
        if _get(part, "fileData", "file_data") is not None:
            raise invalid_argument(f"{where}.fileData: the emulator does not fetch file URIs")
        return None
    if not isinstance(inline, dict):
        raise invalid_argument(f"Invalid value at '{where}.inline_data': expected an object")
    mime = _get(inline, "mimeType", "mime_type") or ""
    data = decode_base64(inline.get("data"), f"{where}.inline_data.data")
    if not str(mime).lower().startswith("image/"):
        return None  # other media are accepted and ignored, as the emulator only edits images
    return InputImage(data, str(mime).lower(), where)


def parse_generate_request(model: str, raw: bytes) -> GenerateRequest:
    """Parse and validate a generateContent body; any problem is a GeminiError 400."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid_argument("Invalid JSON payload received. Unexpected token.") from None
    contents = _contents(body)
    last_user = max(
        (i for i, c in enumerate(contents) if c.get("role", "user") == "user"), default=-1
    )
    if last_user < 0:
        raise invalid_argument("* GenerateContentRequest.contents: no user turn to answer")
    request = GenerateRequest(model=model, prompt="", images=[], history_image=None)
    texts: list[str] = []
    for i, content in enumerate(contents):
        is_model = content.get("role") == "model"
        request.has_model_turns |= is_model
        images: list[InputImage] = []  # this turn's images, masks attached to their targets
        mask_next = False
        for j, part in enumerate(content["parts"]):
            where = f"contents[{i}].parts[{j}]"
            if not isinstance(part, dict):
                raise invalid_argument(f"Invalid value at '{where}': expected an object")
            image = _inline_image(part, where)
            if is_model:
                _collect_signature(request, part, where, image is not None)
            text = part.get("text")
            if i == last_user and isinstance(text, str) and not part.get("thought"):
                texts.append(text)
            if image is not None and mask_next and not is_model:
                if images:
                    images[-1].mask = image
                elif i == last_user:
                    request.history_mask = image
            elif image is not None:
                images.append(image)
            mask_next = isinstance(text, str) and bool(edits.MASK_WORD.search(text))
        if i == last_user:
            request.images = images
        elif images and i < last_user:
            request.history_image = images[-1]
            request.history_versions.append(images[-1])
    request.prompt = "\n".join(texts)
    _read_generation_config(request, body)
    digest = hashlib.sha256(f"{model}\x00{request.prompt}".encode())
    for image in request.images or ([request.history_image] if request.history_image else []):
        digest.update(hashlib.sha256(image.data).digest())
        if image.mask is not None:
            digest.update(hashlib.sha256(image.mask.data).digest())
    if request.history_mask is not None:
        digest.update(hashlib.sha256(request.history_mask.data).digest())
    request.digest = digest.digest()
    return request


def _collect_signature(
    request: GenerateRequest, part: dict[str, Any], where: str, image: bool
) -> None:
    raw = _get(part, "thoughtSignature", "thought_signature")
    if raw is None:
        if image:
            request.unsigned_model_images.append(where)
        return
    try:
        signature: bytes | None = decode_base64(raw, f"{where}.thought_signature")
    except Exception:
        signature = None
    request.signatures.append(ModelTurnSignature(where, signature))


def _read_generation_config(request: GenerateRequest, body: dict[str, Any]) -> None:
    config = _get(body, "generationConfig", "generation_config") or {}
    image_config = _get(config, "imageConfig", "image_config") if isinstance(config, dict) else {}
    if isinstance(image_config, dict):
        request.aspect_ratio = _get(image_config, "aspectRatio", "aspect_ratio")
        request.image_size = _get(image_config, "imageSize", "image_size")
        request.output_mime = _get(image_config, "outputMimeType", "output_mime_type")


# --- building the answer ----------------------------------------------------------------------


def safety_ratings(blocked_category: str | None = None) -> list[dict[str, Any]]:
    """Gemini-style ratings: NEGLIGIBLE everywhere except a blocked category (HIGH, blocked)."""
    return [
        {"category": c, "probability": "HIGH", "blocked": True}
        if c == blocked_category
        else {"category": c, "probability": "NEGLIGIBLE"}
        for c in HARM_CATEGORIES
    ]


def response_chunks(
    parts_in_chunks: list[list[dict[str, Any]]],
    *,
    finish_reason: str,
    usage: dict[str, Any],
    model_version: str,
    response_id: str,
    blocked_category: str | None = None,
) -> list[dict[str, Any]]:
    """One response object per chunk; only the last carries finishReason and usageMetadata."""
    chunks: list[dict[str, Any]] = []
    groups = parts_in_chunks or [[]]
    for n, parts in enumerate(groups):
        candidate: dict[str, Any] = {"index": 0}
        if parts:
            candidate["content"] = {"parts": parts, "role": "model"}
        chunk: dict[str, Any] = {"candidates": [candidate]}
        if n == len(groups) - 1:
            candidate["finishReason"] = finish_reason
            candidate["safetyRatings"] = safety_ratings(blocked_category)
            chunk["usageMetadata"] = usage
        chunk["modelVersion"] = model_version
        chunk["responseId"] = response_id
        chunks.append(chunk)
    return chunks


def merge_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed response: every chunk's parts in one candidate, the last chunk's rest."""
    merged = dict(chunks[-1])
    if "candidates" not in merged:  # a blocked prompt: one chunk, no candidates
        return merged
    parts = [p for c in chunks for p in c["candidates"][0].get("content", {}).get("parts", [])]
    candidate = dict(merged["candidates"][0])
    if parts:
        candidate["content"] = {"parts": parts, "role": "model"}
    merged["candidates"] = [candidate]
    return merged


def blocked_response(
    block_reason: str, usage: dict[str, Any], model_version: str, response_id: str
) -> dict[str, Any]:
    """A prompt blocked before generation: HTTP 200, promptFeedback, no candidates."""
    return {
        "promptFeedback": {"blockReason": block_reason},
        "usageMetadata": usage,
        "modelVersion": model_version,
        "responseId": response_id,
    }


def sse_event(obj: dict[str, Any]) -> bytes:
    """One server-sent event as Gemini frames it: ``data: {json}\\r\\n\\r\\n``."""
    return b"data: " + orjson.dumps(obj) + b"\r\n\r\n"


TOKENS_PER_IMAGE = 258  # Gemini's count for an image up to 384 px a side (one tile)
CHARS_PER_TOKEN = 4  # Gemini's documented rule of thumb for English text


def count_tokens(raw: bytes) -> dict[str, Any]:
    """A ``countTokens`` answer in Gemini's wire format: ``{"totalTokens": N,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}, ...]}``.

    The body is ``{"contents": [...]}`` or ``{"generateContentRequest": {...}}``, as Gemini
    accepts. The count is the emulator's estimate (text: ⌈characters / 4⌉ per part, each inline
    image 258), deterministic so tests can assert it; only Gemini's tokenizer gives real counts.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid_argument("Invalid JSON payload received. Unexpected token.") from None
    if isinstance(body, dict) and not body.get("contents"):
        inner = _get(body, "generateContentRequest", "generate_content_request")
        if isinstance(inner, dict):
            body = inner
    contents = _contents(body)
    system = _get(body, "systemInstruction", "system_instruction")
    if isinstance(system, dict) and isinstance(system.get("parts"), list):
        contents = [system, *contents]
    text = images = 0
    for i, content in enumerate(contents):
        for j, part in enumerate(content["parts"]):
            if not isinstance(part, dict):
                raise invalid_argument(f"Invalid value at 'contents[{i}].parts[{j}]'")
            if isinstance(part.get("text"), str):
                text += -(-len(part["text"]) // CHARS_PER_TOKEN)
            if _inline_image(part, f"contents[{i}].parts[{j}]") is not None:
                images += TOKENS_PER_IMAGE
    details = [{"modality": "TEXT", "tokenCount": text}]
    if images:
        details.append({"modality": "IMAGE", "tokenCount": images})
    return {"totalTokens": text + images, "promptTokensDetails": details}


def models_page(
    names: list[str], resource: Any, page_size: str | None, page_token: str | None
) -> dict[str, Any]:
    """One page of ``models.list``: ``{"models": [...], "nextPageToken": "..."}`` (the token
    only when more follow). ``pageSize`` defaults to 50 and is capped at 1000, as Gemini does."""
    try:
        size = int(page_size) if page_size else 50
        start = int(page_token) if page_token else 0
    except ValueError:
        raise invalid_argument("Invalid pageSize or pageToken.") from None
    if size < 0 or start < 0 or start > len(names):
        raise invalid_argument("Invalid pageSize or pageToken.")
    size = min(size or 50, 1000)
    page: dict[str, Any] = {"models": [resource(n) for n in names[start : start + size]]}
    if start + size < len(names):
        page["nextPageToken"] = str(start + size)
    return page
