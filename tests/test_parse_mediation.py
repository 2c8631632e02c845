"""The parser reads everything the upstream acts on, and refuses what it cannot classify (issue 14).

Text in every field (system instruction, history, new turn, thought and structured parts, text
attachments) with where it sits; images wherever they sit in a part; non-image inputs sniffed and
capped; HEIC/HEIF sizes from the ISOBMFF ``ispe`` box; per-tenant caps before any classifier.
"""

from __future__ import annotations

import base64
import io

import orjson
import pytest
from PIL import Image

from governance.pipeline.errors import TurnError
from governance.pipeline.parse import InputLimits, parse_request
from governance.pipeline.sniff import heif_size, sniff


def _png(size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def _heic(size: tuple[int, int]) -> bytes:
    import pillow_heif  # a test dependency: missing, the test fails (nothing may skip)

    buf = io.BytesIO()
    pillow_heif.from_pillow(Image.new("RGB", size, (200, 30, 30))).save(buf, quality=50)
    return buf.getvalue()


def _blob(data: bytes, mime: str) -> dict[str, object]:
    return {"inlineData": {"mimeType": mime, "data": base64.b64encode(data).decode()}}


def _parse(document: dict[str, object], limits: InputLimits | None = None):
    return parse_request(orjson.dumps(document), max_pixels=10**8, limits=limits)


def _fields(parsed) -> list[tuple[str, str]]:
    return [(t.field, t.text) for t in parsed.texts]


def test_every_text_field_is_read_with_where_it_sits() -> None:
    parsed = _parse(
        {
            "systemInstruction": {"parts": [{"text": "be terse"}]},
            "contents": [
                {"role": "user", "parts": [{"text": "first ask"}]},
                {"role": "model", "parts": [{"text": "pondering", "thought": True}]},
                {"role": "model", "parts": [{"text": "ok"}]},
                {
                    "role": "user",
                    "parts": [
                        {"text": "now this"},
                        {"text": "hidden", "thought": True},
                        {"functionResponse": {"name": "f", "response": {"note": "a tool note"}}},
                    ],
                },
            ],
        }
    )
    assert _fields(parsed) == [
        ("systemInstruction", "be terse"),
        ("history", "first ask"),
        ("thought", "pondering"),
        ("model", "ok"),
        ("new", "now this"),
        ("thought", "hidden"),
        ("structured", "name\nf\nresponse\nnote\na tool note"),
    ]
    assert parsed.prompt == "now this", "the prompt stays the new turn's own text"
    assert parsed.thought_parts == 2 and parsed.structured_parts == {"functionResponse": 1}
    assert parsed.system_instruction and parsed.history_turns == 3


def test_snake_case_system_instruction_and_a_bare_string() -> None:
    a = _parse({"system_instruction": {"parts": [{"text": "x"}]}, "contents": [{"parts": []}]})
    b = _parse({"systemInstruction": "y", "contents": [{"parts": []}]})
    assert _fields(a) == [("systemInstruction", "x")] and _fields(b) == [("systemInstruction", "y")]


def test_an_image_in_a_text_part_is_an_input_image_too() -> None:
    part = {"text": "make it teal", **_blob(_png((5, 4)), "image/png")}
    parsed = _parse({"contents": [{"role": "user", "parts": [part]}]})
    assert parsed.prompt == "make it teal"
    assert [(i.role, i.width, i.height) for i in parsed.images] == [("parent", 5, 4)]
    bad = {"text": "make it teal", **_blob(b"GIF89a....", "image/png")}
    with pytest.raises(TurnError) as caught:
        _parse({"contents": [{"role": "user", "parts": [bad]}]})
    assert caught.value.reason == "MIME_TYPE_MISMATCH", "the image checks run on such parts too"


@pytest.mark.parametrize(
    "part",
    [
        {},
        {"unknown": 1},
        {"secretPrompt": "remove the watermark"},
        {"text": "teal", "executableCodez": {"code": "x"}},
        {"text": "teal", "extra": ["words"]},
    ],
)
def test_parts_custody_cannot_classify_are_refused(part) -> None:
    with pytest.raises(TurnError) as caught:
        _parse({"contents": [{"role": "user", "parts": [part]}]})
    assert caught.value.code == 400 and caught.value.reason == "UNKNOWN_PART_FIELD"
    assert "cannot" in caught.value.message


def test_a_scalar_unknown_part_field_carries_no_content_and_is_tolerated() -> None:
    part = {"text": "ok", "thoughtSignature": "c2ln", "unknownPartField": 7}
    signature_only = {"thoughtSignature": "c2ln"}
    parsed = _parse(
        {
            "contents": [
                {"role": "model", "parts": [part, signature_only]},
                {"parts": [{"text": "x"}]},
            ]
        }
    )
    assert _fields(parsed) == [("model", "ok"), ("new", "x")]


def test_deeply_nested_structured_parts_are_read_without_recursion() -> None:
    nested = "[" * 1000 + '"remove the watermark"' + "]" * 1000  # orjson reads up to 1024 deep
    body = '{"contents": [{"parts": [{"functionResponse": {"name": "f", "response": {"d": %s}}}]}]}'
    parsed = parse_request((body % nested).encode(), max_pixels=10)
    assert parsed.texts[0].text.endswith("remove the watermark")


def test_non_image_inputs_are_sniffed_recorded_and_text_is_read() -> None:
    pdf = b"%PDF-1.7\n1 0 obj <<>> endobj\n%%EOF\n"
    note = b"remove the watermark"
    parsed = _parse(
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [_blob(pdf, "application/pdf"), _blob(note, "text/plain")],
                }
            ]
        }
    )
    assert [(d.mime_type, len(d.data)) for d in parsed.documents] == [
        ("application/pdf", len(pdf)),
        ("text/plain", len(note)),
    ]
    assert _fields(parsed) == [("attachment", "remove the watermark")]


@pytest.mark.parametrize(
    ("data", "declared", "reason"),
    [
        (base64.b64encode(b"remove the watermark"), "application/pdf", "MIME_TYPE_MISMATCH"),
        (_png(), "application/pdf", "MIME_TYPE_MISMATCH"),
        (_png(), "text/plain", "MIME_TYPE_MISMATCH"),
        (b"%PDF-1.4 ...", "application/x-custom", "UNSUPPORTED_MIME_TYPE"),
        (b"\x00\x01\x02binary", "audio/wav", "MIME_TYPE_MISMATCH"),
    ],
)
def test_a_declared_type_that_the_bytes_contradict_is_refused(data, declared, reason) -> None:
    with pytest.raises(TurnError) as caught:
        _parse({"contents": [{"parts": [_blob(data, declared)]}]})
    assert caught.value.code == 400 and caught.value.reason == reason


def test_caps_are_applied_before_anything_is_classified() -> None:
    limits = InputLimits(
        max_prompt_chars=50, max_text_parts=3, max_non_image_inputs=1, max_non_image_bytes=10
    )
    cases = [
        ({"contents": [{"parts": [{"text": "x" * 51}]}]}, "PROMPT_TOO_LARGE"),
        ({"systemInstruction": "y" * 30, "contents": [{"parts": [{"text": "x" * 21}]}]},
         "PROMPT_TOO_LARGE"),
        ({"contents": [{"parts": [{"text": "a"}] * 4}]}, "TOO_MANY_PARTS"),
        ({"contents": [{"parts": [_blob(b"%PDF-1", "application/pdf")] * 2}]}, "TOO_MANY_INPUTS"),
        ({"contents": [{"parts": [_blob(b"%PDF-1.7 long", "application/pdf")]}]},
         "INPUT_TOO_LARGE"),
    ]  # fmt: skip
    for document, reason in cases:
        with pytest.raises(TurnError) as caught:
            _parse(document, limits)
        assert caught.value.code == 400 and caught.value.reason == reason, document


def test_limits_come_from_tenant_settings_with_defaults() -> None:
    limits = InputLimits.from_tenant({"input_limits": {"max_prompt_chars": 10, "bogus": 1}})
    assert limits.max_prompt_chars == 10
    assert limits.max_text_parts == InputLimits().max_text_parts
    assert InputLimits.from_tenant({}) == InputLimits() == InputLimits.from_tenant(None)
    default = {"input_limits": {"max_prompt_chars": 7, "max_text_parts": 9}}
    inherited = InputLimits.from_tenant({"input_limits": {"max_text_parts": 3}}, default)
    assert (inherited.max_prompt_chars, inherited.max_text_parts) == (7, 3)


def test_file_data_tools_and_generation_config_are_facts() -> None:
    parsed = _parse(
        {
            "contents": [
                {
                    "parts": [
                        {"text": "teal"},
                        {"fileData": {"fileUri": "https://x.test/a.png", "mimeType": "image/png"}},
                    ]
                }
            ],
            "tools": [{"googleSearch": {}}],
            "toolConfig": {"functionCallingConfig": {"mode": "NONE"}},
            "generationConfig": {"responseModalities": ["IMAGE"]},
            "cachedContent": "cachedContents/abc",
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "OFF"}],
        }
    )
    assert parsed.safety_settings == [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "OFF"}]
    assert [(f.uri, f.mime_type) for f in parsed.files] == [("https://x.test/a.png", "image/png")]
    assert parsed.tools == ["googleSearch"] and parsed.tool_config and parsed.cached_content
    assert parsed.generation_config == {"responseModalities": ["IMAGE"]}


def test_heic_dimensions_come_from_the_ispe_box() -> None:
    data = _heic((37, 21))
    assert sniff(data) == "image/heic" and heif_size(data) == (37, 21, 64 * 64)  # coded 64²
    parsed = _parse({"contents": [{"parts": [_blob(data, "image/heic"), {"text": "teal"}]}]})
    assert (parsed.images[0].width, parsed.images[0].height) == (37, 21)
    with pytest.raises(TurnError) as caught:
        parse_request(
            orjson.dumps({"contents": [{"parts": [_blob(data, "image/heif")]}]}), max_pixels=100
        )
    assert caught.value.reason == "IMAGE_TOO_LARGE", "the bomb guard reads HEIF sizes too"


def test_a_heif_without_ispe_has_unknown_dimensions_not_an_error() -> None:
    ftyp = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    parsed = _parse({"contents": [{"parts": [_blob(ftyp + b"\x00" * 8, "image/heic")]}]})
    assert (parsed.images[0].width, parsed.images[0].height) == (None, None)
    with pytest.raises(TurnError) as caught:
        _parse({"contents": [{"parts": [_blob(b"\x00\x00\x00\x18ftypisom", "image/heic")]}]})
    assert caught.value.reason == "MIME_TYPE_MISMATCH", "an MP4 is not a HEIC image"


def test_a_huge_or_deep_generation_config_reaches_policy_as_its_keys() -> None:
    from governance.pipeline.policy_facts import request_shape

    deep = "[" * 1000 + "1" + "]" * 1000
    body = '{"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"knob": ' + deep + "}}"
    shape = request_shape(parse_request(body.encode(), max_pixels=10))
    assert shape["generation_config"] == {"keys": ["knob"], "truncated": True}
    small = _parse({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"seed": 1}})
    assert request_shape(small)["generation_config"] == {"seed": 1}


def test_a_file_reference_reaches_policy_without_its_credentials() -> None:
    from governance.pipeline.policy_facts import _file_facts

    facts = _file_facts("https://u:p@bucket.example.test/a.png?X-Goog-Signature=abc#x", None)
    assert (facts.scheme, facts.host) == ("https", "bucket.example.test")
    assert facts.uri == "https://bucket.example.test/a.png"
    assert _file_facts("gs://b/o", "image/png").host == "b"


def test_one_field_under_both_spellings_is_refused() -> None:
    png = base64.b64encode(_png()).decode()
    part = {
        "inlineData": {"mimeType": "image/png", "data": png},
        "inline_data": {"mime_type": "image/png", "data": png},
    }
    for document in (
        {"contents": [{"parts": [part]}]},
        {"systemInstruction": "a", "system_instruction": "b", "contents": [{"parts": []}]},
    ):
        with pytest.raises(TurnError) as caught:
            _parse(document)
        assert caught.value.reason == "DUPLICATE_FIELD"
