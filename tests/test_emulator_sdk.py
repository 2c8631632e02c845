"""The official google-genai SDK, unchanged, against the emulator on a real loopback port."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google import genai
from google.genai import errors, types
from PIL import Image

from governance.upstream.embedded import ThreadedServer
from governance.upstream.emulator import create_emulator_app

FLASH = "gemini-2.5-flash-image"
PRO = "gemini-3-pro-image-preview"


@pytest.fixture(scope="module")
def emulator() -> Iterator[ThreadedServer]:
    server = ThreadedServer(create_emulator_app()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def client(emulator: ThreadedServer) -> genai.Client:
    httpx.delete(f"{emulator.base_url}/emulator/requests")
    return genai.Client(api_key="x", http_options=types.HttpOptions(base_url=emulator.base_url))


@pytest.fixture(scope="module")
def photos(fixtures_dir: Path) -> dict[str, bytes]:
    folder = fixtures_dir / "photos"
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _images(response: types.GenerateContentResponse) -> list[Image.Image]:
    content = response.candidates[0].content if response.candidates else None
    parts = content.parts if content else []
    return [
        Image.open(io.BytesIO(p.inline_data.data))
        for p in parts or []
        if p.inline_data and p.inline_data.data
    ]


def _log(emulator: ThreadedServer) -> list[dict[str, object]]:
    return httpx.get(f"{emulator.base_url}/emulator/requests").json()["requests"]  # type: ignore[no-any-return]


def test_edit_of_a_real_photo(client: genai.Client, emulator, photos) -> None:
    photo = photos["earth_apollo17.jpg"]
    response = client.models.generate_content(
        model=FLASH,
        contents=[types.Part.from_bytes(data=photo, mime_type="image/jpeg"), "rotate 90 degrees"],
    )
    (image,) = _images(response)
    original = Image.open(io.BytesIO(photo))
    assert image.format == "PNG" and image.size == (original.height, original.width)
    assert response.model_version == f"custody-emulator-0.1 (emulating {FLASH})"
    assert "rotate 90°" in (response.text or "")
    assert response.usage_metadata.total_token_count > 0
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    (entry,) = _log(emulator)
    assert entry["images"] == 1 and entry["path"].startswith("/v1/")  # SDK 3.x calls v1


@pytest.mark.parametrize("api_version", ["v1", "v1beta"])
def test_both_api_versions_and_model_routes(emulator, api_version: str) -> None:
    httpx.delete(f"{emulator.base_url}/emulator/requests")
    opts = types.HttpOptions(base_url=emulator.base_url, api_version=api_version)
    client = genai.Client(api_key="x", http_options=opts)
    assert _images(client.models.generate_content(model=FLASH, contents="a red bicycle"))
    assert {m.name for m in client.models.list()} == {f"models/{FLASH}", f"models/{PRO}"}
    assert client.models.get(model=PRO).name == f"models/{PRO}"
    assert _log(emulator)[0]["path"].startswith(f"/{api_version}/")


def test_three_turn_chat_resends_thought_signatures(client: genai.Client, emulator, photos) -> None:
    chat = client.chats.create(model=PRO)
    photo = types.Part.from_bytes(data=photos["sample1.png"], mime_type="image/png")
    first = chat.send_message([photo, "make the sofa teal"])
    parts = first.candidates[0].content.parts
    assert [p.thought for p in parts[:2]] == [True, True]
    assert sum(1 for p in parts if p.thought_signature) == 2
    (turn1,) = _images(first)
    second = chat.send_message("flip it upside down")
    third = chat.send_message("rotate 90 degrees")
    (turn2,), (turn3,) = _images(second), _images(third)
    assert turn2.size == turn1.size and turn3.size == (turn1.height, turn1.width)
    history = chat.get_history()
    assert len(history) == 6
    assert [e["status"] for e in _log(emulator)] == [200, 200, 200]


def test_altered_signature_is_rejected(client: genai.Client, photos) -> None:
    user = types.Content(role="user", parts=[types.Part.from_text(text="a cat")])
    first = client.models.generate_content(model=PRO, contents=[user])
    model_turn = first.candidates[0].content
    signed = next(p for p in model_turn.parts if p.thought_signature)
    signed.thought_signature = signed.thought_signature[:-1] + b"\x00"
    follow = types.Content(role="user", parts=[types.Part.from_text(text="blur")])
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=PRO, contents=[user, model_turn, follow])
    assert caught.value.code == 400 and "thought signature is not valid" in caught.value.message


def test_blend_of_three_images(client: genai.Client, photos) -> None:
    names = ["sample1.png", "earth_apollo17.jpg", "IMG_0003.jpg"]
    parts = [
        types.Part.from_bytes(
            data=photos[n], mime_type="image/png" if n.endswith("png") else "image/jpeg"
        )
        for n in names
    ]
    response = client.models.generate_content(
        model=FLASH, contents=[*parts, "blend these three images into one"]
    )
    (image,) = _images(response)
    assert image.size == Image.open(io.BytesIO(photos["sample1.png"])).size
    assert "blend of 3 images" in (response.text or "")


def test_generate_content_stream(client: genai.Client, photos) -> None:
    photo = types.Part.from_bytes(data=photos["mars.webp"], mime_type="image/webp")
    chunks = list(client.models.generate_content_stream(model=PRO, contents=[photo, "blur it"]))
    assert len(chunks) == 3
    assert chunks[0].candidates[0].content.parts[0].thought
    assert [len(_images(c)) for c in chunks] == [0, 0, 1]
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.thoughts_token_count


def test_blocked_prompt(client: genai.Client) -> None:
    response = client.models.generate_content(model=FLASH, contents="draw something forbidden")
    assert not response.candidates
    assert response.prompt_feedback.block_reason == types.BlockedReason.PROHIBITED_CONTENT


def test_image_safety_finish_reason(client: genai.Client) -> None:
    response = client.models.generate_content(model=FLASH, contents="an unsafe image")
    assert response.candidates[0].finish_reason == types.FinishReason.IMAGE_SAFETY
    assert not _images(response)


def test_forced_429_and_503(client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as too_many:
        client.models.generate_content(model=FLASH, contents="a cat [emulator:fault=429]")
    assert too_many.value.code == 429 and too_many.value.status == "RESOURCE_EXHAUSTED"
    details = too_many.value.details["error"]["details"]
    assert any(d["@type"].endswith("google.rpc.RetryInfo") for d in details)
    with pytest.raises(errors.ServerError) as unavailable:
        client.models.generate_content(model=FLASH, contents="a cat [emulator:fault=503]")
    assert unavailable.value.code == 503


def test_fault_by_header_through_sdk_http_options(emulator) -> None:
    opts = types.HttpOptions(base_url=emulator.base_url, headers={"x-emulator-fault": "500"})
    client = genai.Client(api_key="x", http_options=opts)
    with pytest.raises(errors.ServerError) as caught:
        client.models.generate_content(model=FLASH, contents="a cat")
    assert caught.value.code == 500
