"""Witness cosignatures of checkpoints (C2SP ``tlog-cosignature``, Ed25519 ``cosignature/v1``).

A witness that has checked a checkpoint's signature and its consistency with everything it saw
before adds one signature line to the checkpoint note::

    — <witness name> base64(key ID ‖ 8-byte big-endian timestamp ‖ Ed25519 signature)

over the message::

    cosignature/v1
    time <timestamp>
    <the checkpoint body: origin, size, root, extension lines>

The key ID is ``SHA-256(name ‖ "\\n" ‖ 0x04 ‖ public key)[:4]`` and the verifier key string is
``<name>+<8 hex key ID>+base64(0x04 ‖ public key)``: the note signature type 0x04 keeps a
cosignature from ever passing as the log's own signature (type 0x01). Pure functions: formats
and checks, no storage.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from storage.ledger.note import SIG_PREFIX, NoteError, split_note

COSIGNATURE_TYPE = 0x04
_LABEL = "cosignature/v1"


class CosignatureError(ValueError):
    """A witness key or cosignature that is malformed or does not verify."""


@dataclass(frozen=True)
class WitnessKey:
    """A witness's cosignature verifier key."""

    name: str
    key_id: bytes
    public_key: bytes

    @classmethod
    def from_key_string(cls, vkey: str) -> WitnessKey:
        name, sep1, rest = vkey.strip().partition("+")
        hash_hex, sep2, key_b64 = rest.partition("+")
        if not (sep1 and sep2 and name and len(hash_hex) == 8):
            raise CosignatureError(
                f"a witness key reads <name>+<8 hex>+<base64 key>, not {vkey[:120]!r}"
            )
        try:
            raw = base64.b64decode(key_b64, validate=True)
            key_id = bytes.fromhex(hash_hex)
        except (binascii.Error, ValueError) as exc:
            raise CosignatureError(f"the witness key {name!r} is not base64/hex: {exc}") from exc
        if len(raw) != 33 or raw[0] != COSIGNATURE_TYPE:
            raise CosignatureError(
                f"the witness key {name!r} is not an Ed25519 cosignature/v1 key (type 0x04)"
            )
        key = cls(name, key_id, raw[1:])
        if key.expected_id() != key_id:
            raise CosignatureError(f"the witness key {name!r} has the wrong key ID {hash_hex}")
        return key

    def expected_id(self) -> bytes:
        msg = self.name.encode() + b"\n" + bytes([COSIGNATURE_TYPE]) + self.public_key
        return hashlib.sha256(msg).digest()[:4]

    def key_string(self) -> str:
        blob = base64.b64encode(bytes([COSIGNATURE_TYPE]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{blob}"


def cosignature_message(body: str, timestamp: int) -> bytes:
    """What a ``cosignature/v1`` signs: the label, the time, the checkpoint body."""
    return f"{_LABEL}\ntime {timestamp}\n".encode() + body.encode()


@dataclass(frozen=True)
class Cosignature:
    """One verified cosignature line of a checkpoint."""

    witness: str
    key_id: bytes
    timestamp: int  # seconds since the epoch, as the witness signed it
    line: str  # the note signature line, as the witness sent it


def parse_line(line: str) -> tuple[str, bytes, int, bytes]:
    """(name, key ID, timestamp, signature) of a cosignature line; form only."""
    line = line.rstrip("\n")
    if not line.startswith(SIG_PREFIX):
        raise CosignatureError(f"not a note signature line: {line[:120]!r}")
    name, _, blob_b64 = line[len(SIG_PREFIX) :].partition(" ")
    try:
        blob = base64.b64decode(blob_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CosignatureError(f"the cosignature of {name!r} is not base64") from exc
    if len(blob) != 4 + 8 + 64:
        raise CosignatureError(f"the cosignature of {name!r} is {len(blob)} bytes, not 76")
    return name, blob[:4], int.from_bytes(blob[4:12], "big"), blob[12:]


def verify_line(line: str, key: WitnessKey, body: str) -> Cosignature:
    """The cosignature in ``line`` by ``key`` over checkpoint ``body``, or CosignatureError."""
    name, key_id, timestamp, sig = parse_line(line)
    if name != key.name or key_id != key.key_id:
        raise CosignatureError(f"the line is signed by {name!r}, not by witness {key.name!r}")
    try:
        Ed25519PublicKey.from_public_bytes(key.public_key).verify(
            sig, cosignature_message(body, timestamp)
        )
    except (InvalidSignature, ValueError) as exc:
        raise CosignatureError(
            f"the cosignature of witness {key.name!r} does not verify over this checkpoint"
        ) from exc
    return Cosignature(key.name, key_id, timestamp, line.rstrip("\n"))


def cosignatures_in(note: str, keys: list[WitnessKey]) -> tuple[list[Cosignature], list[str]]:
    """The verified cosignatures of ``keys`` in ``note``, and the problems with the others.

    A key's line that does not verify is a problem; a key with no line is not (it did not
    cosign); lines of unknown signers are ignored, as a note verifier ignores them."""
    try:
        body, sigs = split_note(note)
    except NoteError as exc:
        return [], [str(exc)]
    lines = note.rpartition("\n\n")[2].rstrip("\n").split("\n")
    found: list[Cosignature] = []
    problems: list[str] = []
    for key in keys:
        mine = [
            line
            for line, sig in zip(lines, sigs, strict=True)
            if sig.name == key.name and sig.key_hash == int.from_bytes(key.key_id, "big")
        ]
        for line in mine[:1]:
            try:
                found.append(verify_line(line, key, body))
            except CosignatureError as exc:
                problems.append(str(exc))
    return found, problems


def with_cosignatures(note: str, lines: list[str]) -> str:
    """``note`` with the cosignature ``lines`` appended (each once, in the order given)."""
    have = set(note.rstrip("\n").split("\n"))
    extra = [line for line in dict.fromkeys(lines) if line not in have]
    return note + "".join(line + "\n" for line in extra)
