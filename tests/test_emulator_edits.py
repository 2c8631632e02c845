"""The emulator edits as the seeds describe, seen through Custody with the real google-genai SDK.

Each refinement is measured on the pixels Custody released (signed PNGs; the signature does not
touch pixels): a tint moves the mean colour towards its colour, light and contrast move the mean
and the spread of luminance, a vignette darkens the corners only, an added thing is a disc and a
removed one a flat patch at the centre, a mask confines the edit to its white part, and "undo the
last N changes" in a chat answers with the image of N versions earlier — the very bytes, checked
against the emulator directly, and the same pixels through Custody.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from google import genai
from google.genai import types
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageStat

from governance.upstream.embedded import ThreadedServer
from governance.upstream.emulator import create_emulator_app
from governance.upstream.emulator.edits import COLOURS, centre_box, mark_colour

FLASH = "gemini-2.5-flash-image"
SIZE = (160, 120)


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def _scene() -> Image.Image:
    """A textured mid-tone test card: gradients in red and green, a checker in blue."""
    img = Image.new("RGB", SIZE)
    px = img.load()
    for x in range(SIZE[0]):
        for y in range(SIZE[1]):
            checker = 60 if (x // 10 + y // 10) % 2 else 0
            px[x, y] = (70 + x * 110 // SIZE[0], 70 + y * 110 // SIZE[1], 90 + checker)
    return img


SCENE = _scene()
SCENE_PNG = _png(SCENE)


def _image_of(response: types.GenerateContentResponse) -> tuple[bytes, Image.Image]:
    parts = response.candidates[0].content.parts  # type: ignore[index,union-attr]
    data = next(p.inline_data.data for p in parts if p.inline_data and p.inline_data.data)  # type: ignore[union-attr]
    return data, Image.open(io.BytesIO(data)).convert("RGB")


def _edit(client: genai.Client, prompt: str, *extra: types.Part | str) -> Image.Image:
    contents: list[types.Part | str] = [
        types.Part.from_bytes(data=SCENE_PNG, mime_type="image/png"),
        *extra,
        prompt,
    ]
    response = client.models.generate_content(model=FLASH, contents=contents)
    return _image_of(response)[1]


def _luma(img: Image.Image, box: tuple[int, int, int, int] | None = None) -> ImageStat.Stat:
    return ImageStat.Stat((img.crop(box) if box else img).convert("L"))


def _distance_to(img: Image.Image, colour: tuple[int, int, int]) -> float:
    mean = ImageStat.Stat(img).mean
    return sum((m - c) ** 2 for m, c in zip(mean, colour, strict=True)) ** 0.5


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[genai.Client]:
    from tests.conftest import start_custody

    running = start_custody(tmp_path_factory.mktemp("custody"))
    try:
        yield running.client()  # type: ignore[misc]
    finally:
        running.stop()


def test_colour_tints_towards_the_named_colour(gateway: genai.Client) -> None:
    out = _edit(gateway, "make the sofa teal")
    assert out.size == SIZE
    assert _distance_to(out, COLOURS["teal"]) < 0.6 * _distance_to(SCENE, COLOURS["teal"])
    r, g, b = ImageStat.Stat(out).mean
    assert g > r and b > r  # teal is green and blue, no red


@pytest.mark.parametrize(
    ("prompt", "low", "high"),
    [("brighten it", 1.25, 1.45), ("more light please", 1.25, 1.45), ("darken it", 0.55, 0.75)],
)
def test_light_scales_the_mean_luminance(
    gateway: genai.Client, prompt: str, low: float, high: float
) -> None:
    ratio = _luma(_edit(gateway, prompt)).mean[0] / _luma(SCENE).mean[0]
    assert low < ratio < high


def test_contrast_widens_and_flatten_narrows_the_spread(gateway: genai.Client) -> None:
    spread = _luma(SCENE).stddev[0]
    assert _luma(_edit(gateway, "boost the contrast")).stddev[0] > 1.3 * spread
    flattened = _edit(gateway, "flatten the fabric")
    assert _luma(flattened).stddev[0] < 0.7 * spread
    assert abs(_luma(flattened).mean[0] - _luma(SCENE).mean[0]) < 6  # contrast, not light


def test_vignette_darkens_the_corners_not_the_centre(gateway: genai.Client) -> None:
    out = _edit(gateway, "add a vignette")
    corner, centre = (0, 0, 16, 12), centre_box(SIZE)
    assert _luma(out, corner).mean[0] < 0.6 * _luma(SCENE, corner).mean[0]
    assert abs(_luma(out, centre).mean[0] - _luma(SCENE, centre).mean[0]) < 2


def test_blur_removes_edges_and_crop_cuts_to_three_quarters(gateway: genai.Client) -> None:
    edges = ImageStat.Stat(SCENE.convert("L").filter(ImageFilter.FIND_EDGES)).mean[0]
    blurred = _edit(gateway, "blur the background")
    assert ImageStat.Stat(blurred.convert("L").filter(ImageFilter.FIND_EDGES)).mean[0] < 0.7 * edges
    assert _edit(gateway, "crop it").size == (SIZE[0] * 3 // 4, SIZE[1] * 3 // 4)


def test_add_draws_a_disc_and_remove_a_flat_patch_at_the_centre(gateway: genai.Client) -> None:
    box = centre_box(SIZE)
    cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
    added = _edit(gateway, "add a hat")
    assert added.getpixel((cx, cy)) == mark_colour("hat")
    changed = ImageChops.difference(added, SCENE).getbbox()
    assert changed is not None and box[0] <= changed[0] and changed[2] <= box[2]
    assert _edit(gateway, "add a red balloon").getpixel((cx, cy)) == COLOURS["red"]
    removed = _edit(gateway, "remove the lamp")
    assert ImageStat.Stat(removed.crop(box)).stddev == [0.0, 0.0, 0.0]  # one flat colour
    assert ImageChops.difference(removed, SCENE).getbbox() == box


def _left_half_mask() -> bytes:
    mask = Image.new("L", SIZE, 0)
    ImageDraw.Draw(mask).rectangle((0, 0, SIZE[0] // 2 - 1, SIZE[1] - 1), fill=255)
    return _png(mask)


def test_a_mask_confines_the_edit_to_its_white_part(gateway: genai.Client) -> None:
    mask = types.Part.from_bytes(data=_left_half_mask(), mime_type="image/png")
    out = _edit(gateway, "make it teal", "Use this mask (white = edit):", mask)
    left, right = (0, 0, SIZE[0] // 2, SIZE[1]), (SIZE[0] // 2, 0, SIZE[0], SIZE[1])
    assert ImageChops.difference(out.crop(right), SCENE.crop(right)).getbbox() is None
    teal = COLOURS["teal"]
    assert _distance_to(out.crop(left), teal) < 0.6 * _distance_to(SCENE.crop(left), teal)


def test_a_mask_alone_in_a_chat_turn_applies_to_the_image_in_the_history(
    gateway: genai.Client,
) -> None:
    chat = gateway.chats.create(model=FLASH)
    _, first = _image_of(chat.send_message([types.Part.from_bytes(data=SCENE_PNG,
                                                                  mime_type="image/png"),
                                            "make it gold"]))  # fmt: skip
    mask = types.Part.from_bytes(data=_left_half_mask(), mime_type="image/png")
    _, second = _image_of(chat.send_message(["here is the mask", mask, "darken it"]))
    right = (SIZE[0] // 2, 0, SIZE[0], SIZE[1])
    left = (0, 0, SIZE[0] // 2, SIZE[1])
    assert ImageChops.difference(second.crop(right), first.crop(right)).getbbox() is None
    assert _luma(second, left).mean[0] < 0.75 * _luma(first, left).mean[0]


def _chat_of_three_versions(client: genai.Client) -> tuple[object, list[bytes]]:
    """A chat: upload + "make the sofa teal", "flatten the fabric"; the images of each version."""
    chat = client.chats.create(model=FLASH)
    upload = types.Part.from_bytes(data=SCENE_PNG, mime_type="image/png")
    teal, _ = _image_of(chat.send_message([upload, "make the sofa teal"]))
    flat, _ = _image_of(chat.send_message("flatten the fabric"))
    return chat, [SCENE_PNG, teal, flat]


def _pixels(data: bytes) -> bytes:
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


def test_undo_in_a_chat_through_custody_returns_the_earlier_version(
    gateway: genai.Client,
) -> None:
    chat, versions = _chat_of_three_versions(gateway)
    assert len({_pixels(v) for v in versions}) == 3
    undone, _ = _image_of(chat.send_message("undo the last two changes"))  # type: ignore[attr-defined]
    assert _pixels(undone) == _pixels(versions[0])
    back, _ = _image_of(chat.send_message("now go back 1 step"))  # type: ignore[attr-defined]
    assert _pixels(back) == _pixels(versions[2])  # the history now ends with the undo's image


@pytest.fixture(scope="module")
def emulator() -> Iterator[ThreadedServer]:
    server = ThreadedServer(create_emulator_app()).start()
    try:
        yield server
    finally:
        server.stop()


def test_undo_answers_the_exact_bytes_of_the_earlier_model_image(emulator: ThreadedServer) -> None:
    opts = types.HttpOptions(base_url=emulator.base_url)
    client = genai.Client(api_key="x", http_options=opts)
    chat, versions = _chat_of_three_versions(client)
    undone, _ = _image_of(chat.send_message("go back one step"))  # type: ignore[attr-defined]
    assert undone == versions[1]  # the teal answer, byte for byte
    beyond, _ = _image_of(chat.send_message("undo the last 9 changes"))  # type: ignore[attr-defined]
    assert beyond == SCENE_PNG  # no further back than the upload
    log = httpx.get(f"{emulator.base_url}/emulator/requests").json()["requests"]
    assert "only 3 earlier version(s)" in log[-1]["summary"]


def test_undo_with_no_history_is_a_clear_400(emulator: ThreadedServer) -> None:
    client = genai.Client(api_key="x", http_options=types.HttpOptions(base_url=emulator.base_url))
    with pytest.raises(genai.errors.ClientError) as caught:
        client.models.generate_content(model=FLASH, contents="undo the last change")
    assert caught.value.code == 400 and "Nothing to undo" in str(caught.value.message)


def test_undo_in_a_gemini_3_chat_keeps_its_signatures_valid(emulator: ThreadedServer) -> None:
    client = genai.Client(api_key="x", http_options=types.HttpOptions(base_url=emulator.base_url))
    chat = client.chats.create(model="gemini-3-pro-image-preview")
    upload = types.Part.from_bytes(data=SCENE_PNG, mime_type="image/png")
    _image_of(chat.send_message([upload, "add a vignette"]))
    undone, _ = _image_of(chat.send_message("undo"))
    assert undone == SCENE_PNG
    parts = chat.get_history()[-1].parts or []
    assert any(p.thought_signature for p in parts if p.inline_data)  # a signed image part
    after, _ = _image_of(chat.send_message("make it gold"))  # the history's signatures verify
    assert after != SCENE_PNG
