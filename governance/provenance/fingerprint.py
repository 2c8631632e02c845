"""Perceptual fingerprints of an image: PDQ and the ISCC Image-Code, for finding stripped copies.

Two standard, published algorithms, computed by well-kept implementations:

- **PDQ** (Meta's 256-bit perceptual hash, the hash-sharing standard of trust-and-safety teams),
  through ``pdqhash`` (bindings to Meta's C++; its C++ entry is called with the luminance
  computed in strips: the comment at ``_PDQ_SYMBOL`` says why). The image is first scaled so its
  longer side is at most 512 px, as PDQ's own reference tools do: the hash reads a 64×64
  luminance grid, so the pixels beyond that change nothing but the time. PDQ also reports a
  quality (0–100); below 50 the image is too flat for its hash to mean much (Meta's guidance),
  and a lookup says so.
- **ISCC Image-Code** (ISO 24138 Content-Code Image, 64 bits, algorithm v0): ``iscc-core``'s
  ``gen_image_code``, its DCT run on numpy rows (``image_code``: the same operations in the
  same order, so the same code, bit for bit; tests/test_fingerprints.py compares them). Its
  input is normalised as the ISCC SDK's reference normalisation does: EXIF orientation applied,
  transparency over white, a uniform border trimmed, grayscale, 32×32 bicubic — from the decoded
  image itself, so the code is the SDK's for the same file (an earlier shortcut through PDQ's
  512 px reduction gave codes 2–8 bits off for 1024² PNGs). This is
  the code the ``c2pa.soft-binding`` assertion carries
  (``alg`` ``io.iscc.v0`` on the C2PA soft-binding algorithm list).

``fingerprint`` is blocking (decoding and two DCTs): callers run it in a worker thread. It returns
None for bytes Pillow cannot decode as an image — a fingerprint is an aid to lookup, never a
reason to refuse a turn.

Decoding is most of its cost, and for a PNG most of the decoding is inflating the IDAT stream.
``inflated_png`` inflates it with ISA-L (``isal``, several times faster than zlib) and hands
Pillow the same PNG with that stream stored uncompressed: Pillow still parses every chunk and
undoes the scanline filters, so the pixels are exactly Pillow's own (tests/test_fingerprints.py
holds that). Every step gives the same pixels, hashes and codes as the plain Pillow, pdqhash
and iscc-core calls would; docs/performance.md ("Fingerprints") has the cost of each step.
"""

from __future__ import annotations

import ctypes
import io
import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import iscc_core
import numpy as np
import pdqhash
import pdqhash.bindings as pdqhash_bindings
from isal import isal_zlib
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

log = logging.getLogger("custody")

PDQ_SIDE = 512  # the longer side PDQ's input is scaled to
PDQ_BITS = 256
ISCC_BITS = 64
ISCC_ALG = "io.iscc.v0"  # the C2PA soft-binding algorithm list's name for ISO 24138 v0
PDQ_MIN_QUALITY = 50  # below this PDQ's own guidance says the hash is not to be trusted


@dataclass(frozen=True)
class Fingerprint:
    """An image's PDQ hash (64 hex digits), its PDQ quality and its ISCC Image-Code."""

    pdq: str
    pdq_quality: int
    iscc: str

    def to_dict(self) -> dict[str, str | int]:
        return {"pdq": self.pdq, "pdq_quality": self.pdq_quality, "iscc": self.iscc}


def fingerprint(data: bytes) -> Fingerprint | None:
    """Both fingerprints of an encoded image (PNG, JPEG, WebP, ...); None when not decodable."""
    return staged_fingerprint(data, lambda _iscc: None)


def staged_fingerprint(data: bytes, on_iscc: Callable[[str | None], None]) -> Fingerprint | None:
    """``fingerprint``, telling ``on_iscc`` the ISCC Image-Code (None: there is none) as soon as
    it is known, before PDQ is computed: a signer waiting for the code (the manifest's soft
    binding) starts while PDQ runs, on another core (PDQ's C++ runs without the GIL).

    ``on_iscc`` is called exactly once. Should PDQ fail after the code was told (a decoded image
    whose ISCC could be computed and whose PDQ could not: not seen on any test image), the
    result is None, as for an image no hash can read."""
    try:
        with Image.open(io.BytesIO(inflated_png(data) or data)) as image:
            # A JPEG decodes straight at 1/2, 1/4 or 1/8 scale, never below 512 px.
            image.draft("RGB", (PDQ_SIDE, PDQ_SIDE))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # not copied when nothing is to turn
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        log.info("fingerprint: not a decodable image (%s)", type(exc).__name__)
        on_iscc(None)
        return None
    told = False
    try:
        iscc = _iscc(image)
        told = True
        on_iscc(iscc)
        return Fingerprint(*_pdq(_reduced(image)), iscc=iscc)
    except Exception:  # a decoded image a hash cannot read: looked up by its bytes only
        log.warning("fingerprint: hashing a decoded %s image failed", image.mode, exc_info=True)
        if not told:
            on_iscc(None)
        return None


def _reduced(image: Image.Image) -> Image.Image:
    """``image`` with its longer side reduced to at most ``PDQ_SIDE``: what PDQ reads.

    By whole factors a box average (``Image.reduce``: a 1024² image becomes 512² in ~1 ms
    against ~6.5 ms for a bilinear resample of the same), the rest bilinear. PDQ's reference
    tools scale down first too; against PDQ of the full-size image, this reduction and the
    bilinear one it replaced differ by the same number of bits on every photograph of
    tests/fixtures/photos at 1024 and 2048 px (docs/performance.md, "Fingerprints").
    """
    if max(image.size) <= PDQ_SIDE:
        return image
    factor = max(image.size) // PDQ_SIDE
    if factor >= 2:
        image = image.reduce(factor)
    if max(image.size) > PDQ_SIDE:  # in place: the ISCC was read from the image before
        image.thumbnail((PDQ_SIDE, PDQ_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return image


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_APNG_CHUNKS = (b"acTL", b"fcTL", b"fdAT")
# isal's stub declares its error as an Exception instance; at run time it is the class.
_INFLATE_ERROR: type[Exception] = isal_zlib.IsalError  # type: ignore[assignment]


def inflated_png(data: bytes) -> bytes | None:
    """``data`` with its IDAT stream inflated by ISA-L and stored uncompressed in one IDAT chunk
    (every other chunk kept, in order), or None to let Pillow decode ``data`` itself: not a PNG,
    an interlaced or animated one, chunks out of place, more pixels than Pillow's limit, or a
    stream that does not hold exactly the scanlines the header declares."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    view = memoryview(data)
    pos, end = 8, len(data)
    header: bytes | None = None
    first = last = 0
    idat: list[memoryview] = []
    while pos + 12 <= end:
        length = int.from_bytes(view[pos : pos + 4], "big")
        kind = bytes(view[pos + 4 : pos + 8])
        following = pos + 12 + length
        if following > end or kind in _APNG_CHUNKS:
            return None
        if kind == b"IHDR" and pos == 8 and length == 13:
            header = bytes(view[pos + 8 : pos + 21])
        elif kind == b"IDAT":
            if idat and last != pos:  # IDAT chunks must follow each other
                return None
            first, last = (first if idat else pos), following
            idat.append(view[pos + 8 : following - 4])
        pos = following
        if kind == b"IEND":
            break
    if header is None or not idat:
        return None
    width, height = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour, interlaced = header[8], header[9], header[12]
    limit = Image.MAX_IMAGE_PIXELS
    if interlaced or colour not in _PNG_CHANNELS or (limit and width * height > limit):
        return None  # Pillow decodes it (and warns of or refuses a decompression bomb)
    scanlines = height * (1 + (width * _PNG_CHANNELS[colour] * depth + 7) // 8)
    raw = _inflated(idat, scanlines) if scanlines else None
    if raw is None:
        return None
    stored = _stored_zlib(raw)
    crc = isal_zlib.crc32(b"IDAT")
    for piece in stored:
        crc = isal_zlib.crc32(piece, crc)
    chunk = sum(map(len, stored)).to_bytes(4, "big") + b"IDAT"
    return b"".join((view[:first], chunk, *stored, crc.to_bytes(4, "big"), view[last:]))


def _inflated(idat: list[memoryview], scanlines: int) -> list[bytes] | None:
    """The first ``scanlines`` bytes the IDAT chunks' zlib stream inflates to, in the pieces
    ISA-L gives chunk by chunk, or None when the stream is broken or holds fewer bytes.

    Neither the stream nor the scanlines are joined: each would be a buffer of megabytes, and
    under the gateway's malloc settings (``CUSTODY_MALLOC_MMAP_THRESHOLD``, 1 MiB) every such
    buffer is a fresh mapping, faulted in page by page."""
    inflater = isal_zlib.decompressobj()
    pieces, room = [], scanlines
    try:
        for data in idat:
            piece = inflater.decompress(data, room)  # room > 0: 0 would mean "no limit"
            if piece:
                pieces.append(piece)
                room -= len(piece)
            if not room:  # the rest, if any, is beyond the declared image: not read
                return pieces
    except _INFLATE_ERROR:
        return None
    return None


_STORED_MAX = 0xFFFF  # the most one stored deflate block holds


def _stored_zlib(raw: list[bytes]) -> list[bytes | memoryview]:
    """The bytes of ``raw`` as one zlib stream of stored (uncompressed) deflate blocks, in
    pieces to join (RFC 1950/1951).

    It means what ``zlib.compress(b"".join(raw), 0)`` does, without that call's copy through
    the deflate window (1.5 ms of CPU for a 1024² RGB image, and a 3 MB buffer); the Adler-32 is
    ISA-L's. Pillow inflates these blocks with a copy and unfilters the scanlines as ever."""
    pieces: list[bytes | memoryview] = [b"\x78\x01"]  # deflate, 32 KiB window, no dictionary
    adler = 1
    for n, piece in enumerate(raw):
        adler = isal_zlib.adler32(piece, adler)
        view = memoryview(piece)
        for start in range(0, len(piece), _STORED_MAX):
            block = view[start : start + _STORED_MAX]
            final = n == len(raw) - 1 and start + _STORED_MAX >= len(piece)
            size = len(block)  # LEN, then NLEN (its one's complement), little-endian
            header = size.to_bytes(2, "little") + (size ^ 0xFFFF).to_bytes(2, "little")
            pieces += (b"\x01" if final else b"\x00", header, block)
    pieces.append(adler.to_bytes(4, "big"))
    return pieces


def _pdq(image: Image.Image) -> tuple[str, int]:
    """PDQ hash (hex, bit 0 of Meta's ``Hash256`` first) and quality of ``image``."""
    rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    if _PDQ_FROM_LUMA is not None:
        return _pdq_from_luma(rgb, _PDQ_FROM_LUMA)
    bits, quality = pdqhash.compute(rgb)
    # pdqhash gives bit 0 first; the hex form writes bit 255 first.
    value = int("".join("1" if b else "0" for b in reversed(bits.tolist())), 2)
    return f"{value:064x}", int(quality)


# ``pdqhash.compute`` is a Cython wrapper round Meta's C++: it computes the luminance
# (0.299 R + 0.587 G + 0.114 B in float64, then float32) with numpy over the whole image, in
# temporaries of 1–2 MB (8 MB for a 512² image), and calls ``pdqHash256FromFloatLuma``. Under
# the gateway's malloc settings (``CUSTODY_MALLOC_MMAP_THRESHOLD``, 1 MiB) each temporary is a
# fresh mapping, faulted in page by page: ~8 ms a 512² hash, against ~3.5 ms with glibc's
# dynamic threshold. The extension exports that C++ function (its mangled name spells its
# parameter types: another signature would be another name, and None here); ``_pdq_from_luma``
# computes the same luminance 128 rows at a time and calls it (~5 ms under the gateway's
# settings): the same numbers in, the same hash out (tests/test_fingerprints.py compares them).
# Without the symbol ``pdqhash.compute`` does it all, as before.
_PDQ_SYMBOL = (
    "_ZN8facebook3pdq7hashing23pdqHash256FromFloatLumaEPfS2_iiPA64_fS4_PA16_fRNS1_7Hash256ERi"
)
_LUMA_ROWS = 128  # 512 KiB of float64 a strip of a 512 px wide image: from the heap


def _pdq_entry() -> Any | None:
    """``facebook::pdq::hashing::pdqHash256FromFloatLuma`` in pdqhash's extension, or None.

    Through ``CDLL``: the call releases the GIL, so the hashes of several images (a turn's
    inputs and outputs, other turns') run on several cores, and a signer beside it is not held
    up. That is safe because the function reads and writes only the buffers it is given (numpy
    arrays the caller keeps alive for the call) and a DCT matrix it fills on its first call,
    which is made here, once, before any other thread can reach the entry."""
    try:
        entry = ctypes.CDLL(pdqhash_bindings.__file__)[_PDQ_SYMBOL]
    except (OSError, AttributeError, TypeError):
        return None
    pointer, count = ctypes.c_void_p, ctypes.c_int
    entry.argtypes = [pointer, pointer, count, count, pointer, pointer, pointer, pointer, pointer]
    entry.restype = None
    _pdq_from_luma(np.zeros((64, 64, 3), np.uint8), entry)  # the first call, on one thread
    return entry


def _pdq_from_luma(rgb: np.ndarray, entry: Any) -> tuple[str, int]:
    """What ``pdqhash.compute`` returns for ``rgb`` (rows × columns × 3, uint8), as hex."""
    rows, columns = rgb.shape[:2]
    luma = np.empty((rows, columns), np.float32)
    for top in range(0, rows, _LUMA_ROWS):  # pdqhash's expression, in its order, per strip
        strip = rgb[top : top + _LUMA_ROWS]
        y = strip[:, :, 0] * 0.299
        y += strip[:, :, 1] * 0.587
        y += strip[:, :, 2] * 0.114
        luma[top : top + _LUMA_ROWS] = y  # float64 -> float32, as ``astype("float32")``
    scratch = np.empty_like(luma)
    dct = [np.empty(shape, np.float32) for shape in ((64, 64), (16, 64), (16, 16))]
    words, quality = np.zeros(16, "<u2"), np.zeros(1, np.intc)  # Hash256 (16 × uint16), int
    entry(luma.ctypes.data, scratch.ctypes.data, rows, columns,
          *(b.ctypes.data for b in dct), words.ctypes.data, quality.ctypes.data)  # fmt: skip
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")  # bits[k]: bit k of the hash
    return np.packbits(bits).tobytes().hex(), int(quality[0])


_PDQ_FROM_LUMA = _pdq_entry()


def _iscc(image: Image.Image) -> str:
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)  # transparency over white, as the SDK does
    trimmed = _trim_border(image if image.mode == "RGB" else image.convert("RGB"))
    pixels = trimmed.convert("L").resize((32, 32), Image.Resampling.BICUBIC)
    return image_code(pixels.tobytes())


def image_code(pixels: bytes) -> str:
    """``iscc_core.gen_image_code`` of 32×32 gray pixels (64 bits), the same doubles computed.

    iscc-core's DCT (``alg_dct``, Nayuki's fast recursive DCT) runs on Python lists, 64 of
    them for one code (2 ms); ``_dct_rows`` does its operations, in its order, on all rows of a
    numpy array at once (0.2 ms). IEEE-754 doubles give the same result for the same operation
    on the same operands, so the DCT matrix, its median and the bits are iscc-core's own
    (tests/test_fingerprints.py compares the two on photographs and on random pixels)."""
    gray = np.frombuffer(pixels, np.uint8).reshape(32, 32).astype(float)
    matrix = _dct_rows(_dct_rows(gray).T).T  # rows, then columns, as soft_hash_image_v0
    corner = matrix[:8, :8].ravel().tolist()  # the first 64 bits: the upper-left 8×8 block
    median = statistics.median(corner)
    bits = int("".join("1" if value > median else "0" for value in corner), 2)
    code = iscc_core.encode_component(
        mtype=iscc_core.MT.CONTENT,
        stype=iscc_core.ST_CC.IMAGE,
        version=iscc_core.VS.V0,
        bit_length=ISCC_BITS,
        digest=bits.to_bytes(ISCC_BITS // 8, "big"),
    )
    return f"ISCC:{code}"


# alg_dct's divisors, cos((i + 0.5)·π / n)·2, for each length its recursion reaches
_DCT_DIVISORS = {
    n: np.array([math.cos((i + 0.5) * math.pi / n) * 2.0 for i in range(n // 2)])
    for n in (2, 4, 8, 16, 32)
}


def _dct_rows(rows: np.ndarray) -> np.ndarray:
    """``iscc_core.alg_dct`` of every row of ``rows`` (float64), operation for operation: the
    halves' sums and scaled differences are transformed together, one level at a time."""
    count, n = rows.shape
    if n == 1:
        return rows
    half = n // 2
    head, tail = rows[:, :half], rows[:, : half - 1 : -1]  # v[i], v[-(i + 1)]
    both = _dct_rows(np.concatenate((head + tail, (head - tail) / _DCT_DIVISORS[n])))
    alpha, beta = both[:count], both[count:]
    out = np.empty_like(rows)
    out[:, 0::2] = alpha
    out[:, 1:-1:2] = beta[:, :-1] + beta[:, 1:]
    out[:, -1] = beta[:, -1]
    return out


def _trim_border(image: Image.Image) -> Image.Image:
    """Cut a uniform border (the colour of the top-left pixel) off, as the ISCC SDK does.

    The box of the pixels unlike the top-left one is the whole image exactly when each of the
    four edges holds such a pixel: that is read first from the edges alone, and only an image with
    a uniform edge is compared pixel by pixel (a photograph almost never has one)."""
    width, height = image.size
    corner = image.crop((0, 0, 1, 1)).tobytes()
    edges = ((0, 0, width, 1), (0, height - 1, width, height), (0, 0, 1, height),
             (width - 1, 0, width, height))  # fmt: skip
    if all(image.crop(edge).tobytes() != corner * ((edge[2] - edge[0]) * (edge[3] - edge[1]))
           for edge in edges):  # fmt: skip
        return image
    background = Image.new(image.mode, image.size, image.getpixel((0, 0)))
    diff = ImageChops.difference(image, background)
    box = ImageChops.add(diff, diff).getbbox()
    if box is None or box == (0, 0, *image.size):
        return image
    return image.crop(box)


def pdq_distance(a: str, b: str) -> int:
    """Bits in which two PDQ hashes (hex) differ: 0 identical, about 128 unrelated."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def iscc_distance(a: str, b: str) -> int:
    """Bits in which two ISCC Image-Codes differ (of 64)."""
    return int(iscc_core.iscc_distance(a, b))
