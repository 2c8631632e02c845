"""An app using only the official google-genai SDK works through Custody; every turn is recorded.

These are the checks of issue 2, run against a real uvicorn server with the built-in emulator.
"""

from __future__ import annotations

import io

import pytest
from google.genai import errors, types
from PIL import Image

EDIT_MODEL = "gemini-2.5-flash-image"
PRO_MODEL = "gemini-3-pro-image-preview"


def _turn_id(response: types.GenerateContentResponse) -> str:
    headers = response.sdk_http_response.headers if response.sdk_http_response else {}
    turn = (headers or {}).get("x-custody-turn")
    assert turn, "Custody must name the turn in the x-custody-turn header"
    return turn


def _images(response: types.GenerateContentResponse) -> list[bytes]:
    parts = response.candidates[0].content.parts if response.candidates else []
    return [p.inline_data.data for p in parts or [] if p.inline_data and p.inline_data.data]


def _event_types(custody, turn_id: str) -> list[str]:
    return [e["type"] for e in custody.ledger_events(turn_id)]


def test_edit_of_a_real_photo_is_released_signed_and_recorded(custody, photo_bytes) -> None:
    photo = photo_bytes["earth_apollo17.jpg"]
    client = custody.client()
    response = client.models.generate_content(
        model=EDIT_MODEL,
        contents=[types.Part.from_bytes(data=photo, mime_type="image/jpeg"), "make it teal"],
    )
    images = _images(response)
    assert len(images) == 1
    Image.open(io.BytesIO(images[0])).verify()
    assert b"c2pa" in images[0], "the released image carries Content Credentials"
    assert "emulator" in (response.model_version or "")
    turn = _turn_id(response)
    types_ = _event_types(custody, turn)
    assert types_[:3] == ["turn.received", "policy.decided", "upstream.requested"]
    assert types_[-3:] == ["policy.decided", "output.signed", "turn.released"]
    assert "upstream.returned" in types_
    received = custody.ledger_events(turn)[0]
    assert received["tenant"] == "acme" and received["actor"] == "editor@acme"
    assert received["body"]["model"] == EDIT_MODEL
    # The ledger carries commitments, never the prompt itself.
    assert "make it teal" not in str(custody.ledger_events(turn))


@pytest.mark.parametrize("api_version", ["v1", "v1beta"])
def test_both_api_versions_are_served(custody, photo_bytes, api_version) -> None:
    client = custody.client(api_version=api_version)
    response = client.models.generate_content(
        model=EDIT_MODEL,
        contents=[
            types.Part.from_bytes(data=photo_bytes["sample1.png"], mime_type="image/png"),
            "grayscale",
        ],
    )
    assert len(_images(response)) == 1


def test_three_turn_chat_resends_history_with_thought_signatures(custody, photo_bytes) -> None:
    client = custody.client()
    chat = client.chats.create(model=PRO_MODEL)
    first = chat.send_message(
        [
            types.Part.from_bytes(data=photo_bytes["sample1.png"], mime_type="image/png"),
            "make the sofa teal",
        ]
    )
    assert _images(first)
    signed_parts = [p for p in first.candidates[0].content.parts if p.thought_signature]
    assert signed_parts, "a Gemini 3 model returns thought signatures"
    second = chat.send_message("flatten the fabric")
    third = chat.send_message("rotate 90 degrees")
    for response in (second, third):
        assert _images(response), "the emulator accepted the resent history and signatures"
    turns = {_turn_id(r) for r in (first, second, third)}
    assert len(turns) == 3
    for turn in turns:
        assert _event_types(custody, turn)[-1] == "turn.released"


def test_blend_of_three_images(custody, photo_bytes) -> None:
    names = ["sample1.png", "earth_apollo17.jpg", "IMG_0003.jpg"]
    parts: list[object] = [
        types.Part.from_bytes(
            data=photo_bytes[n], mime_type="image/png" if n.endswith("png") else "image/jpeg"
        )
        for n in names
    ]
    response = custody.client().models.generate_content(
        model=EDIT_MODEL, contents=[*parts, "blend these three images into one"]
    )
    assert len(_images(response)) == 1
    received = custody.ledger_events(_turn_id(response))[0]
    roles = [img["role"] for img in received["body"]["images"]]
    assert roles == ["parent", "reference", "reference"]


def test_streamed_call_delivers_signed_image(custody, photo_bytes) -> None:
    chunks = list(
        custody.client().models.generate_content_stream(
            model=PRO_MODEL,
            contents=[
                types.Part.from_bytes(data=photo_bytes["sample1.png"], mime_type="image/png"),
                "blur it",
            ],
        )
    )
    assert len(chunks) > 1
    images = [img for c in chunks for img in _images(c)]
    assert len(images) == 1 and b"c2pa" in images[0]
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    turn = _turn_id(chunks[0])
    assert _event_types(custody, turn)[-1] == "turn.released"


def test_prompt_the_emulator_blocks_comes_back_unchanged_and_is_recorded(custody) -> None:
    response = custody.client().models.generate_content(
        model=EDIT_MODEL, contents="draw something forbidden"
    )
    assert not response.candidates
    assert response.prompt_feedback.block_reason is not None
    events = custody.ledger_events(_turn_id(response))
    returned = next(e for e in events if e["type"] == "upstream.returned")
    assert returned["body"]["block_reason"] == response.prompt_feedback.block_reason.value
    assert returned["body"]["safety"] == "blocked"
    assert events[-1]["type"] == "turn.released"


@pytest.mark.parametrize(
    ("fault", "error_class", "code"),
    [
        ("429", errors.ClientError, 429),
        ("503", errors.ServerError, 503),
        ("500", errors.ServerError, 500),
    ],
)
def test_upstream_faults_reach_the_sdk_as_gemini_errors(custody, fault, error_class, code) -> None:
    with pytest.raises(error_class) as caught:
        custody.client().models.generate_content(
            model=EDIT_MODEL, contents=f"a red bicycle [emulator:fault={fault}]"
        )
    assert caught.value.code == code
    failed = [e for e in custody.ledger_events() if e["type"] == "turn.failed"]
    assert failed and failed[-1]["body"]["code"] == code
    returned = [e for e in custody.ledger_events() if e["type"] == "upstream.returned"]
    assert returned[-1]["body"]["status"] == code


def test_429_keeps_retry_info_for_the_caller(custody) -> None:
    with pytest.raises(errors.ClientError) as caught:
        custody.client().models.generate_content(
            model=EDIT_MODEL, contents="a red bicycle [emulator:fault=429]"
        )
    details = caught.value.details["error"]["details"]
    assert any(d.get("@type", "").endswith("RetryInfo") for d in details)
    assert caught.value.status == "RESOURCE_EXHAUSTED"
