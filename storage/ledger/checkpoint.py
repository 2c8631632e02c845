"""C2SP checkpoints (https://c2sp.org/tlog-checkpoint): a tree size and root in a signed note.

Body::

    <origin>
    <tree size, decimal>
    <root hash, base64>
    [extension lines]
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from storage.ledger.note import NoteError, NoteSigner, NoteVerifier, open_note


class CheckpointError(ValueError):
    """A checkpoint that is malformed, for another log, or not signed by the log's key."""


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement of the log: ``size`` entries with root ``root``."""

    origin: str
    size: int
    root: bytes
    note: str  # the whole signed note, as published


def format_checkpoint(origin: str, size: int, root: bytes) -> str:
    if not origin or "\n" in origin:
        raise CheckpointError("the origin must be one non-empty line")
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def parse_checkpoint_body(text: str) -> tuple[str, int, bytes]:
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise CheckpointError("a checkpoint body has an origin, a size and a root line")
    origin, size_s, root_s = lines[0], lines[1], lines[2]
    if not size_s.isdigit() or (size_s.startswith("0") and size_s != "0"):
        raise CheckpointError(f"the checkpoint size {size_s!r} is not a decimal number")
    try:
        root = base64.b64decode(root_s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CheckpointError("the checkpoint root is not base64") from exc
    if len(root) != 32:
        raise CheckpointError("the checkpoint root is not a SHA-256 hash")
    return origin, int(size_s), root


def sign_checkpoint(signer: NoteSigner, origin: str, size: int, root: bytes) -> Checkpoint:
    note = signer.sign(format_checkpoint(origin, size, root))
    return Checkpoint(origin, size, root, note)


def open_checkpoint(note: str, verifier: NoteVerifier, origin: str) -> Checkpoint:
    """Verify the note's signature and read the checkpoint; the origin must be ``origin``."""
    try:
        text = open_note(note, [verifier])
    except NoteError as exc:
        raise CheckpointError(f"the checkpoint's signature does not verify: {exc}") from exc
    got_origin, size, root = parse_checkpoint_body(text)
    if got_origin != origin:
        raise CheckpointError(f"the checkpoint is for log {got_origin!r}, not {origin!r}")
    return Checkpoint(got_origin, size, root, note)
