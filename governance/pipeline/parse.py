"""Read a Gemini ``generateContent`` request without changing it: prompt, images, their facts.

The request bytes themselves are forwarded upstream untouched; this module only looks. It accepts
what real clients send: ``inlineData`` or ``inline_data``, ``mimeType`` or ``mime_type``, standard
or URL-safe base64 with or without padding. Every image is checked before anything else happens:
the declared type must match the bytes, and the pixel count must stay under the configured limit
(a decompression bomb is refused from its header, before a single pixel is decoded).
"""

from __future__ import annotations

import binascii
import hashlib
import io
import warnings
from dataclasses import dataclass, field
from typing import Any

import orjson
import pybase64
from PIL import Image

from governance.api.errors import GeminiError

# Magic numbers of the image types Gemini accepts, checked before Pillow sees the bytes.
_MAGIC: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/webp": (b"RIFF",),
    "image/heic": (b"\x00\x00\x00",),
    "image/heif": (b"\x00\x00\x00",),
    "image/gif": (b"GIF87a", b"GIF89a"),
}
_PIL_FORMAT = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}


@dataclass(frozen=True)
class InputImage:
    """One image part of the request, decoded and checked."""

    content_index: int
    part_index: int
    role: str  # "parent" | "reference" | "mask" | "history"
    mime_type: str
    data: bytes
    sha256: str
    width: int | None
    height: int | None
    from_model: bool  # an earlier model output resent as chat history


@dataclass
class ParsedRequest:
    """What Custody needs to know about a request; ``body`` is the untouched original."""

    body: bytes
    document: dict[str, Any]
    prompt: str
    images: list[InputImage] = field(default_factory=list)
    file_uris: list[str] = field(default_factory=list)

    @property
    def edited_images(self) -> list[InputImage]:
        """The images this turn works on: parent, references and masks (not older history)."""
        return [i for i in self.images if i.role in ("parent", "reference", "mask")]


def _bad(message: str, reason: str = "INVALID_REQUEST") -> GeminiError:
    return GeminiError(400, message, reason=reason)


def decode_base64(text: str, where: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not; a clear 400 when it is neither."""
    if not isinstance(text, str):
        raise _bad(f"{where} must be a base64 string.", "INVALID_BASE64")
    altchars = b"-_" if ("-" in text or "_" in text) else None
    padded = text + "=" * (-len(text) % 4)
    try:
        return pybase64.b64decode(padded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(
            f"{where} is not valid base64 ({exc}). Send the image bytes base64-encoded"
            " (standard or URL-safe alphabet).",
            "INVALID_BASE64",
        ) from None


def inspect_image(data: bytes, mime_type: str, where: str, max_pixels: int) -> tuple[int, int]:
    """The image's (width, height) from its header; 400 when it is not what it claims to be."""
    magics = _MAGIC.get(mime_type)
    if magics is None:
        raise _bad(
            f"{where} declares mimeType {mime_type!r}; Custody accepts "
            f"{', '.join(sorted(_MAGIC))}.",
            "UNSUPPORTED_MIME_TYPE",
        )
    if not data.startswith(magics) or (mime_type == "image/webp" and data[8:12] != b"WEBP"):
        raise _bad(
            f"{where} is declared as {mime_type} but its bytes are not a {mime_type} image.",
            "MIME_TYPE_MISMATCH",
        )
    if mime_type in ("image/heic", "image/heif"):
        return (0, 0)  # Pillow cannot read HEIF without a plugin; the magic check is all we do
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[mime_type]]) as img:
                width, height = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bad(
            f"{where} declares so many pixels that decoding it could exhaust memory"
            " (a decompression bomb); Custody refused it.",
            "IMAGE_TOO_LARGE",
        ) from None
    except Exception as exc:
        raise _bad(f"{where} could not be read as {mime_type}: {exc}.", "INVALID_IMAGE") from None
    if width * height > max_pixels:
        raise _bad(
            f"{where} is {width}x{height} = {width * height:,} pixels, over the limit of"
            f" {max_pixels:,}; Custody refused it before decoding (decompression-bomb guard).",
            "IMAGE_TOO_LARGE",
        )
    return width, height


def _inline(part: dict[str, Any]) -> dict[str, Any] | None:
    blob = part.get("inlineData")
    if blob is None:
        blob = part.get("inline_data")
    return blob if isinstance(blob, dict) else None


def _file_uri(part: dict[str, Any]) -> str | None:
    data = part.get("fileData") or part.get("file_data")
    if isinstance(data, dict):
        uri = data.get("fileUri") or data.get("file_uri")
        return uri if isinstance(uri, str) else None
    return None


def parse_request(body: bytes, *, max_pixels: int) -> ParsedRequest:
    """Parse and check a generateContent body; raises ``GeminiError`` (400) on bad input."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"The request body is not valid JSON: {exc}.", "INVALID_JSON") from None
    if not isinstance(document, dict):
        raise _bad("The request body must be a JSON object.", "INVALID_JSON")
    contents = document.get("contents")
    if isinstance(contents, dict):
        contents = [contents]
    if not isinstance(contents, list) or not contents:
        raise _bad("* GenerateContentRequest.contents: contents is not specified", "NO_CONTENTS")

    last_user = max(
        (
            i
            for i, c in enumerate(contents)
            if isinstance(c, dict) and c.get("role", "user") == "user"
        ),
        default=len(contents) - 1,
    )
    parsed = ParsedRequest(body=body, document=document, prompt="")
    prompt_parts: list[str] = []
    for ci, content in enumerate(contents):
        if not isinstance(content, dict):
            raise _bad(f"contents[{ci}] must be an object with 'parts'.")
        parts = content.get("parts", [])
        if not isinstance(parts, list):
            raise _bad(f"contents[{ci}].parts must be a list.")
        from_model = content.get("role") == "model"
        mask_next = False
        for pi, part in enumerate(parts):
            if not isinstance(part, dict):
                raise _bad(f"contents[{ci}].parts[{pi}] must be an object.")
            where = f"contents[{ci}].parts[{pi}].inlineData"
            text = part.get("text")
            if isinstance(text, str) and not part.get("thought"):
                if ci == last_user:
                    prompt_parts.append(text)
                mask_next = text.strip().lower().startswith("mask")
                continue
            uri = _file_uri(part)
            if uri is not None:
                parsed.file_uris.append(uri)
                continue
            blob = _inline(part)
            if blob is None:
                continue
            mime = blob.get("mimeType", blob.get("mime_type"))
            if not isinstance(mime, str) or not mime:
                raise _bad(f"{where}.mimeType is required.", "MISSING_MIME_TYPE")
            mime = mime.lower()
            data = decode_base64(blob.get("data", ""), f"{where}.data")
            if not mime.startswith("image/"):
                continue  # audio, PDF, ...: forwarded, hashed in the raw request, not inspected
            width, height = inspect_image(data, mime, where, max_pixels)
            if ci != last_user:
                role = "history"
            elif mask_next:
                role = "mask"
            elif not any(i.role == "parent" for i in parsed.images):
                role = "parent"
            else:
                role = "reference"
            mask_next = False
            parsed.images.append(
                InputImage(
                    content_index=ci,
                    part_index=pi,
                    role=role,
                    mime_type=mime,
                    data=data,
                    sha256=hashlib.sha256(data).hexdigest(),
                    width=width or None,
                    height=height or None,
                    from_model=from_model,
                )
            )
    parsed.prompt = "\n".join(prompt_parts)
    _promote_history_parent(parsed)
    return parsed


def _promote_history_parent(parsed: ParsedRequest) -> None:
    """In a chat, "make it teal" edits the last image of the history: that image is the parent."""
    if any(i.role == "parent" for i in parsed.images):
        return
    for idx in range(len(parsed.images) - 1, -1, -1):
        img = parsed.images[idx]
        if img.role == "history":
            parsed.images[idx] = InputImage(**{**img.__dict__, "role": "parent"})
            return
