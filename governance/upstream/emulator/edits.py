"""Deterministic Pillow edits chosen from the words of the prompt.

Keywords (case-insensitive; several apply in the order they appear in the prompt):

==========================================  ==============================================  ======
keyword                                     edit                                            cost
==========================================  ==============================================  ======
a colour name (red, teal, blue, gold, …)    blend 45 % toward that colour ("teal tint")     2 ms
sepia                                       grayscale, then brown-to-cream colorize         3 ms
grayscale / greyscale / black and white     luminance only                                  1 ms
rotate [N°] [counterclockwise]              clockwise N° (default 90; exact for 90s)        3 ms
                                            (other angles: bilinear, canvas expanded)      22 ms
flip / mirror [vertical / upside down]      mirror left-right (or top-bottom)             0.3 ms
blur                                        Gaussian blur, radius 4                        29 ms
brighten / lighter / more light ·           brightness ×1.35 · ×0.65                        2 ms
darken / darker / dim / less light
more / boost contrast · less contrast /     contrast ×1.5 · ×0.6                            3 ms
flatten / soften / muted
vignette                                    edges darkened towards the corners (to 40 %)    9 ms
add [a|an|the] THING                        a visible mark: a filled disc (colour from      1 ms
                                            THING's hash, white rim) at the centre
remove / erase / delete THING               a visible patch: the centre quarter filled      1 ms
                                            with the mean colour of its surroundings
crop [square]                               centre crop to 75 % (or the centred square)   0.1 ms
invert / negative                           colour negative                                 1 ms
caption 'TEXT' / add text "TEXT"            TEXT drawn on a dark band at the bottom         1 ms
(2+ input images)                           average blend (3 images) · grid if "collage"   12 · 7 ms
==========================================  ==============================================  ======

Costs: measured on this project's 2-core machines for a 1024×1024 RGB photo, pixels only. Around
them every edit pays decoding the input (PNG 22 ms, JPEG 2.5 ms) and encoding the PNG output
(49 ms: zlib level 1 with the RLE strategy, 1.37 MB; Pillow's default level 6 costs ~200 ms for
2 % fewer bytes). A whole "make it teal" request on a 1024² PNG (1.8 MB of JSON) costs 77 ms
in-process, of which JSON and base64 are ~4 ms. Without an input image the emulator generates a
gradient coloured from the prompt's hash (1024×1024 unless ``imageConfig.aspectRatio`` /
``imageSize`` say otherwise; 4 ms before encoding). With no keyword and one input image, the
input bytes come back unchanged (header check only, no decode, no re-encode: 4 ms per request).
Inputs are converted to RGB (alpha is dropped); the output is PNG unless
``imageConfig.outputMimeType`` asks for image/jpeg or image/webp.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import zlib
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 80, 220), "teal": (0, 128, 128),
    "yellow": (240, 220, 40), "orange": (245, 140, 20), "purple": (128, 40, 160),
    "violet": (140, 80, 220), "pink": (240, 120, 170), "magenta": (220, 0, 200),
    "cyan": (0, 200, 220), "turquoise": (64, 224, 208), "gold": (212, 175, 55),
    "golden": (212, 175, 55), "brown": (120, 72, 30),
}  # fmt: skip
TINT_STRENGTH = 0.45
ASPECT_SIZES = {
    "1:1": (1024, 1024), "2:3": (832, 1248), "3:2": (1248, 832), "3:4": (864, 1184),
    "4:3": (1184, 864), "4:5": (896, 1152), "5:4": (1152, 896), "9:16": (768, 1344),
    "16:9": (1344, 768), "21:9": (1536, 672),
}  # fmt: skip
SIZE_SCALE = {"1K": 1, "2K": 2, "4K": 4}
OUTPUT_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
MAX_INPUT_PIXELS = 50_000_000

_CAPTION = re.compile(
    r"(?:caption|add (?:the )?text|write)\s*:?\s*(?:[\"'“‘](?P<quoted>[^\"'”’]+)[\"'”’]"
    r"|(?P<bare>[^,.;\n\"']+))",
    re.IGNORECASE,
)
_THING = (
    r"(?:a |an |some |the |more )?(?:(?P<colour>" + "|".join(COLOURS) + r")\s+)?"
    r"(?P<thing>[a-z][a-z-]*)"
)
_NOT_A_THING = (
    r"(?!(?:a |an |some |the |more )?"
    r"(?:text|caption|contrast|vignette|blur|light|brightness|tint)\b)"
)
_ADD = r"\b(?:add|put|place|insert)\s+" + _NOT_A_THING + _THING
_REMOVE = r"\b(?:remove|erase|delete|get rid of)\s+" + _THING
_ADD_RE = re.compile(_ADD, re.IGNORECASE)
_REMOVE_RE = re.compile(_REMOVE, re.IGNORECASE)
_LESS_CONTRAST = re.compile(
    r"\b(less|lower|reduce|decrease|soften|flatten|muted|softer)\b", re.IGNORECASE
)
_KEYWORDS: list[tuple[str, re.Pattern[str]]] = [
    ("tint", re.compile(r"\b(" + "|".join(COLOURS) + r")\b", re.IGNORECASE)),
    ("sepia", re.compile(r"\bsepia\b", re.IGNORECASE)),
    ("grayscale", re.compile(
        r"\b(gr[ae]y[- ]?scale|black[- ]and[- ]white|b&w|monochrome|desaturate)", re.IGNORECASE
    )),
    ("rotate", re.compile(r"\brotat(e|ed|ion)\b", re.IGNORECASE)),
    ("flip", re.compile(r"\b(flip|mirror|upside[- ]down)", re.IGNORECASE)),
    ("blur", re.compile(r"\bblur", re.IGNORECASE)),
    ("brighten", re.compile(
        r"\b(brighten|brighter|lighten|lighter|more light"
        r"|(?:increase|raise|boost) (?:the )?brightness)",
        re.IGNORECASE,
    )),
    ("darken", re.compile(
        r"\b(darken|darker|dimmer|dim|less light|(?:reduce|lower|decrease) (?:the )?brightness)",
        re.IGNORECASE,
    )),
    ("contrast", re.compile(r"\b(contrast|flatten|soften|muted|punchier)", re.IGNORECASE)),
    ("vignette", re.compile(r"\bvignett", re.IGNORECASE)),
    ("crop", re.compile(r"\bcrop", re.IGNORECASE)),
    ("invert", re.compile(r"\b(invert|negative)", re.IGNORECASE)),
]  # fmt: skip
_DEGREES = re.compile(r"(-?\d{1,3})\s*(?:°|deg\b|degrees?\b)|rotat\w*\s+(?:by\s+)?(-?\d{1,3})\b")
_COUNTER = re.compile(r"counter-?clockwise|anti-?clockwise|\bleft\b", re.IGNORECASE)
_VERTICAL = re.compile(r"vertical|upside[- ]down|top[- ]to[- ]bottom", re.IGNORECASE)
_GRID = re.compile(r"\b(collage|grid|mosaic|side[- ]by[- ]side)\b", re.IGNORECASE)


_NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "last": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip
_COUNT = r"(?P<n>\d{1,3}|" + "|".join(_NUMBER_WORDS) + r")"
_UNDO = re.compile(
    r"\b(?:undo|revert|roll\s*back|go\s+back|step\s+back)\b"
    r"(?:\s+(?:the|my|your|that|those|these|last|previous|by))*"
    r"(?:\s+" + _COUNT + r"\b)?",
    re.IGNORECASE,
)
MASK_WORD = re.compile(r"\bmasks?\b", re.IGNORECASE)


def undo_count(prompt: str) -> int | None:
    """How many changes a prompt asks to undo ("undo the last two changes", "go back 3 steps",
    "undo" → 1), or None when it asks for no undo."""
    match = _UNDO.search(prompt)
    if match is None:
        return None
    word = (match.group("n") or "1").lower()
    count = int(word) if word.isdigit() else _NUMBER_WORDS[word]
    return max(count, 1)


class UnreadableImage(ValueError):
    """Raised when an input image cannot be decoded (or is too large to decode safely)."""


@dataclass(frozen=True)
class EditStep:
    """One edit: ``kind`` names the operation, ``arg`` its parameter, ``label`` what we report."""

    kind: str
    arg: object
    label: str


def plan_edits(prompt: str) -> list[EditStep]:
    """The edits a prompt asks for, in the order its keywords appear."""
    found: list[tuple[int, EditStep]] = []
    caption = _CAPTION.search(prompt)
    scan = prompt
    if caption:
        text = (caption.group("quoted") or caption.group("bare") or "").strip()
        if text:
            found.append((caption.start(), EditStep("caption", text, f"caption “{text}”")))
            scan = prompt[: caption.start()] + " " * len(caption.group(0)) + prompt[caption.end() :]
    for kind, pattern in (("add", _ADD_RE), ("remove", _REMOVE_RE)):
        # An added or removed thing is a mark, not a tint: "add a red hat" draws a red disc.
        for match in pattern.finditer(scan):
            found.append((match.start(), _mark_step(kind, match)))
        scan = pattern.sub(lambda m: " " * len(m.group(0)), scan)
    for kind, pattern in _KEYWORDS:
        for match in pattern.finditer(scan):
            found.append((match.start(), _step(kind, match.group(0), scan)))
            if kind != "tint":
                break  # one step per kind, except several colours
    return [step for _, step in sorted(found, key=lambda item: item[0])]


def _mark_step(kind: str, match: re.Match[str]) -> EditStep:
    thing = match.group("thing").lower()
    colour = (match.group("colour") or "").lower()
    if kind == "remove":
        return EditStep("remove", thing, f"removed “{thing}” (patch)")
    named = f"{colour} {thing}" if colour else thing
    return EditStep("add", colour or thing, f"added a mark for “{named}”")


def _step(kind: str, word: str, prompt: str) -> EditStep:
    if kind == "tint":
        return EditStep("tint", COLOURS[word.lower()], f"{word.lower()} tint")
    if kind == "rotate":
        match = _DEGREES.search(prompt)
        degrees = int(match.group(1) or match.group(2)) if match else 90
        counter = bool(_COUNTER.search(prompt))
        clockwise = -degrees if counter else degrees
        label = f"rotate {abs(degrees)}° {'counterclockwise' if counter else 'clockwise'}"
        return EditStep("rotate", clockwise % 360, label)
    if kind == "flip":
        vertical = bool(_VERTICAL.search(prompt))
        return EditStep("flip", vertical, "flip top-bottom" if vertical else "mirror left-right")
    if kind == "crop":
        square = "square" in prompt.lower()
        return EditStep("crop", square, "centre crop (square)" if square else "centre crop 75%")
    if kind == "contrast":
        less = bool(_LESS_CONTRAST.search(prompt))
        return EditStep("contrast", less, "contrast ×0.6" if less else "contrast ×1.5")
    labels = {
        "brighten": "brighten ×1.35",
        "darken": "darken ×0.65",
        "blur": "blur (radius 4)",
        "vignette": "vignette",
    }
    return EditStep(kind, None, labels.get(kind, kind))


def open_image(data: bytes) -> Image.Image:
    """Decode an input image to RGB; UnreadableImage if it is not one or is too large."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_INPUT_PIXELS:
                raise UnreadableImage(f"input image too large: {img.width}x{img.height} pixels")
            return img.convert("RGB")
    except UnreadableImage:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(str(exc)) from None


def check_image_header(data: bytes) -> None:
    """Cheap check (header only) that ``data`` is an image of a safe size."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_INPUT_PIXELS:
                raise UnreadableImage(f"input image too large: {img.width}x{img.height} pixels")
    except UnreadableImage:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(str(exc)) from None


def apply_step(img: Image.Image, step: EditStep) -> Image.Image:
    """Apply one edit to an RGB image."""
    if step.kind == "tint":
        return Image.blend(img, Image.new("RGB", img.size, step.arg), TINT_STRENGTH)  # type: ignore[arg-type]
    if step.kind == "grayscale":
        return ImageOps.grayscale(img).convert("RGB")
    if step.kind == "sepia":
        return ImageOps.colorize(ImageOps.grayscale(img), (40, 26, 13), (255, 240, 192))
    if step.kind == "rotate":
        return _rotate_clockwise(img, int(step.arg))  # type: ignore[call-overload]
    if step.kind == "flip":
        return ImageOps.flip(img) if step.arg else ImageOps.mirror(img)
    if step.kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(4))
    if step.kind in ("brighten", "darken"):
        return ImageEnhance.Brightness(img).enhance(1.35 if step.kind == "brighten" else 0.65)
    if step.kind == "crop":
        return _centre_crop(img, bool(step.arg))
    if step.kind == "invert":
        return ImageOps.invert(img)
    if step.kind == "caption":
        return _caption(img, str(step.arg))
    if step.kind == "contrast":
        return ImageEnhance.Contrast(img).enhance(0.6 if step.arg else 1.5)
    if step.kind == "vignette":
        return _vignette(img)
    if step.kind == "add":
        return _add_mark(img, str(step.arg))
    if step.kind == "remove":
        return _remove_patch(img)
    raise ValueError(f"unknown edit {step.kind}")


def _rotate_clockwise(img: Image.Image, degrees: int) -> Image.Image:
    exact = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180,
             270: Image.Transpose.ROTATE_90}  # fmt: skip
    if degrees == 0:
        return img
    if degrees in exact:
        return img.transpose(exact[degrees])
    return img.rotate(-degrees, resample=Image.Resampling.BILINEAR, expand=True)


def _centre_crop(img: Image.Image, square: bool) -> Image.Image:
    w, h = img.size
    cw, ch = (min(w, h), min(w, h)) if square else (max(1, w * 3 // 4), max(1, h * 3 // 4))
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def centre_box(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) that add and remove marks: the centre quarter."""
    w, h = size
    return w * 3 // 8, h * 3 // 8, max(w * 5 // 8, w * 3 // 8 + 1), max(h * 5 // 8, h * 3 // 8 + 1)


def _vignette(img: Image.Image) -> Image.Image:
    # A radial gain, 1.0 at the centre falling to 0.4 at the corners, built small and scaled up.
    gain = Image.radial_gradient("L").resize(img.size, Image.Resampling.BILINEAR)
    # radial_gradient is 0 at the centre and 255 at radius 128 (the edges' midpoints).
    gain = gain.point(lambda v: 255 - min(153, max(0, v - 96) * 153 // 159))
    black = Image.new("RGB", img.size)
    return Image.composite(img, black, gain)


def mark_colour(thing: str) -> tuple[int, int, int]:
    """The colour of the disc that "add THING" draws (from THING's hash, never near-grey)."""
    if thing in COLOURS:
        return COLOURS[thing]
    digest = hashlib.sha256(thing.encode()).digest()
    channels = [64 + digest[i] % 160 for i in range(3)]
    channels[digest[3] % 3] = 255
    return channels[0], channels[1], channels[2]


def _add_mark(img: Image.Image, thing: str) -> Image.Image:
    out = img.copy()
    left, top, right, bottom = centre_box(out.size)
    rim = max(1, min(out.size) // 100)
    ImageDraw.Draw(out).ellipse(
        (left, top, right - 1, bottom - 1), fill=mark_colour(thing), outline="white", width=rim
    )
    return out


def _remove_patch(img: Image.Image) -> Image.Image:
    out = img.copy()
    left, top, right, bottom = centre_box(out.size)
    w, h = right - left, bottom - top
    ring = img.crop(
        (max(0, left - w // 4), max(0, top - h // 4), min(img.width, right + w // 4),
         min(img.height, bottom + h // 4))
    )  # fmt: skip
    mean = ring.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    ImageDraw.Draw(out).rectangle((left, top, right - 1, bottom - 1), fill=mean)
    return out


def apply_mask(edited: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """Keep the edit where the mask is white, the original where it is black (grey blends).

    The mask is scaled to the image when their sizes differ; an edit that changed the image's
    size (crop, rotate by a non-180° angle) cannot be confined and is returned unmasked.
    """
    if edited.size != original.size:
        return edited
    grey = mask.convert("L")
    if grey.size != original.size:
        grey = grey.resize(original.size, Image.Resampling.NEAREST)
    return Image.composite(edited, original, grey)


def _caption(img: Image.Image, text: str) -> Image.Image:
    out = img.copy()
    draw = ImageDraw.Draw(out)
    size = max(10, out.height // 16)
    font = ImageFont.load_default(size=size)
    while size > 8 and draw.textlength(text, font=font) > out.width * 0.94:
        size = int(size * 0.85)
        font = ImageFont.load_default(size=size)
    band = int(size * 1.6)
    draw.rectangle((0, out.height - band, out.width, out.height), fill=(0, 0, 0))
    x = max(0, (out.width - int(draw.textlength(text, font=font))) // 2)
    draw.text((x, out.height - band + (band - size) // 2), text, font=font, fill=(255, 255, 255))
    return out


def combine(images: list[Image.Image], prompt: str) -> tuple[Image.Image, str]:
    """Several inputs → one image: a grid when the prompt says collage/grid, else the average."""
    size = images[0].size
    if _GRID.search(prompt):
        cols = math.ceil(math.sqrt(len(images)))
        rows = math.ceil(len(images) / cols)
        cell = (max(1, size[0] // cols), max(1, size[1] // rows))
        out = Image.new("RGB", size)
        for n, img in enumerate(images):
            out.paste(
                img.resize(cell, Image.Resampling.BILINEAR),
                ((n % cols) * cell[0], (n // cols) * cell[1]),
            )
        return out, f"collage of {len(images)} images ({cols}×{rows} grid)"
    out = images[0]
    for n, img in enumerate(images[1:], start=2):
        resized = img if img.size == size else img.resize(size, Image.Resampling.BILINEAR)
        out = Image.blend(out, resized, 1.0 / n)
    return out, f"blend of {len(images)} images (average)"


def generated_size(aspect_ratio: str | None, image_size: str | None) -> tuple[int, int]:
    """Output size of a generation from ``imageConfig`` (1024×1024 by default)."""
    w, h = ASPECT_SIZES.get(aspect_ratio or "1:1", ASPECT_SIZES["1:1"])
    scale = SIZE_SCALE.get((image_size or "1K").upper(), 1)
    return w * scale, h * scale


def generate(prompt: str, size: tuple[int, int]) -> Image.Image:
    """A deterministic gradient whose two colours come from the prompt's SHA-256."""
    digest = hashlib.sha256(prompt.encode()).digest()
    gradient = Image.linear_gradient("L").resize(size, Image.Resampling.BILINEAR)
    if digest[6] % 2:
        gradient = gradient.transpose(Image.Transpose.ROTATE_90).resize(size)
    return ImageOps.colorize(gradient, tuple(digest[0:3]), tuple(digest[3:6]))


def encode(img: Image.Image, mime_type: str) -> bytes:
    """Encode the output; PNG uses zlib level 1 with the RLE strategy (fast, deterministic)."""
    buffer = io.BytesIO()
    fmt = OUTPUT_FORMATS.get(mime_type, "PNG")
    if fmt == "PNG":
        img.save(buffer, "PNG", compress_level=1, compress_type=zlib.Z_RLE)
    else:
        img.save(buffer, fmt, quality=90)
    return buffer.getvalue()
