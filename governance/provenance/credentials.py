"""One answer to "does this image carry C2PA Content Credentials?", for policy and for signing.

Policy facts (``has_content_credentials`` of every input) and the signer (whether to read an
upstream output's manifest before signing) ask the same question of the same bytes; a substring
scan and a structural walk can disagree on them (a PNG whose pixels spell ``c2pa``), so both call
this one function. It reads no pixels and imports no c2pa: a signal that a manifest store is
present, which the signer then validates for real.
"""

from __future__ import annotations


def carries_content_credentials(data: bytes) -> bool:
    """Whether the file has a place a C2PA manifest lives, found by walking its structure
    (PNG chunks, JPEG segments before the scan, RIFF chunks) instead of scanning every byte."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        pos = 8
        while pos + 8 <= len(data):
            length = int.from_bytes(data[pos : pos + 4], "big")
            ctype = data[pos + 4 : pos + 8]
            if ctype == b"caBX":
                return True
            if ctype == b"IEND":
                return False
            pos += 12 + length
        return False
    if data.startswith(b"\xff\xd8"):
        pos = 2
        while pos + 4 <= len(data) and data[pos] == 0xFF:
            marker = data[pos + 1]
            if marker == 0xDA:  # start of scan: no metadata segments after it
                return False
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            if marker == 0xEB and b"c2pa" in data[pos : pos + 2 + length]:
                return True
            pos += 2 + length
        return False
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        pos = 12
        while pos + 8 <= len(data):
            if data[pos : pos + 4] == b"C2PA":
                return True
            length = int.from_bytes(data[pos + 4 : pos + 8], "little")
            pos += 8 + length + (length & 1)
        return False
    return b"c2pa" in data  # other formats (BMFF, ...): look everywhere
