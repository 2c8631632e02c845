"""What a blob of input bytes really is, from its first bytes, whatever the caller declared.

Contract: ``sniff(data)`` names the type the bytes carry (``image/png``, ``application/pdf``,
``text/plain``, ...) or returns None; ``expected_kind(declared)`` is the sniffed type a declared
MIME type must have, or None when Custody does not accept that declared type. ``heif_size`` reads
an HEIC/HEIF image's dimensions from its ISOBMFF ``ispe`` property, without decoding.

Why: a declared type is the caller's claim. An image declared as ``application/pdf`` would skip
every image check, and a text declared as an image would reach a decoder; the bytes decide.
"""

from __future__ import annotations

import struct

# ISOBMFF brands of HEIF still images (ISO/IEC 23008-12) that Custody accepts as HEIC/HEIF.
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_TEXT_CONTROLS = frozenset(range(0, 32)) - {9, 10, 12, 13}

# Declared non-image types Custody forwards, and the sniffed type their bytes must have.
_DECLARED: dict[str, str] = {
    "application/pdf": "application/pdf",
    "text/plain": "text/plain",
    "text/csv": "text/plain",
    "text/markdown": "text/plain",
    "text/html": "text/plain",
    "text/xml": "text/plain",
    "text/rtf": "text/plain",
    "application/json": "text/plain",
    "application/xml": "text/plain",
    "audio/wav": "audio/wav",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/mpeg": "audio/mpeg",
    "audio/mp3": "audio/mpeg",
    "audio/ogg": "audio/ogg",
    "audio/flac": "audio/flac",
    "audio/mp4": "video/mp4",
    "audio/m4a": "video/mp4",
    "video/mp4": "video/mp4",
    "video/quicktime": "video/mp4",
    "video/webm": "video/webm",
}


def accepted_non_image_types() -> list[str]:
    """The declared non-image types Custody accepts, for error messages."""
    return sorted(_DECLARED)


def expected_kind(declared: str) -> str | None:
    """The sniffed type the bytes of a non-image input declared as ``declared`` must have."""
    return _DECLARED.get(declared)


def sniff(data: bytes) -> str | None:
    """The type the bytes carry, by their magic numbers (UTF-8 text last); None if unknown."""
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[4:8] == b"ftyp":
        return "image/heic" if is_heif(data) else "video/mp4"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if _is_text(data):
        return "text/plain"
    return None


def _is_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not any(ord(c) in _TEXT_CONTROLS for c in text[:65536])


def is_heif(data: bytes) -> bool:
    """True when the bytes open with an ISOBMFF ``ftyp`` box naming a HEIF still-image brand."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return False
    (size,) = struct.unpack(">I", data[:4])
    size = min(max(size, 16), len(data))
    brands = [data[8:12]] + [data[i : i + 4] for i in range(16, size - 3, 4)]
    return any(b in HEIF_BRANDS for b in brands)


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """The ISOBMFF boxes in ``data[start:end]`` as (type, payload start, payload end)."""
    out: list[tuple[bytes, int, int]] = []
    pos = start
    while pos + 8 <= end:
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        header = 8
        if size == 1:
            if pos + 16 > end:
                break
            (size,) = struct.unpack(">Q", data[pos + 8 : pos + 16])
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            break
        out.append((kind, pos + header, pos + size))
        pos += size
    return out


def _ipco(data: bytes) -> list[tuple[bytes, int, int]]:
    """The item properties (``meta/iprp/ipco`` children) of an ISOBMFF file."""
    for kind, start, end in _boxes(data, 0, len(data)):
        if kind != b"meta":
            continue
        for k2, s2, e2 in _boxes(data, start + 4, end):  # meta is a full box: skip version+flags
            if k2 != b"iprp":
                continue
            for k3, s3, e3 in _boxes(data, s2, e2):
                if k3 == b"ipco":
                    return _boxes(data, s3, e3)
    return []


def heif_size(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, decoded pixels) of a HEIF image without decoding it; None if unknown.

    The decoded size is the largest ``ispe`` (the primary image: a grid's ``ispe`` is the whole
    picture; tiles and thumbnails are smaller) — what a decompression-bomb check must judge. The
    displayed size is that, cropped by a clean aperture (``clap``) and turned by ``irot``.
    """
    coded: tuple[int, int] | None = None
    clap: tuple[int, int] | None = None
    turned = False
    for kind, start, end in _ipco(data):
        if kind == b"ispe" and end - start >= 12:
            width, height = struct.unpack(">II", data[start + 4 : start + 12])
            if coded is None or width * height > coded[0] * coded[1]:
                coded = (width, height)
        elif kind == b"clap" and end - start >= 16:
            wn, wd, hn, hd = struct.unpack(">IIII", data[start : start + 16])
            if wd and hd:
                clap = (round(wn / wd), round(hn / hd))
        elif kind == b"irot" and end - start >= 1:
            turned = data[start] & 0x3 in (1, 3)
    if coded is None:
        return None
    width, height = coded
    if clap is not None and 0 < clap[0] <= width and 0 < clap[1] <= height:
        width, height = clap
    if turned:
        width, height = height, width
    return width, height, coded[0] * coded[1]
