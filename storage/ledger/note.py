"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys.

Key strings are those of Go's ``golang.org/x/mod/sumdb/note``, so a checkpoint Custody signs opens
with Go's ``note.Open``, with ``litetlog``/``sigsum`` tooling, or with this module::

    verifier key:  <name>+<key hash, 8 hex>+base64(0x01 || Ed25519 public key)
    signer key:    PRIVATE+KEY+<name>+<key hash>+base64(0x01 || Ed25519 seed)
    key hash:      first 4 bytes (big-endian) of SHA-256(name || "\\n" || 0x01 || public key)

A note is its text (ending in a newline), a blank line, then one line per signature:
``— <name> base64(key hash || signature)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # an em dash and a space


class NoteError(ValueError):
    """A malformed note or key, or a signature that does not verify."""


def _key_hash(name: str, public: bytes) -> int:
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public).digest()
    return int(struct.unpack(">I", digest[:4])[0])


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise NoteError(f"a key name must be non-empty without spaces or '+': {name!r}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError(f"{what} is not valid base64") from exc


def _public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class NoteVerifier:
    """Checks one key's signatures."""

    name: str
    key_hash: int
    public_key: bytes

    @classmethod
    def from_key_string(cls, vkey: str) -> NoteVerifier:
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise NoteError("a verifier key is <name>+<hash>+<key>")
        name, hash_hex, key_b64 = parts
        _check_name(name)
        raw = _unb64(key_b64, "the verifier key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError("only Ed25519 verifier keys (0x01 + 32 bytes) are supported")
        if len(hash_hex) != 8 or int(hash_hex, 16) != _key_hash(name, raw[1:]):
            raise NoteError("the verifier key's hash does not match its name and key")
        return cls(name, int(hash_hex, 16), raw[1:])

    def key_string(self) -> str:
        return f"{self.name}+{self.key_hash:08x}+{_b64(bytes([ALG_ED25519]) + self.public_key)}"

    def verify(self, msg: bytes, sig: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(sig, msg)
            return True
        except InvalidSignature:
            return False


class NoteSigner:
    """Signs notes with one Ed25519 key."""

    def __init__(self, name: str, private: Ed25519PrivateKey) -> None:
        _check_name(name)
        self.name = name
        self._private = private
        self.public_key = _public_bytes(private.public_key())
        self.key_hash = _key_hash(name, self.public_key)

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_key_string(cls, skey: str) -> NoteSigner:
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a signer key is PRIVATE+KEY+<name>+<hash>+<key>")
        name, hash_hex, key_b64 = parts[2:]
        raw = _unb64(key_b64, "the signer key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError("only Ed25519 signer keys (0x01 + 32-byte seed) are supported")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if len(hash_hex) != 8 or int(hash_hex, 16) != signer.key_hash:
            raise NoteError("the signer key's hash does not match its name and key")
        return signer

    def key_string(self) -> str:
        seed = self._private.private_bytes_raw()
        return f"PRIVATE+KEY+{self.name}+{self.key_hash:08x}+{_b64(bytes([ALG_ED25519]) + seed)}"

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.key_hash, self.public_key)

    def verifier_key(self) -> str:
        return self.verifier().key_string()

    def sign(self, text: str) -> str:
        """The signed note of ``text`` (which must end with a newline)."""
        if not text.endswith("\n"):
            raise NoteError("a note's text must end with a newline")
        sig = self._private.sign(text.encode())
        blob = struct.pack(">I", self.key_hash) + sig
        return f"{text}\n{SIG_PREFIX}{self.name} {_b64(blob)}\n"


def split_note(note: str) -> tuple[str, list[tuple[str, int, bytes]]]:
    """The text and the (name, key hash, signature) of each signature line."""
    text, sep, sigs = note.rpartition("\n\n")
    if not sep or not sigs.endswith("\n"):
        raise NoteError("malformed note: no blank line before the signatures")
    text += "\n"
    out = []
    for line in sigs[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise NoteError(f"malformed signature line: {line!r}")
        name, _, blob_b64 = line[len(SIG_PREFIX) :].partition(" ")
        blob = _unb64(blob_b64, "a signature")
        if len(blob) < 5:
            raise NoteError("a signature line is too short")
        out.append((name, int(struct.unpack(">I", blob[:4])[0]), blob[4:]))
    return text, out


def open_note(note: str, verifiers: Sequence[NoteVerifier]) -> str:
    """The note's text if a known key signed it; unknown signers are ignored, a bad one fails."""
    text, sigs = split_note(note)
    known = {(v.name, v.key_hash): v for v in verifiers}
    verified = 0
    for name, key_hash, sig in sigs:
        verifier = known.get((name, key_hash))
        if verifier is None:
            continue
        if not verifier.verify(text.encode(), sig):
            raise NoteError(f"the signature of {name} does not verify: the note was changed")
        verified += 1
    if not verified:
        raise NoteError("no signature from a known key")
    return text
