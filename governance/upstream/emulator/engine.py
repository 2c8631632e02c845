"""What the emulated model answers to one parsed request: safety outcome, edits, parts, usage.

Safety triggers (on the last user turn's text, case-insensitive):

- a configured blocked word (whole word) → HTTP 200, ``promptFeedback.blockReason:
  PROHIBITED_CONTENT``, no candidates;
- the phrase "unsafe image" → a candidate with ``finishReason: IMAGE_SAFETY``, no content;
- the phrase "prohibited image" → ``finishReason: IMAGE_PROHIBITED_CONTENT``, no content;
- the phrase "no image please" → ``finishReason: NO_IMAGE`` with only a text part.

Models whose name contains "gemini-3" or "pro-image" answer like Gemini 3: thought parts
(``thought: true``) first, a ``thoughtSignature`` on the first non-thought part and on the image
part, and the signatures of model turns in the history are verified (see ``signatures``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pybase64
from PIL import Image

from governance.upstream.emulator import edits, wire
from governance.upstream.emulator.config import EmulatorConfig
from governance.upstream.emulator.faults import GeminiError, invalid_argument
from governance.upstream.emulator.signatures import is_valid_signature, issue_signature

OUTPUT_IMAGE_TOKENS = {"gemini-3": 1120, "default": 1290}
TRIGGERS = {
    "unsafe image": "IMAGE_SAFETY",
    "prohibited image": "IMAGE_PROHIBITED_CONTENT",
    "no image please": "NO_IMAGE",
}
UNREADABLE = (
    "Unable to process input image. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting"
)


def is_thinking_model(model: str) -> bool:
    """True for models that answer Gemini-3 style (thought parts and signatures)."""
    return "gemini-3" in model or "pro-image" in model


@dataclass
class Answer:
    """The emulated answer: response objects per stream chunk (merged for generateContent)."""

    chunks: list[dict[str, Any]]
    summary: str  # what was done, for the request log
    blocked: bool = False


def check_history_signatures(config: EmulatorConfig, request: wire.GenerateRequest) -> None:
    """Gemini 3 validates the signatures of resent model turns: altered or missing → 400."""
    for found in request.signatures:
        if found.signature is None or not is_valid_signature(
            config.signature_secret, found.signature
        ):
            raise invalid_argument(
                f"Unable to submit request because the thought signature is not valid "
                f"({found.where}.thought_signature). Send every thoughtSignature back exactly "
                f"as it was received."
            )
    if is_thinking_model(request.model) and request.unsigned_model_images:
        raise invalid_argument(
            f"Image part is missing a thought_signature in {request.unsigned_model_images[0]}. "
            f"Send every thoughtSignature back exactly as it was received."
        )


def answer(config: EmulatorConfig, request: wire.GenerateRequest, prompt: str) -> Answer:
    """Run the emulated model on ``prompt`` (the last user text with any fault directive removed).

    CPU-bound (Pillow): call it from a worker thread.
    """
    version = config.model_version(request.model)
    response_id = pybase64.urlsafe_b64encode(request.digest[:15]).decode()
    lowered = prompt.lower()
    for word in config.blocked_words:
        if word and re.search(rf"\b{re.escape(word.lower())}\b", lowered):
            usage = _usage(request, prompt, image_out=False, text_out="", thoughts="")
            blocked = wire.blocked_response("PROHIBITED_CONTENT", usage, version, response_id)
            return Answer([blocked], "blocked: PROHIBITED_CONTENT", blocked=True)
    thinking = is_thinking_model(request.model)
    finish = next((reason for phrase, reason in TRIGGERS.items() if phrase in lowered), "STOP")
    image_bytes, mime, done = (None, "", "") if finish != "STOP" else _make_image(request, prompt)
    text = _describe(finish, done)
    thoughts = _thoughts(request, prompt, done) if thinking else []
    signatures = iter(
        pybase64.b64encode(issue_signature(config.signature_secret, request.digest, n)).decode()
        for n in range(2)
    )
    groups: list[list[dict[str, Any]]] = []
    if thoughts:
        groups.append([{"text": t, "thought": True} for t in thoughts])
    if finish in ("IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT"):
        groups.append([])
    else:
        text_part: dict[str, Any] = {"text": text}
        if thinking:
            text_part["thoughtSignature"] = next(signatures)
        groups.append([text_part])
    if image_bytes is not None:
        image_part: dict[str, Any] = {
            "inlineData": {"mimeType": mime, "data": pybase64.b64encode(image_bytes).decode()}
        }
        if thinking:
            image_part["thoughtSignature"] = next(signatures)
        groups.append([image_part])
    usage = _usage(
        request,
        prompt,
        image_out=image_bytes is not None,
        text_out=text,
        thoughts="".join(thoughts),
    )
    category = "HARM_CATEGORY_SEXUALLY_EXPLICIT" if finish == "IMAGE_SAFETY" else None
    chunks = wire.response_chunks(
        [g for g in groups if g] or [[]],
        finish_reason=finish,
        usage=usage,
        model_version=version,
        response_id=response_id,
        blocked_category=category,
    )
    return Answer(chunks, f"{finish}: {done or text}")


def _make_image(request: wire.GenerateRequest, prompt: str) -> tuple[bytes, str, str]:
    """The output image, its MIME type and a description of what was done."""
    undo = edits.undo_count(prompt)
    if undo is not None:
        return _undo(request, undo)
    steps = edits.plan_edits(prompt)
    sources = request.images or ([request.history_image] if request.history_image else [])
    mask = sources[0].mask if request.images else request.history_mask
    out_mime = (request.output_mime or "image/png").lower()
    if out_mime not in edits.OUTPUT_FORMATS:
        raise invalid_argument(f"Unsupported imageConfig.outputMimeType {request.output_mime!r}")
    try:
        if len(sources) == 1 and not steps and request.output_mime in (None, sources[0].mime_type):
            edits.check_image_header(sources[0].data)
            return sources[0].data, sources[0].mime_type, "nothing (no edit recognised)"
        done: list[str] = []
        base: Image.Image | None = None
        if sources:
            decoded = [edits.open_image(s.data) for s in sources]
            img = base = decoded[0]
            if len(decoded) > 1:
                img, label = edits.combine(decoded, prompt)
                done.append(label)
        else:
            size = edits.generated_size(request.aspect_ratio, request.image_size)
            img = edits.generate(prompt, size)
            done.append(f"generated {size[0]}×{size[1]} image from the prompt")
        mask_image = edits.open_image(mask.data) if mask is not None and base else None
    except edits.UnreadableImage:
        raise GeminiError(400, UNREADABLE) from None
    for step in steps:
        img = edits.apply_step(img, step)
        done.append(step.label)
    if mask_image is not None and base is not None:
        confined = img.size == base.size
        img = edits.apply_mask(img, base, mask_image)
        done.append("confined to the mask" if confined else "mask not applied (size changed)")
    return edits.encode(img, out_mime), out_mime, ", ".join(done)


def _undo(request: wire.GenerateRequest, count: int) -> tuple[bytes, str, str]:
    """Undo the last N changes: the image of N versions earlier in the chat, byte for byte.

    The versions are the chat's images, one per earlier turn (the upload, then each model
    answer); the current one is the last. Asking for more than there are gives the first.
    """
    versions = request.history_versions
    if not versions:
        raise invalid_argument(
            "Nothing to undo: the chat history holds no earlier image. Send the conversation's "
            "earlier turns (a chat resends them) or the image to go back to. (custody emulator)"
        )
    index = max(len(versions) - 1 - count, 0)
    earlier = versions[index]
    back = len(versions) - 1 - index
    note = "" if back == count else f" (only {back} earlier version(s) in the chat)"
    return earlier.data, earlier.mime_type, f"undid {back} change(s): {earlier.where}{note}"


def _describe(finish: str, done: str) -> str:
    if finish == "NO_IMAGE":
        return "I can't create an image for this request, so here is only this text. [emulator]"
    if finish != "STOP":
        return ""
    return f"Applied: {done}. [custody emulator: not Gemini]"


def _thoughts(request: wire.GenerateRequest, prompt: str, done: str) -> list[str]:
    count = len(request.images) or (1 if request.history_image else 0)
    source = f"{count} input image(s)" if count else "no input image"
    return [
        f"**Reading the request**\n\nI have {source} and the instruction “{prompt[:200]}”.",
        f"**Planning the edit**\n\nI will apply: {done or 'no image'}.",
    ]


def _tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4) if text else 0


def _image_tokens(request: wire.GenerateRequest) -> int:
    return 258 * len(request.images) + (258 if request.history_image and not request.images else 0)


def _usage(
    request: wire.GenerateRequest, prompt: str, *, image_out: bool, text_out: str, thoughts: str
) -> dict[str, Any]:
    text_in, image_in = _tokens(prompt), _image_tokens(request)
    prompt_details = [{"modality": "TEXT", "tokenCount": text_in}]
    if image_in:
        prompt_details.append({"modality": "IMAGE", "tokenCount": image_in})
    key = "gemini-3" if is_thinking_model(request.model) else "default"
    image_tokens = OUTPUT_IMAGE_TOKENS[key] if image_out else 0
    cand_details = [{"modality": "TEXT", "tokenCount": _tokens(text_out)}] if text_out else []
    if image_tokens:
        cand_details.append({"modality": "IMAGE", "tokenCount": image_tokens})
    candidates = _tokens(text_out) + image_tokens
    usage: dict[str, Any] = {
        "promptTokenCount": text_in + image_in,
        "candidatesTokenCount": candidates,
        "totalTokenCount": text_in + image_in + candidates + _tokens(thoughts),
        "promptTokensDetails": prompt_details,
    }
    if cand_details:
        usage["candidatesTokensDetails"] = cand_details
    if thoughts:
        usage["thoughtsTokenCount"] = _tokens(thoughts)
    return usage
