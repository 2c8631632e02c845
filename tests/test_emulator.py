"""The Gemini emulator over HTTP: edits, blends, safety outcomes, faults, bad input, request log.

Most tests drive the ASGI app in-process (Starlette's TestClient); the ``cut`` fault needs a real
socket, so those run against a uvicorn server on a loopback port.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageStat

from governance.upstream.embedded import ThreadedServer
from governance.upstream.emulator import EmulatorConfig, create_emulator_app

FLASH = "gemini-2.5-flash-image"
PRO = "gemini-3-pro-image-preview"
GENERATE = f"/v1beta/models/{FLASH}:generateContent"


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    """A test image: left half ``colour``, right half white (so flips and rotations show)."""
    img = Image.new("RGB", size, (255, 255, 255))
    img.paste(colour, (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def _body(text: str, *images: bytes, urlsafe: bool = False) -> dict[str, object]:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    parts: list[dict[str, object]] = [
        {"inlineData": {"mimeType": "image/png", "data": encode(i).decode()}} for i in images
    ]
    return {"contents": [{"role": "user", "parts": [*parts, {"text": text}]}]}


def _parts(response: httpx.Response) -> list[dict[str, object]]:
    assert response.status_code == 200, response.text
    return response.json()["candidates"][0]["content"]["parts"]  # type: ignore[no-any-return]


def _image(response: httpx.Response) -> Image.Image:
    data = [p["inlineData"]["data"] for p in _parts(response) if "inlineData" in p]  # type: ignore[index]
    assert len(data) == 1
    return Image.open(io.BytesIO(base64.b64decode(data[0]))).convert("RGB")


def _mean(img: Image.Image) -> list[float]:
    return ImageStat.Stat(img).mean


@pytest.fixture()
def client() -> Iterator[TestClient]:
    with TestClient(create_emulator_app()) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    running = ThreadedServer(create_emulator_app()).start()
    try:
        yield running.base_url
    finally:
        running.stop()


def test_answer_is_gemini_shaped_and_labelled_as_the_emulator(client: TestClient) -> None:
    response = client.post(GENERATE, json=_body("make it teal", _png((200, 0, 0))))
    body = response.json()
    assert response.headers["x-custody-emulator"] == "1"
    assert body["modelVersion"] == f"custody-emulator-0.1 (emulating {FLASH})"
    assert body["responseId"]
    candidate = body["candidates"][0]
    assert candidate["finishReason"] == "STOP" and candidate["index"] == 0
    assert candidate["content"]["role"] == "model" and candidate["safetyRatings"]
    assert "teal tint" in candidate["content"]["parts"][0]["text"]
    assert not any("thought" in p or "thoughtSignature" in p for p in candidate["content"]["parts"])
    usage = body["usageMetadata"]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert {d["modality"] for d in usage["promptTokensDetails"]} == {"TEXT", "IMAGE"}


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_both_api_versions_and_the_model_list(client: TestClient, version: str) -> None:
    response = client.post(f"/{version}/models/{FLASH}:generateContent", json=_body("a cat"))
    assert _image(response).size == (1024, 1024)
    names = [m["name"] for m in client.get(f"/{version}/models").json()["models"]]
    assert names == [f"models/{FLASH}", f"models/{PRO}"]
    assert client.get(f"/{version}/models/{PRO}").json()["name"] == f"models/{PRO}"
    missing = client.get(f"/{version}/models/gpt-4")
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"


def test_colour_tint_grayscale_and_sepia(client: TestClient) -> None:
    red = _png((220, 0, 0))
    r, g, b = _image(client.post(GENERATE, json=_body("make it TEAL", red))).getpixel((5, 10))  # type: ignore[misc]
    assert r < 220 and g > 40 and b > 40 and abs(g - b) < 2  # 45 % toward teal (0, 128, 128)
    gray = _image(client.post(GENERATE, json=_body("Black and White please", red)))
    assert all(len(set(gray.getpixel((x, 10)))) == 1 for x in (5, 60))  # type: ignore[arg-type]
    sepia = _image(client.post(GENERATE, json=_body("sepia", red))).getpixel((60, 10))
    assert sepia[0] > sepia[1] > sepia[2]  # type: ignore[index]


def test_rotate_flip_crop_geometry(client: TestClient) -> None:
    image = _png((0, 0, 255), (64, 48))
    rotated = _image(client.post(GENERATE, json=_body("rotate it", image)))
    assert rotated.size == (48, 64)
    assert rotated.getpixel((24, 5))[2] > 200 and rotated.getpixel((24, 60))[0] > 200  # type: ignore[index]
    turned = _image(client.post(GENERATE, json=_body("rotate 180 degrees", image)))
    assert turned.size == (64, 48) and turned.getpixel((60, 10))[0] < 50  # type: ignore[index]
    mirrored = _image(client.post(GENERATE, json=_body("mirror it", image)))
    assert mirrored.getpixel((5, 10))[0] > 200 and mirrored.getpixel((60, 10))[0] < 50  # type: ignore[index]
    cropped = _image(client.post(GENERATE, json=_body("crop", image)))
    assert cropped.size == (48, 36)
    square = _image(client.post(GENERATE, json=_body("crop square", image)))
    assert square.size == (48, 48)


def test_blur_brighten_darken_invert_caption(client: TestClient) -> None:
    image = _png((0, 0, 0))
    blurred = _image(client.post(GENERATE, json=_body("blur", image)))
    assert 0 < blurred.getpixel((32, 10))[0] < 255  # type: ignore[index]
    grey = _png((100, 100, 100))
    assert _mean(_image(client.post(GENERATE, json=_body("brighten", grey))))[0] > 180
    assert _mean(_image(client.post(GENERATE, json=_body("darker", grey))))[0] < 170
    inverted = _image(client.post(GENERATE, json=_body("invert", image)))
    assert inverted.getpixel((5, 10)) == (255, 255, 255)
    white = _png((255, 255, 255), (400, 200))
    response = client.post(GENERATE, json=_body("caption 'HELLO WORLD'", white))
    captioned = _image(response)
    assert captioned.getpixel((2, 198)) == (0, 0, 0) and captioned.getpixel((2, 2)) == (255,) * 3
    assert "HELLO WORLD" in str(_parts(response)[0]["text"])


def test_several_keywords_apply_in_prompt_order(client: TestClient) -> None:
    response = client.post(
        GENERATE, json=_body("grayscale, then rotate 90, then red", _png((0,) * 3))
    )
    assert str(_parts(response)[0]["text"]).startswith(
        "Applied: grayscale, rotate 90° clockwise, red tint"
    )
    assert _image(response).size == (48, 64)


def test_blend_of_three_and_collage(client: TestClient) -> None:
    images = [_png((255, 0, 0), (60, 60)), _png((0, 255, 0), (30, 30)), _png((0, 0, 255))]
    blended = _image(client.post(GENERATE, json=_body("blend these", *images)))
    assert blended.size == (60, 60)
    r, g, b = blended.getpixel((5, 30))  # type: ignore[misc]
    assert all(70 <= c <= 100 for c in (r, g, b))  # each input weighs one third
    collage = _image(client.post(GENERATE, json=_body("a collage please", *images)))
    assert collage.getpixel((2, 2))[0] > 200 and collage.getpixel((32, 2))[1] > 200  # type: ignore[index]


def test_generation_without_input_follows_aspect_ratio_and_is_deterministic(
    client: TestClient,
) -> None:
    body = _body("a lighthouse at dusk")
    body["generationConfig"] = {"imageConfig": {"aspectRatio": "16:9"}}
    first, second = client.post(GENERATE, json=body), client.post(GENERATE, json=body)
    assert _image(first).size == (1344, 768)
    assert first.content == second.content
    other = client.post(GENERATE, json=_body("a lighthouse at dawn")).json()
    assert other["responseId"] != first.json()["responseId"]


def test_no_keyword_returns_the_input_bytes_unchanged(client: TestClient) -> None:
    image = _png((10, 20, 30))
    parts = _parts(client.post(GENERATE, json=_body("make it nicer", image, urlsafe=True)))
    assert base64.b64decode(parts[1]["inlineData"]["data"]) == image  # type: ignore[index]


def test_snake_case_fields_and_history_image_is_the_edit_target(client: TestClient) -> None:
    image = base64.urlsafe_b64encode(_png((0, 0, 200))).decode().rstrip("=")
    body = {
        "contents": [
            {"role": "user", "parts": [{"inline_data": {"mime_type": "image/png", "data": image}}]},
            {"role": "model", "parts": [{"text": "ok"}]},
            {"role": "user", "parts": [{"text": "rotate it"}]},
        ]
    }
    assert _image(client.post(GENERATE, json=body)).size == (48, 64)


@pytest.mark.parametrize(
    ("prompt", "finish", "has_image", "has_content"),
    [
        ("show an unsafe image", "IMAGE_SAFETY", False, False),
        ("a prohibited image", "IMAGE_PROHIBITED_CONTENT", False, False),
        ("no image please, just talk", "NO_IMAGE", False, True),
    ],
)
def test_safety_finish_reasons(client: TestClient, prompt, finish, has_image, has_content) -> None:
    candidate = client.post(GENERATE, json=_body(prompt)).json()["candidates"][0]
    assert candidate["finishReason"] == finish
    parts = candidate.get("content", {}).get("parts", [])
    assert bool(parts) == has_content
    assert not any("inlineData" in p for p in parts) and not has_image


def test_blocked_word_gives_prompt_feedback_and_no_candidates() -> None:
    app = create_emulator_app(EmulatorConfig(blocked_words=["dragon"]))
    with TestClient(app) as client:
        response = client.post(GENERATE, json=_body("Draw a DRAGON"))
        assert response.status_code == 200
        body = response.json()
        assert body["promptFeedback"] == {"blockReason": "PROHIBITED_CONTENT"}
        assert "candidates" not in body and "emulator" in body["modelVersion"]
        assert client.post(GENERATE, json=_body("draw something forbidden")).json()["candidates"]


@pytest.mark.parametrize(
    ("kind", "code", "status"),
    [("429", 429, "RESOURCE_EXHAUSTED"), ("500", 500, "INTERNAL"), ("503", 503, "UNAVAILABLE"),
     ("400", 400, "INVALID_ARGUMENT"), ("bogus", 400, "INVALID_ARGUMENT")],
)  # fmt: skip
def test_error_faults_by_directive_and_by_header(client: TestClient, kind, code, status) -> None:
    by_text = client.post(GENERATE, json=_body(f"a cat [emulator:fault={kind}]"))
    by_header = client.post(GENERATE, json=_body("a cat"), headers={"x-emulator-fault": kind})
    for response in (by_text, by_header):
        assert response.status_code == code
        error = response.json()["error"]
        assert error["code"] == code and error["status"] == status and error["message"]
    if kind == "429":
        details = {d["@type"]: d for d in by_text.json()["error"]["details"]}
        assert details["type.googleapis.com/google.rpc.RetryInfo"]["retryDelay"] == "2s"
        assert "type.googleapis.com/google.rpc.QuotaFailure" in details


def test_slow_fault_and_global_latency() -> None:
    with TestClient(create_emulator_app(EmulatorConfig(latency_ms=150))) as client:
        fast = client.post(GENERATE, json=_body("a cat"))
        slow = client.post(GENERATE, json=_body("a cat [emulator:fault=slow:300]"))
    assert fast.elapsed.total_seconds() >= 0.15
    assert slow.elapsed.total_seconds() >= 0.45 and slow.status_code == 200
    assert "[emulator" not in str(_parts(slow)[0]["text"])


def test_cut_fault_drops_the_connection(server: str) -> None:
    body = _body("a cat [emulator:fault=cut]")
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{server}{GENERATE}", json=body, timeout=10)
    url = f"{server}/v1beta/models/{PRO}:streamGenerateContent?alt=sse"
    events: list[bytes] = []
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("POST", url, json=body) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(line.encode())
    assert len(events) == 1 and b"finishReason" not in events[0]
    assert httpx.post(f"{server}{GENERATE}", json=_body("a cat")).status_code == 200


def test_stream_splits_thoughts_text_image_and_finishes_last(client: TestClient) -> None:
    response = client.post(
        f"/v1/models/{PRO}:streamGenerateContent?alt=sse", json=_body("teal", _png((9, 9, 9)))
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    raw = [e for e in response.content.split(b"\r\n\r\n") if e]
    chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in raw]
    kinds = [next(iter(c["candidates"][0]["content"]["parts"][0])) for c in chunks]
    assert chunks[0]["candidates"][0]["content"]["parts"][0]["thought"] is True
    assert kinds[1:] == ["text", "inlineData"]
    assert [("finishReason" in c["candidates"][0], "usageMetadata" in c) for c in chunks] == [
        (False, False), (False, False), (True, True)
    ]  # fmt: skip
    array = client.post(f"/v1/models/{PRO}:streamGenerateContent", json=_body("teal"))
    assert len(array.json()) == 3


def _pro_first_turn(client: TestClient) -> tuple[dict[str, object], dict[str, object]]:
    user = _body("make it teal", _png((200, 0, 0)))["contents"][0]  # type: ignore[index]
    response = client.post(f"/v1beta/models/{PRO}:generateContent", json={"contents": [user]})
    return user, response.json()["candidates"][0]["content"]


def test_thought_signatures_are_issued_and_verified(client: TestClient) -> None:
    user, model_turn = _pro_first_turn(client)
    parts = model_turn["parts"]  # type: ignore[index]
    signed = [p for p in parts if "thoughtSignature" in p]
    assert [p.get("thought") for p in parts[:2]] == [True, True] and len(signed) == 2
    url = f"/v1beta/models/{PRO}:generateContent"
    follow = {"role": "user", "parts": [{"text": "rotate it"}]}
    ok = client.post(url, json={"contents": [user, model_turn, follow]})
    assert _image(ok).size == (48, 64)  # edited the image of the previous model turn
    # The same signatures in URL-safe base64 are the same bytes: accepted.
    for part in signed:
        raw = base64.b64decode(part["thoughtSignature"])
        part["thoughtSignature"] = base64.urlsafe_b64encode(raw).decode()
    assert client.post(url, json={"contents": [user, model_turn, follow]}).status_code == 200
    raw = bytearray(base64.urlsafe_b64decode(signed[1]["thoughtSignature"]))
    raw[-1] ^= 1
    signed[1]["thoughtSignature"] = base64.b64encode(bytes(raw)).decode()
    bad = client.post(url, json={"contents": [user, model_turn, follow]})
    assert (
        bad.status_code == 400
        and "thought signature is not valid" in bad.json()["error"]["message"]
    )
    del signed[1]["thoughtSignature"]
    missing = client.post(url, json={"contents": [user, model_turn, follow]})
    assert missing.status_code == 400 and "missing a thought_signature" in missing.text


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[]", b"{}", b'{"contents": []}', b'{"contents": [{"parts": "x"}]}',
     b'{"contents": [{"role": "robot", "parts": []}]}',
     b'{"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "@@@"}}]}]}',
     b'{"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "aGVsbG8="}}]}]}',
     b'{"contents": [{"parts": [{"fileData": {"fileUri": "http://x/y.png"}}]}]}'],
)  # fmt: skip
def test_bad_input_is_a_gemini_400_never_a_500(client: TestClient, raw: bytes) -> None:
    response = client.post(GENERATE, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_decompression_bomb_is_rejected() -> None:
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, "PNG")
    with TestClient(create_emulator_app()) as client:
        response = client.post(GENERATE, json=_body("blur", buffer.getvalue()))
    assert response.status_code == 400 and "Unable to process input image" in response.text


def test_api_key_is_required_when_configured() -> None:
    with TestClient(create_emulator_app(EmulatorConfig(api_key="s3cret"))) as client:
        assert client.post(GENERATE, json=_body("a cat")).status_code == 403
        wrong = client.post(GENERATE, json=_body("a cat"), headers={"x-goog-api-key": "nope"})
        assert wrong.status_code == 403 and wrong.json()["error"]["status"] == "PERMISSION_DENIED"
        assert client.post(f"{GENERATE}?key=s3cret", json=_body("a cat")).status_code == 200
        ok = client.post(GENERATE, json=_body("a cat"), headers={"x-goog-api-key": "s3cret"})
        assert ok.status_code == 200


def test_unknown_routes_and_models_are_gemini_shaped(client: TestClient) -> None:
    assert client.get("/nowhere").json()["error"]["code"] == 404
    assert client.post("/v1/models/gpt-4:generateContent", json=_body("x")).status_code == 404
    assert client.post(f"/v1/models/{FLASH}:embedContent", json=_body("x")).status_code == 404


def test_request_log_records_every_request_and_resets(client: TestClient) -> None:
    client.post(GENERATE, json=_body("teal [emulator:fault=503]", _png((1, 2, 3))))
    client.post(GENERATE, content=b"{broken")
    client.post(GENERATE, json=_body("grayscale", _png((1, 2, 3)), _png((3, 2, 1))))
    entries = client.get("/emulator/requests").json()["requests"]
    assert [(e["status"], e["fault"], e["images"]) for e in entries] == [
        (503, "503", 1), (400, None, 0), (200, None, 2)
    ]  # fmt: skip
    assert entries[0]["text"] == "teal" and entries[0]["model"] == FLASH
    assert entries[2]["path"] == GENERATE and entries[2]["time"] > 0
    assert len(client.app.state.request_log) == 3  # type: ignore[attr-defined]
    assert client.delete("/emulator/requests").json() == {"cleared": 3}
    assert client.get("/emulator/requests").json()["requests"] == []


def test_same_request_same_bytes(client: TestClient) -> None:
    body = _body("teal, blur, caption 'x'", _png((5, 6, 7)))
    url = f"/v1beta/models/{PRO}:generateContent"
    assert client.post(url, json=body).content == client.post(url, json=body).content
