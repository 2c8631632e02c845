"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys.

Key strings are those of Go's ``golang.org/x/mod/sumdb/note``, so a checkpoint Custody signs opens
with Go's ``note.Open`` and with litetlog/sigsum tooling, and their keys load here::

    verifier key:  <name>+<key hash, 8 hex>+base64(0x01 || Ed25519 public key)
    signer key:    PRIVATE+KEY+<name>+<key hash>+base64(0x01 || Ed25519 seed)
    key hash:      first 4 bytes (big-endian) of SHA-256(name || "\\n" || 0x01 || public key)

A note is its text (ending in a newline), a blank line, then one line per signature:
``— <name> base64(key hash || signature)``. ``tests/test_note_checkpoint.py`` checks this module
against the Go package's published test vector.

Signing is an interface (``NoteSigner``, as Go's ``note.Signer``) so the checkpoint key can live
in an HSM or a KMS: ``Ed25519NoteSigner`` holds the key in the process, ``CallbackNoteSigner``
hands the bytes to whatever signs them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from storage.private_files import make_private_dir

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # an em dash and a space
MAX_SIGNATURES = 100  # as Go's note.Open; the spec asks for at least 16
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


class NoteError(ValueError):
    """A malformed note or key, or a signature that does not verify."""


def _key_hash(name: str, public: bytes) -> int:
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public).digest()
    return int.from_bytes(digest[:4], "big")


def _valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def _check_name(name: str) -> None:
    if not _valid_name(name):
        raise NoteError(f"a key name must be non-empty, without spaces or '+': {name!r}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise NoteError(f"{what} is not valid base64") from exc


def _parse_key_hash(text: str, what: str) -> int:
    if not _HEX8.fullmatch(text):
        raise NoteError(f"{what}'s key hash {text!r} is not 8 hex digits")
    return int(text, 16)


@dataclass(frozen=True)
class NoteVerifier:
    """Checks the signatures of one Ed25519 key."""

    name: str
    key_hash: int
    public_key: bytes

    @classmethod
    def from_key_string(cls, vkey: str) -> NoteVerifier:
        """Load a Go-style verifier key ``<name>+<hash>+<base64(0x01 || public key)>``."""
        parts = vkey.strip().split("+", 2)  # base64 may contain '+'
        if len(parts) != 3:
            raise NoteError("a verifier key has the form <name>+<8 hex digits>+<base64 key>")
        name, hash_hex, key_b64 = parts
        _check_name(name)
        key_hash = _parse_key_hash(hash_hex, "the verifier key")
        raw = _unb64(key_b64, "the verifier key")
        if not raw or raw[0] != ALG_ED25519:
            raise NoteError("the verifier key is not an Ed25519 key (it must start with 0x01)")
        if len(raw) != 33:
            raise NoteError(f"an Ed25519 verifier key is 32 bytes, not {len(raw) - 1}")
        if key_hash != _key_hash(name, raw[1:]):
            raise NoteError("the verifier key's hash does not match its name and key")
        return cls(name, key_hash, raw[1:])

    def key_string(self) -> str:
        return f"{self.name}+{self.key_hash:08x}+{_b64(bytes([ALG_ED25519]) + self.public_key)}"

    def verify(self, msg: bytes, sig: bytes) -> bool:
        """True when ``sig`` is this key's Ed25519 signature of ``msg``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(sig, msg)
        except (InvalidSignature, ValueError):
            return False
        return True


class NoteSigner(Protocol):
    """A key that signs notes — the Ed25519 file key below, or an HSM or KMS behind a callback.

    The contract is Go's ``note.Signer``: ``name`` and ``key_hash`` identify the key in the
    signature line; ``sign`` returns the raw signature of ``msg`` (the note text's UTF-8 bytes),
    which ``verifier()`` must accept; ``verifier_key()`` is the key string to publish.
    ``sign_note`` does the formatting around it.
    """

    @property
    def name(self) -> str: ...

    @property
    def key_hash(self) -> int: ...

    def sign(self, msg: bytes) -> bytes: ...

    def verifier(self) -> NoteVerifier: ...

    def verifier_key(self) -> str:
        """The verifier key string to publish (``verifier().key_string()``)."""
        ...


def sign_note(signer: NoteSigner, text: str) -> str:
    """The signed note of ``text`` (which must end with a newline), one signature line."""
    if not text.endswith("\n"):
        raise NoteError("a note's text must end with a newline")
    if _CONTROL.search(text):
        raise NoteError("a note's text must not contain control characters other than newline")
    sig = signer.sign(text.encode("utf-8"))
    if not signer.verifier().verify(text.encode("utf-8"), sig):
        raise NoteError(
            f"the signer {signer.name}+{signer.key_hash:08x} returned a signature its own"
            " verifier key rejects: check that the signing service uses the key it publishes"
        )
    blob = signer.key_hash.to_bytes(4, "big") + sig
    return f"{text}\n{SIG_PREFIX}{signer.name} {_b64(blob)}\n"


class Ed25519NoteSigner:
    """Signs notes with an Ed25519 key held in this process (the ``ledger-note.key`` file)."""

    def __init__(self, name: str, private: Ed25519PrivateKey) -> None:
        _check_name(name)
        self.name = name
        self._private = private
        self.public_key = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_hash = _key_hash(name, self.public_key)

    @classmethod
    def generate(cls, name: str) -> Ed25519NoteSigner:
        """A new random key named ``name``."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_key_string(cls, skey: str) -> Ed25519NoteSigner:
        """Load a Go-style signer key ``PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>``."""
        parts = skey.strip().split("+", 4)  # base64 may contain '+'
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a signer key has the form PRIVATE+KEY+<name>+<hash>+<base64 key>")
        name, hash_hex, key_b64 = parts[2:]
        _check_name(name)
        key_hash = _parse_key_hash(hash_hex, "the signer key")
        raw = _unb64(key_b64, "the signer key")
        if not raw or raw[0] != ALG_ED25519 or len(raw) != 33:
            raise NoteError("the signer key is not an Ed25519 seed (0x01 then 32 bytes)")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if key_hash != signer.key_hash:
            raise NoteError("the signer key's hash does not match its name and key")
        return signer

    def key_string(self) -> str:
        """The Go-style private key string (keep it secret)."""
        seed = self._private.private_bytes_raw()
        return f"PRIVATE+KEY+{self.name}+{self.key_hash:08x}+{_b64(bytes([ALG_ED25519]) + seed)}"

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.key_hash, self.public_key)

    def verifier_key(self) -> str:
        """The public verifier key string to publish."""
        return self.verifier().key_string()

    def sign(self, msg: bytes) -> bytes:
        """The Ed25519 signature of ``msg``."""
        return self._private.sign(msg)


class CallbackNoteSigner:
    """Signs notes through ``sign`` — an HSM, a cloud KMS or a remote signing service.

    ``public_key`` is the raw 32-byte Ed25519 public key the service signs with; it names the
    key (``key_hash``) and checks every signature the callback returns, so a misconfigured
    service fails the checkpoint instead of publishing one nobody can verify.
    """

    def __init__(self, name: str, public_key: bytes, sign: Callable[[bytes], bytes]) -> None:
        _check_name(name)
        if len(public_key) != 32:
            raise NoteError(f"an Ed25519 public key is 32 bytes, not {len(public_key)}")
        self.name = name
        self.public_key = bytes(public_key)
        self.key_hash = _key_hash(name, self.public_key)
        self._sign = sign

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.key_hash, self.public_key)

    def verifier_key(self) -> str:
        """The public verifier key string to publish."""
        return self.verifier().key_string()

    def sign(self, msg: bytes) -> bytes:
        sig = self._sign(msg)
        if not isinstance(sig, bytes) or len(sig) != 64:
            raise NoteError(
                f"the signing callback for {self.name} returned {type(sig).__name__}"
                f" of length {len(sig) if isinstance(sig, bytes) else '?'}, not a 64-byte"
                " Ed25519 signature"
            )
        return sig


def load_or_create_note_signer(path: Path, origin: str) -> Ed25519NoteSigner:
    """The log's Ed25519 note key: read from ``path``, or generated there (mode 0600, created
    with that mode before the key is written; a directory made for it is 0700)."""
    path = Path(path)
    if path.exists():
        signer = Ed25519NoteSigner.from_key_string(path.read_text())
        if signer.name != origin:
            raise ValueError(
                f"the log key in {path} is for {signer.name!r}, not this log's origin {origin!r}"
            )
        return signer
    signer = Ed25519NoteSigner.generate(origin)
    make_private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.key_string() + "\n")
    return signer


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note."""

    name: str
    key_hash: int
    signature: bytes


def split_note(note: str) -> tuple[str, list[NoteSignature]]:
    """The text (with its final newline) and the signature lines, checked for form only."""
    if _CONTROL.search(note):
        raise NoteError("malformed note: it contains control characters other than newline")
    try:
        note.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NoteError("malformed note: it is not valid UTF-8") from exc
    text, sep, sigs = note.rpartition("\n\n")
    if not sep or not sigs.endswith("\n"):
        raise NoteError("malformed note: no signature lines after a blank line")
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"malformed note: more than {MAX_SIGNATURES} signatures")
    out = []
    for line in lines:
        if not line.startswith(SIG_PREFIX):
            raise NoteError(f"malformed note: {line!r} is not a signature line")
        name, _, blob_b64 = line[len(SIG_PREFIX) :].partition(" ")
        if not _valid_name(name) or not blob_b64:
            raise NoteError(f"malformed note: bad signature line {line!r}")
        blob = _unb64(blob_b64, f"the signature of {name}")
        if len(blob) < 5:
            raise NoteError(f"malformed note: the signature of {name} is too short")
        out.append(NoteSignature(name, int.from_bytes(blob[:4], "big"), blob[4:]))
    return text + "\n", out


def open_note(note: str, verifiers: Sequence[NoteVerifier]) -> str:
    """The note's text if a known key's signature verifies.

    Signatures of unknown keys (name and hash not both known) are ignored; a known key's bad
    signature rejects the note, as does having no verified signature at all.
    """
    text, sigs = split_note(note)
    known = {(v.name, v.key_hash): v for v in verifiers}
    msg = text.encode("utf-8")
    verified = 0
    for sig in sigs:
        verifier = known.get((sig.name, sig.key_hash))
        if verifier is None:
            continue
        if not verifier.verify(msg, sig.signature):
            raise NoteError(
                f"the signature of {sig.name}+{sig.key_hash:08x} does not verify: "
                "the note was changed after signing, or the signature was forged"
            )
        verified += 1
    if not verified:
        names = ", ".join(f"{v.name}+{v.key_hash:08x}" for v in verifiers) or "none given"
        raise NoteError(f"the note has no signature from a trusted key ({names})")
    return text
