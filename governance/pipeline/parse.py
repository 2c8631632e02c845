"""Read a Gemini ``generateContent`` request without changing it: everything the upstream acts on.

The request bytes themselves are forwarded upstream untouched; this module only looks — at all of
it, because the upstream acts on all of it: ``systemInstruction``, every turn of the history (the
last user turn is "new", the rest "history"), every part including ``thought`` parts, text and
inline data wherever they sit in a part, ``fileData`` references, structured parts
(``functionCall``, ``executableCode``, ...), ``tools``/``toolConfig``, ``generationConfig`` and
``safetySettings``.
A part Custody cannot classify (no known field, or an unknown field that carries data) is refused
with a 400, never passed through unseen; so is a key repeated within one object (which copy the
upstream reads is not Custody's to guess).

It accepts what real clients send: ``inlineData`` or ``inline_data``, ``mimeType`` or
``mime_type``, standard or URL-safe base64 with or without padding. Every inline blob is sniffed:
the declared type must match the bytes. Images are checked before anything else happens (the pixel
count must stay under the limit; a decompression bomb is refused from its header, before a single
pixel is decoded). Non-image inputs (PDF, text, audio) are recorded with their size and capped.
Input-size caps (``InputLimits``, per tenant) are applied here, before any classifier runs, so a
huge prompt costs a length check, not seconds of CPU.
"""

from __future__ import annotations

import binascii
import hashlib
import io
import json
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import orjson
import pybase64
from PIL import Image

from governance.pipeline.errors import TurnError
from governance.pipeline.sniff import (
    accepted_non_image_types,
    expected_kind,
    heif_size,
    is_heif,
    sniff,
)

# Magic numbers of the image types Gemini accepts, checked before Pillow sees the bytes.
_MAGIC: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/webp": (b"RIFF",),
    "image/heic": (),
    "image/heif": (),
    "image/gif": (b"GIF87a", b"GIF89a"),
}
_PIL_FORMAT = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}

# Gemini Part fields (google-genai ``types.Part``), both spellings. Content carriers hold what the
# model reads; metadata fields describe a part. Anything else that carries data is refused.
_TEXT = "text"
_INLINE = ("inlineData", "inline_data")
_FILE = ("fileData", "file_data")
_STRUCTURED = {
    "functionCall": "functionCall",
    "function_call": "functionCall",
    "functionResponse": "functionResponse",
    "function_response": "functionResponse",
    "executableCode": "executableCode",
    "executable_code": "executableCode",
    "codeExecutionResult": "codeExecutionResult",
    "code_execution_result": "codeExecutionResult",
    "toolCall": "toolCall",
    "tool_call": "toolCall",
    "toolResponse": "toolResponse",
    "tool_response": "toolResponse",
    "audioTranscription": "audioTranscription",
    "audio_transcription": "audioTranscription",
}
_OPAQUE_METADATA = frozenset({"thought", "thoughtSignature", "thought_signature"})
_METADATA = _OPAQUE_METADATA | {
    "videoMetadata",
    "video_metadata",
    "mediaResolution",
    "media_resolution",
    "partMetadata",
    "part_metadata",
    "mediaProcessing",
    "media_processing",
    "speechMetadata",
    "speech_metadata",
    "documentMetadata",
    "document_metadata",
    "spreadsheetMetadata",
    "spreadsheet_metadata",
    "audioMetadata",
    "audio_metadata",
}
_KNOWN_PART_FIELDS = frozenset({_TEXT, *_INLINE, *_FILE, *_STRUCTURED, *_METADATA})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.capitalize() for w in rest)


# One field under both spellings is ambiguous: which one the upstream reads is not ours to guess.
_SPELLINGS = {n: _camel(n) for n in _KNOWN_PART_FIELDS if "_" in n}

# Where a piece of text sits, as the classifier's signals name it.
FIELD_SYSTEM = "systemInstruction"
FIELD_HISTORY = "history"  # earlier user turns
FIELD_MODEL = "model"  # earlier model turns (resent as chat history; a client can forge them)
FIELD_NEW = "new"
FIELD_THOUGHT = "thought"
FIELD_STRUCTURED = "structured"
FIELD_ATTACHMENT = "attachment"


@dataclass(frozen=True)
class InputLimits:
    """Per-tenant caps on what one request may hold (``custody/tenants/data.json``)."""

    max_prompt_chars: int = 200_000  # all text the upstream reads, every field together
    max_text_parts: int = 2_000
    max_non_image_inputs: int = 16
    max_non_image_bytes: int = 20 * 1024 * 1024

    @classmethod
    def from_tenant(
        cls, settings: dict[str, Any] | None, fallback: dict[str, Any] | None = None
    ) -> InputLimits:
        """The caps a tenant's settings name (``input_limits``); a cap it does not name comes
        from ``fallback`` (the ``default`` tenant's settings), then from these defaults."""
        chosen: dict[str, int] = {}
        for source in (fallback, settings):
            given = (source or {}).get("input_limits")
            if isinstance(given, dict):
                for name in cls.__dataclass_fields__:
                    value = given.get(name)
                    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                        chosen[name] = value
        return cls(**chosen)


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


@dataclass(frozen=True)
class InputDocument:
    """One non-image inline input (PDF, text, audio, video): sniffed, sized, hashed."""

    content_index: int
    part_index: int
    mime_type: str  # what the bytes are (sniffed)
    declared_mime_type: str
    data: bytes
    sha256: str
    history: bool  # in an earlier turn rather than the new one


@dataclass(frozen=True)
class TextPiece:
    """One piece of text the upstream reads, and where it sits (``FIELD_*``)."""

    field: str
    text: str
    content_index: int  # -1 for systemInstruction
    part_index: int


@dataclass(frozen=True)
class FileReference:
    """A ``fileData`` part: content Custody cannot see, only name."""

    content_index: int
    part_index: int
    uri: str
    mime_type: str | None


@dataclass
class ParsedRequest:
    """What Custody needs to know about a request; ``body`` is the untouched original."""

    body: bytes
    document: dict[str, Any]
    prompt: str  # the new user turn's own (non-thought) text, as sent
    images: list[InputImage] = field(default_factory=list)
    documents: list[InputDocument] = field(default_factory=list)
    texts: list[TextPiece] = field(default_factory=list)
    files: list[FileReference] = field(default_factory=list)
    structured_parts: dict[str, int] = field(default_factory=dict)
    thought_parts: int = 0
    history_turns: int = 0
    tools: list[str] = field(default_factory=list)
    tool_config: bool = False
    generation_config: dict[str, Any] = field(default_factory=dict)
    cached_content: bool = False
    safety_settings: list[dict[str, str]] = field(default_factory=list)

    @property
    def edited_images(self) -> list[InputImage]:
        """The images this turn works on: parent, references and masks (not older history)."""
        return [i for i in self.images if i.role in ("parent", "reference", "mask")]

    @property
    def file_uris(self) -> list[str]:
        return [f.uri for f in self.files]

    @property
    def system_instruction(self) -> bool:
        return any(t.field == FIELD_SYSTEM for t in self.texts)


def _bad(message: str, reason: str = "INVALID_REQUEST") -> TurnError:
    return TurnError(400, message, reason=reason)


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


def inspect_image(
    data: bytes, mime_type: str, where: str, max_pixels: int
) -> tuple[int | None, int | None]:
    """The image's (width, height) from its header (None when unknown); 400 when it is not what
    it claims to be, or declares more pixels than ``max_pixels``."""
    magics = _MAGIC.get(mime_type)
    if magics is None:
        raise _bad(
            f"{where} declares mimeType {mime_type!r}; Custody accepts "
            f"{', '.join(sorted(_MAGIC))}.",
            "UNSUPPORTED_MIME_TYPE",
        )
    heif = mime_type in ("image/heic", "image/heif")
    matches = is_heif(data) if heif else data.startswith(magics)
    if not matches or (mime_type == "image/webp" and data[8:12] != b"WEBP"):
        raise _bad(
            f"{where} is declared as {mime_type} but its bytes are not a {mime_type} image.",
            "MIME_TYPE_MISMATCH",
        )
    if heif:  # Pillow has no HEIF reader; the ISOBMFF item properties hold the size
        geometry = heif_size(data)
        if geometry is None:
            return None, None
        width, height, pixels = geometry
    else:
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
            raise _bad(
                f"{where} could not be read as {mime_type}: {exc}.", "INVALID_IMAGE"
            ) from None
        pixels = width * height
    if pixels > max_pixels:
        raise _bad(
            f"{where} is {width}x{height} = {pixels:,} pixels decoded, over the limit of"
            f" {max_pixels:,}; Custody refused it before decoding (decompression-bomb guard).",
            "IMAGE_TOO_LARGE",
        )
    return width or None, height or None


def _first(part: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if part.get(name) is not None:
            return part[name]
    return None


# C0 controls but tab, LF and CR; DEL; C1 controls.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _strings(value: Any, out: list[str]) -> None:
    """Every string leaf of a JSON value, keys included (a function's arguments are text);
    iterative, so no nesting depth the JSON parser accepts can exhaust the stack."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            for k, v in reversed(item.items()):
                stack.append(v)
                stack.append(str(k))
        elif isinstance(item, list):
            stack.extend(reversed(item))


@dataclass
class _Turn:
    """Where the reader is: which turn, whose, and whether the next image is a mask."""

    new: bool  # the last user turn
    from_model: bool
    prompt: list[str]  # the new turn's own text parts
    mask_next: bool = False


class _Reader:
    """One pass over a request document, collecting what ``ParsedRequest`` holds."""

    def __init__(self, parsed: ParsedRequest, max_pixels: int, limits: InputLimits) -> None:
        self.parsed = parsed
        self.max_pixels = max_pixels
        self.limits = limits
        self.chars = 0
        self.text_parts = 0
        self.document_bytes = 0

    def text(self, field_name: str, text: str, ci: int, pi: int) -> None:
        self.chars += len(text)
        control = _CONTROL.search(text)
        if control is not None:
            raise _bad(
                f"Text part {pi} of content {ci} holds the control character"
                f" U+{ord(control.group()):04X}; prompts may hold tab, line feed and carriage"
                " return, no other C0 or C1 control (they hide text from reviewers and rewrite"
                " terminals and logs). Remove it and resend.",
                "CONTROL_CHARACTERS",
            )
        self.text_parts += 1
        if self.chars > self.limits.max_prompt_chars:
            raise _bad(
                f"The request holds more than {self.limits.max_prompt_chars:,} characters of"
                " text (system instruction, every turn and attachment together), over this"
                " tenant's limit (input_limits.max_prompt_chars); Custody refused it before"
                " any check ran. Shorten the prompt or the history you resend.",
                "PROMPT_TOO_LARGE",
            )
        if self.text_parts > self.limits.max_text_parts:
            raise _bad(
                f"The request holds more than {self.limits.max_text_parts:,} text parts, over"
                " this tenant's limit (input_limits.max_text_parts); merge parts or resend"
                " less history.",
                "TOO_MANY_PARTS",
            )
        self.parsed.texts.append(TextPiece(field_name, text, ci, pi))

    def part(
        self, part: Any, ci: int, pi: int, *, where: str, text_field: str, state: _Turn
    ) -> None:
        if not isinstance(part, dict):
            raise _bad(f"{where} must be an object.")
        self.check_fields(part, where)
        thought = part.get("thought") is True
        if thought:
            self.parsed.thought_parts += 1
        text = part.get(_TEXT)
        if text is not None:
            if not isinstance(text, str):
                raise _bad(f"{where}.text must be a string.")
            self.text(FIELD_THOUGHT if thought else text_field, text, ci, pi)
            if text_field == FIELD_NEW and not thought:
                state.prompt.append(text)
            state.mask_next = text.strip().lower().startswith("mask")
        for key, value in part.items():
            if key in _STRUCTURED or (key in _METADATA and key not in _OPAQUE_METADATA):
                if key in _STRUCTURED:
                    name = _STRUCTURED[key]
                    counts = self.parsed.structured_parts
                    counts[name] = counts.get(name, 0) + 1
                leaves: list[str] = []
                _strings(value, leaves)
                if leaves:
                    self.text(FIELD_STRUCTURED, "\n".join(leaves), ci, pi)
        file_data = _first(part, _FILE)
        if file_data is not None:
            self._file(file_data, ci, pi, where)
        blob = _first(part, _INLINE)
        if blob is not None:
            self._inline(blob, ci, pi, f"{where}.inlineData", state)

    def check_fields(self, part: dict[str, Any], where: str) -> None:
        """400 unless every field of ``part`` is a known Gemini part field or a bare scalar."""
        # A part of metadata only ({"thoughtSignature": ...}) carries nothing the model reads.
        known = [k for k in part if k in _KNOWN_PART_FIELDS]
        for snake, camel in _SPELLINGS.items():
            if snake in part and camel in part:
                raise _bad(
                    f"{where} has both {camel!r} and {snake!r}; send one of them.",
                    "DUPLICATE_FIELD",
                )
        for key, value in part.items():
            if key in _KNOWN_PART_FIELDS:
                continue
            if isinstance(value, dict | list | str):
                raise _bad(
                    f"{where} has a field {key[:80]!r} that is not a Gemini part field Custody"
                    " can inspect; Custody refuses content it cannot see. Send text in 'text'"
                    " and files in 'inlineData'.",
                    "UNKNOWN_PART_FIELD",
                )
        if not known:
            raise _bad(
                f"{where} carries no content Custody recognises (text, inlineData, fileData,"
                " functionCall, functionResponse, executableCode, codeExecutionResult);"
                " Custody refuses what it cannot classify.",
                "UNKNOWN_PART_FIELD",
            )

    def _file(self, file_data: Any, ci: int, pi: int, where: str) -> None:
        if not isinstance(file_data, dict):
            raise _bad(f"{where}.fileData must be an object with fileUri.")
        uri = file_data.get("fileUri", file_data.get("file_uri"))
        if not isinstance(uri, str) or not uri:
            raise _bad(f"{where}.fileData.fileUri is required.", "MISSING_FILE_URI")
        mime = file_data.get("mimeType", file_data.get("mime_type"))
        self.parsed.files.append(
            FileReference(ci, pi, uri, mime.lower() if isinstance(mime, str) else None)
        )

    def _inline(self, blob: Any, ci: int, pi: int, where: str, state: _Turn) -> None:
        if not isinstance(blob, dict):
            raise _bad(f"{where} must be an object with mimeType and data.")
        mime = blob.get("mimeType", blob.get("mime_type"))
        if not isinstance(mime, str) or not mime:
            raise _bad(f"{where}.mimeType is required.", "MISSING_MIME_TYPE")
        mime = mime.lower()
        data = decode_base64(blob.get("data", ""), f"{where}.data")
        if mime.startswith("image/"):
            self._image(data, mime, ci, pi, where, state)
        else:
            self._document(data, mime, ci, pi, where, state)

    def _image(self, data: bytes, mime: str, ci: int, pi: int, where: str, state: _Turn) -> None:
        width, height = inspect_image(data, mime, where, self.max_pixels)
        images = self.parsed.images
        if not state.new:
            role = "history"
        elif state.mask_next:
            role = "mask"
        elif not any(i.role == "parent" for i in images):
            role = "parent"
        else:
            role = "reference"
        state.mask_next = False
        images.append(
            InputImage(
                content_index=ci,
                part_index=pi,
                role=role,
                mime_type=mime,
                data=data,
                sha256=hashlib.sha256(data).hexdigest(),
                width=width,
                height=height,
                from_model=state.from_model,
            )
        )

    def _document(self, data: bytes, mime: str, ci: int, pi: int, where: str, state: _Turn) -> None:
        expected = expected_kind(mime)
        if expected is None:
            raise _bad(
                f"{where} declares mimeType {mime[:80]!r}; Custody accepts images and "
                f"{', '.join(accepted_non_image_types())}.",
                "UNSUPPORTED_MIME_TYPE",
            )
        real = sniff(data)
        if real != expected:
            what = f"a {real} file" if real else "of no type Custody recognises"
            raise _bad(
                f"{where} is declared as {mime} but its bytes are {what}; declare the real type.",
                "MIME_TYPE_MISMATCH",
            )
        self.document_bytes += len(data)
        if len(self.parsed.documents) + 1 > self.limits.max_non_image_inputs:
            raise _bad(
                f"The request holds more than {self.limits.max_non_image_inputs} non-image"
                " inputs, over this tenant's limit (input_limits.max_non_image_inputs).",
                "TOO_MANY_INPUTS",
            )
        if self.document_bytes > self.limits.max_non_image_bytes:
            raise _bad(
                f"The request's non-image inputs exceed {self.limits.max_non_image_bytes:,}"
                " bytes, this tenant's limit (input_limits.max_non_image_bytes).",
                "INPUT_TOO_LARGE",
            )
        self.parsed.documents.append(
            InputDocument(
                content_index=ci,
                part_index=pi,
                mime_type=real,
                declared_mime_type=mime,
                data=data,
                sha256=hashlib.sha256(data).hexdigest(),
                history=not state.new,
            )
        )
        if real == "text/plain":  # the model reads it: so does the classifier
            self.text(FIELD_ATTACHMENT, data.decode("utf-8"), ci, pi)


def parse_request(
    body: bytes, *, max_pixels: int, limits: InputLimits | None = None
) -> ParsedRequest:
    """Parse and check a generateContent body; raises ``TurnError`` (400) on bad input."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"The request body is not valid JSON: {exc}.", "INVALID_JSON") from None
    if not isinstance(document, dict):
        raise _bad("The request body must be a JSON object.", "INVALID_JSON")
    duplicate = _duplicate_key(body, document)
    if duplicate is not None:
        raise _bad(
            f"The request repeats the key {duplicate[:80]!r} within one object. JSON readers"
            " disagree on which copy counts, so Custody cannot know which one the model would"
            " act on; send each field once.",
            "DUPLICATE_FIELD",
        )
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
    reader = _Reader(parsed, max_pixels, limits or InputLimits())
    for camel, snake in _TOP_SPELLINGS:
        if camel in document and snake in document:
            raise _bad(
                f"The request has both {camel!r} and {snake!r}; send one.", "DUPLICATE_FIELD"
            )
    _system_instruction(document, reader)
    prompt_parts: list[str] = []
    for ci, content in enumerate(contents):
        if not isinstance(content, dict):
            raise _bad(f"contents[{ci}] must be an object with 'parts'.")
        parts = content.get("parts", [])
        if not isinstance(parts, list):
            raise _bad(f"contents[{ci}].parts must be a list.")
        new = ci == last_user
        state = _Turn(new=new, from_model=content.get("role") == "model", prompt=prompt_parts)
        for pi, part in enumerate(parts):
            reader.part(
                part,
                ci,
                pi,
                where=f"contents[{ci}].parts[{pi}]",
                text_field=FIELD_NEW if new else _history_field(content),
                state=state,
            )
    parsed.history_turns = len(contents) - 1
    parsed.prompt = "\n".join(prompt_parts)
    _request_settings(document, parsed, reader)
    _promote_history_parent(parsed)
    return parsed


# Where a key may end: a closing quote, then a colon. A string value holding '":' matches too,
# so the count is an upper bound of the keys in the body.
_KEY_END = re.compile(rb'"\s*:')


def _keys_in(document: Any) -> int:
    count, stack = 0, [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def _duplicate_key(body: bytes, document: Any) -> str | None:
    """A key repeated within one object of ``body`` (which parsed to ``document``), or None.

    The parser keeps the last copy of a repeated key while the upstream may read the first: the
    gate would classify one text and the model obey another. Checked in about a millisecond for
    a 4 MB body (a count of the places a key can end); only when that count exceeds the keys
    parsed is the body re-read key by key."""
    if len(_KEY_END.findall(body)) <= _keys_in(document):
        return None
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen and not found:
                found.append(key)
            seen.add(key)
        return dict(items)

    try:
        json.loads(body, object_pairs_hook=pairs)
    except RecursionError:  # nested deeper than the re-reader goes: refused, not passed unseen
        return "(an object nested too deep to check)"
    return found[0] if found else None


_TOP_SPELLINGS = (
    ("systemInstruction", "system_instruction"),
    ("generationConfig", "generation_config"),
    ("toolConfig", "tool_config"),
    ("cachedContent", "cached_content"),
    ("safetySettings", "safety_settings"),
)


def _history_field(content: dict[str, Any]) -> str:
    return FIELD_MODEL if content.get("role") == "model" else FIELD_HISTORY


def _system_instruction(document: dict[str, Any], reader: _Reader) -> None:
    """``systemInstruction`` (a Content, or a bare string) holds text the model obeys."""
    system = _first(document, ("systemInstruction", "system_instruction"))
    if system is None:
        return
    if isinstance(system, str):
        reader.text(FIELD_SYSTEM, system, -1, 0)
        return
    parts = system.get("parts") if isinstance(system, dict) else None
    if not isinstance(parts, list):
        raise _bad("systemInstruction must be an object with a list of text parts.")
    for pi, part in enumerate(parts):
        where = f"systemInstruction.parts[{pi}]"
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise _bad(f"{where} must be a text part: a system instruction holds text only.")
        reader.check_fields(part, where)
        if set(part) - {"text", *_OPAQUE_METADATA}:
            raise _bad(f"{where} must be a text part: a system instruction holds text only.")
        reader.text(FIELD_SYSTEM, part["text"], -1, pi)


def _request_settings(document: dict[str, Any], parsed: ParsedRequest, reader: _Reader) -> None:
    """Tools, tool config, generation config, cached content and safety settings, as facts.

    The model reads the text in them too (a function's description, a response schema's
    descriptions): their string leaves are classified like a structured part, and so are those
    of any top-level field Custody does not know (a newer API's field may reach the model)."""
    tools = _first(document, ("tools",))
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools must be a list of tool objects.")
        for ti, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _bad("tools must be a list of tool objects.")
            parsed.tools.extend(sorted(str(k)[:64] for k in tool))
            _settings_text(tool, reader, ti)
    tool_config = _first(document, ("toolConfig", "tool_config"))
    parsed.tool_config = tool_config is not None
    if tool_config is not None:
        _settings_text(tool_config, reader, 0)
    config = _first(document, ("generationConfig", "generation_config"))
    if config is not None:
        if not isinstance(config, dict):
            raise _bad("generationConfig must be an object.")
        parsed.generation_config = config
        _settings_text(config, reader, 0)
    for key, value in document.items():
        if key not in _READ_ELSEWHERE:  # a field Custody does not know: its text is read too
            _settings_text(value, reader, 0)
    parsed.cached_content = _first(document, ("cachedContent", "cached_content")) is not None
    safety = _first(document, ("safetySettings", "safety_settings"))
    if safety is not None:
        if not isinstance(safety, list) or not all(isinstance(s, dict) for s in safety):
            raise _bad("safetySettings must be a list of {category, threshold} objects.")
        parsed.safety_settings = [
            {
                "category": str(s.get("category", ""))[:64],
                "threshold": str(s.get("threshold", ""))[:64],
            }
            for s in safety[:64]
        ]


# Top-level fields read above or by the caller of ``_request_settings``, or that hold no text
# the model reads (labels are billing metadata; safety settings and the model name are enums).
_READ_ELSEWHERE = frozenset(
    {
        "contents",
        "systemInstruction",
        "system_instruction",
        "tools",
        "toolConfig",
        "tool_config",
        "generationConfig",
        "generation_config",
        "safetySettings",
        "safety_settings",
        "cachedContent",
        "cached_content",
        "labels",
        "model",
    }
)


def _settings_text(value: Any, reader: _Reader, index: int) -> None:
    leaves: list[str] = []
    _strings(value, leaves)
    if leaves:
        reader.text(FIELD_STRUCTURED, "\n".join(leaves), -1, index)


def _promote_history_parent(parsed: ParsedRequest) -> None:
    """In a chat, "make it teal" edits the last image of the history: that image is the parent."""
    if any(i.role == "parent" for i in parsed.images):
        return
    for idx in range(len(parsed.images) - 1, -1, -1):
        img = parsed.images[idx]
        if img.role == "history":
            parsed.images[idx] = InputImage(**{**img.__dict__, "role": "parent"})
            return
