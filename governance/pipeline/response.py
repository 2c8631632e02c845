"""Complete mediation of Gemini responses: every part of every candidate is seen, signed or refused.

Contract. ``summarise`` walks every part of every candidate of a unary response (one document)
or of every chunk of a stream (one document per chunk), whatever the part's shape: ``inlineData``
or ``inline_data`` (both in one part is refused), any declared ``mimeType`` or none, an image in
a part that also carries text. Each blob's real type is sniffed from its bytes; only raster types
Custody signs (``SIGNABLE``) become ``OutputImage``s. Anything else that carries data — SVG, HTML,
PDF, unknown bytes, a declared image whose bytes are not one, bad base64, a ``fileData``
reference, inline data outside ``candidates[].content.parts[]`` — and any structure that is not
Gemini's (non-list ``candidates``/``parts``, non-dict candidates, parts or ``content``) sets
``fault``: the turn fails closed with that reason. A fault is the upstream's, never the caller's.

``replace_images`` puts each signed file in place of its upstream image (and corrects a missing or
wrong ``mimeType`` to the sniffed one); ``unsigned_inline_data`` re-walks the outgoing documents
just before release and names any inline data that is not one of the signed files, so a release
with an unsigned image cannot happen even if the walk above had a gap. Every other field, known or
not, and every ``thoughtSignature`` reaches the caller exactly as the upstream sent it.

Why sniff and not trust ``mimeType``: the upstream controls it, and an SVG with a ``<script>`` or
an HTML page labelled ``image/png`` would otherwise be signed (or passed unsigned) and released.
"""

from __future__ import annotations

import binascii
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pybase64
from PIL import Image

# The raster types Custody releases: c2pa-python signs each of them (tests/test_upstream_malformed).
SIGNABLE = ("image/png", "image/jpeg", "image/webp", "image/gif")
_PIL_FORMAT = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}
_INLINE_KEYS = ("inlineData", "inline_data")
_FILE_KEYS = ("fileData", "file_data")
# Upstream-controlled labels are clipped to what the turn index columns hold (the full response
# is committed as it arrived, so nothing is lost).
_LABEL_CHARS = 256
_REASON_CHARS = 64

MALFORMED = "UPSTREAM_MALFORMED"  # not Gemini's structure, bad base64, unreadable image bytes
UNSUPPORTED = "UPSTREAM_OUTPUT_UNSUPPORTED"  # well-formed data that Custody cannot sign


@dataclass(frozen=True)
class UpstreamFault:
    """Why a response cannot be released: a reason code and a sentence for the caller."""

    reason: str
    message: str


@dataclass(frozen=True)
class OutputImage:
    """One image the model returned: where it sits in the response, its real type and bytes."""

    chunk: int  # stream event index (0 for a unary response)
    candidate: int
    part: int
    mime_type: str  # sniffed from the bytes, not the declared one
    data: bytes
    key: str = "inlineData"  # the field it arrived under: inlineData or inline_data
    declared_mime_type: str | None = None


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
    fault: UpstreamFault | None = None
    final_chunk: bool = False  # the last document carries a finishReason or a blockReason

    @property
    def safety_outcome(self) -> str:
        """``blocked`` (prompt), a finish reason naming an image-safety stop, or ``ok``."""
        if self.block_reason:
            return "blocked"
        for reason in self.finish_reasons:
            if reason not in ("STOP", "MAX_TOKENS", "FINISH_REASON_UNSPECIFIED"):
                return reason.lower()
        return "ok"


class _Refused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.fault = UpstreamFault(reason, message)


def _malformed(message: str) -> _Refused:
    return _Refused(MALFORMED, f"The upstream's response is malformed: {message}.")


def sniff(data: bytes) -> str | None:
    """The signable raster type of ``data`` from its magic number, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def describe(data: bytes) -> str:
    """A few words on what non-raster bytes look like, for the refusal message."""
    head = data[:512].lstrip().lower()
    if head.startswith(b"%pdf"):
        return "a PDF document"
    if b"<svg" in head:
        return "an SVG document (vector markup, which can carry scripts)"
    if head.startswith((b"<!doctype html", b"<html")) or b"<script" in head:
        return "an HTML document"
    if head.startswith(b"<?xml") or head.startswith(b"<"):
        return "XML or markup"
    return "bytes that are not a PNG, JPEG, WebP or GIF image"


def _readable(data: bytes, mime_type: str) -> str | None:
    """None when ``data`` is a whole image of ``mime_type``; else what is wrong with it.

    The header is read (no pixel is decoded) and nothing may follow the image's end marker, so a
    polyglot (an image with an HTML page or an archive appended) is not released as an image and
    a truncated file is not signed.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[mime_type]]) as img:
                width, height = img.size
    except Exception as exc:
        return f"cannot be read as {mime_type} ({type(exc).__name__})"
    if width <= 0 or height <= 0:
        return "has no pixels"
    if mime_type == "image/png" and not _png_ends_at_iend(data):
        return "is not one PNG chunk sequence ending at IEND (a polyglot or a truncated file)"
    if mime_type == "image/jpeg" and not data.endswith(b"\xff\xd9"):
        return "has bytes after the JPEG's end-of-image marker (a polyglot)"
    if mime_type == "image/gif" and not data.endswith(b"\x3b"):
        return "has bytes after the GIF's trailer (a polyglot)"
    if mime_type == "image/webp" and int.from_bytes(data[4:8], "little") + 8 != len(data):
        return "is not exactly one RIFF container (a polyglot or a truncated file)"
    return None


def _png_ends_at_iend(data: bytes) -> bool:
    """Walk the PNG's chunks by their lengths: True when IEND is the last byte of ``data``
    (a few hundred steps for a 4 MB file; no CRC, c2pa parses the chunks again when signing)."""
    view = memoryview(data)
    pos, end = 8, len(data)
    while pos + 12 <= end:
        length = int.from_bytes(view[pos : pos + 4], "big")
        kind = bytes(view[pos + 4 : pos + 8])
        pos += 12 + length
        if kind == b"IEND":
            return pos == end
    return False


def _decode(text: str) -> bytes | None:
    """Standard or URL-safe base64, padded or not; None when it is neither."""
    altchars = b"-_" if ("-" in text or "_" in text) else None
    try:
        return pybase64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        return None


def _list_field(owner: dict[str, Any], key: str, where: str) -> list[Any]:
    value = owner.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _malformed(f"{where}.{key} is a {type(value).__name__}, not a list")
    return value


def _image_of(
    part: dict[str, Any], where: str, position: tuple[int, int, int]
) -> OutputImage | None:
    present = [k for k in _INLINE_KEYS if k in part]
    if len(present) == 2:
        raise _malformed(f"{where} carries both inlineData and inline_data")
    files = [k for k in _FILE_KEYS if k in part]
    if files:
        raise _Refused(
            UNSUPPORTED,
            f"The upstream returned a file reference at {where}.{files[0]}; Custody releases only"
            " inline images it has signed.",
        )
    if not present:
        return None
    key = present[0]
    blob = part[key]
    if not isinstance(blob, dict):
        raise _malformed(f"{where}.{key} is not an object")
    declared = blob.get("mimeType", blob.get("mime_type"))
    data = blob.get("data")
    if not isinstance(data, str) or not data:
        raise _malformed(f"{where}.{key}.data is missing or empty")
    raw = _decode(data)
    if raw is None:
        raise _malformed(f"{where}.{key}.data is not base64")
    mime = sniff(raw)
    if mime is None:
        declared_text = f"declared {declared!r}" if declared else "with no mimeType"
        raise _Refused(
            UNSUPPORTED,
            f"The upstream returned {describe(raw)} at {where} ({declared_text}); Custody signs"
            f" and releases only {', '.join(SIGNABLE)} images, so nothing was released.",
        )
    problem = _readable(raw, mime)
    if problem is not None:
        raise _malformed(f"the {mime} image at {where} {problem}")
    chunk, candidate, index = position
    return OutputImage(
        chunk,
        candidate,
        index,
        mime,
        raw,
        key,
        declared if isinstance(declared, str) else None,
    )


def _walk_document(
    chunk: int, doc: dict[str, Any], summary: ResponseSummary, texts: list[str]
) -> None:
    prefix = f"chunk {chunk}: " if chunk else ""
    model_version, response_id = doc.get("modelVersion"), doc.get("responseId")
    if model_version is not None:
        summary.model_version = str(model_version)[:_LABEL_CHARS]
    if response_id is not None:
        summary.response_id = str(response_id)[:_LABEL_CHARS]
    feedback = doc.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        summary.block_reason = str(feedback["blockReason"])[:_REASON_CHARS]
    if isinstance(doc.get("usageMetadata"), dict):
        summary.usage = doc["usageMetadata"]
    found = 0
    final = isinstance(feedback, dict) and bool(feedback.get("blockReason"))
    for ci, cand in enumerate(_list_field(doc, "candidates", f"{prefix}response")):
        where_c = f"{prefix}candidates[{ci}]"
        if not isinstance(cand, dict):
            raise _malformed(f"{where_c} is not an object")
        if cand.get("finishReason"):
            summary.finish_reasons.append(str(cand["finishReason"])[:_REASON_CHARS])
            final = True
        content = cand.get("content")
        if content is None:
            continue
        if not isinstance(content, dict):
            raise _malformed(f"{where_c}.content is not an object")
        for pi, part in enumerate(_list_field(content, "parts", f"{where_c}.content")):
            where = f"{where_c}.content.parts[{pi}]"
            if not isinstance(part, dict):
                raise _malformed(f"{where} is not an object")
            text = part.get("text")
            if text is not None:
                if not isinstance(text, str):
                    raise _malformed(f"{where}.text is not a string")
                if not part.get("thought"):
                    texts.append(text)
            image = _image_of(part, where, (chunk, ci, pi))
            if image is not None:
                summary.images.append(image)
                found += 1
    if _count_blobs(doc) != found:
        raise _malformed(f"{prefix}inline data outside candidates[].content.parts[]")
    summary.final_chunk = final


def summarise(documents: list[dict[str, Any]]) -> ResponseSummary:
    """Walk one unary response (one document) or every chunk of a stream, in order.

    ``fault`` is set (and ``images`` emptied) when anything in the response cannot be released.
    """
    summary = ResponseSummary()
    texts: list[str] = []
    try:
        for chunk, doc in enumerate(documents):
            _walk_document(chunk, doc, summary, texts)
    except _Refused as refused:
        summary.fault = refused.fault
        summary.images = []
    summary.text = "".join(texts)
    return summary


def _blobs(value: Any) -> Iterator[dict[str, Any] | Any]:
    """Every inline blob (or file reference) anywhere in ``value``, however deep."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if key in _INLINE_KEYS or key in _FILE_KEYS:
                    yield child
                else:
                    stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


def _count_blobs(value: Any) -> int:
    return sum(1 for _ in _blobs(value))


def replace_images(
    documents: list[dict[str, Any]], signed: dict[tuple[int, int, int], bytes]
) -> list[str]:
    """Put each signed file in place of the upstream image at (chunk, candidate, part), in place.

    Returns the base64 text now in each signed position (for ``unsigned_inline_data``).
    """
    placed: list[str] = []
    for (chunk, ci, pi), data in signed.items():
        part = documents[chunk]["candidates"][ci]["content"]["parts"][pi]
        key = next(k for k in _INLINE_KEYS if k in part)
        blob = part[key]
        sniffed = sniff(data)
        for name in ("mimeType", "mime_type"):
            if name in blob and blob[name] != sniffed:
                blob[name] = sniffed
        if "mimeType" not in blob and "mime_type" not in blob:
            blob["mime_type" if key == "inline_data" else "mimeType"] = sniffed
        text = pybase64.b64encode(data).decode("ascii")
        blob["data"] = text
        placed.append(text)
    return placed


def unsigned_inline_data(documents: list[dict[str, Any]], placed: list[str]) -> int:
    """How many inline blobs of the outgoing ``documents`` are not one of the ``placed`` signed
    files (0 means the release is safe). Looks everywhere in each document, not only in parts."""
    expected = set(placed)
    bad = 0
    for doc in documents:
        for blob in _blobs(doc):
            data = blob.get("data") if isinstance(blob, dict) else None
            if not isinstance(data, str) or data not in expected:
                bad += 1
    return bad
