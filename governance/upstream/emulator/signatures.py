"""Thought signatures: opaque to callers, issued and checked by the emulator like Gemini 3 does.

A signature is ``MAGIC (4 bytes) ‖ nonce (16) ‖ HMAC-SHA256(secret, MAGIC ‖ nonce)[:16]`` — 36
bytes, sent base64 in ``thoughtSignature``. The nonce comes from the request digest, so the same
request gets the same signatures. Verification needs only the signature itself (not the image it
rode on), so a gateway may replace the images of a model turn (e.g. with signed copies) but must
send every signature back byte for byte: any altered byte fails the HMAC, and the request gets
400 INVALID_ARGUMENT, as it would from Gemini.

Gemini's documented bypass value ``skip_thought_signature_validator`` is accepted too.
"""

from __future__ import annotations

import hashlib
import hmac

MAGIC = b"CEM1"
BYPASS = b"skip_thought_signature_validator"
SIGNATURE_LEN = len(MAGIC) + 16 + 16


def issue_signature(secret: bytes, request_digest: bytes, position: int) -> bytes:
    """The signature for the ``position``-th signed part of the answer to one request."""
    nonce = hashlib.sha256(request_digest + position.to_bytes(4, "big")).digest()[:16]
    mac = hmac.new(secret, MAGIC + nonce, hashlib.sha256).digest()[:16]
    return MAGIC + nonce + mac


def is_valid_signature(secret: bytes, signature: bytes) -> bool:
    """True when ``signature`` is one this emulator (with this secret) issued, or the bypass."""
    if signature == BYPASS:
        return True
    if len(signature) != SIGNATURE_LEN or not signature.startswith(MAGIC):
        return False
    nonce, mac = signature[4:20], signature[20:]
    expected = hmac.new(secret, MAGIC + nonce, hashlib.sha256).digest()[:16]
    return hmac.compare_digest(mac, expected)
