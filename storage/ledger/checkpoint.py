"""C2SP checkpoints (https://c2sp.org/tlog-checkpoint): a tree size and root in a signed note.

Body::

    <origin>
    <tree size, ASCII decimal, no leading zeros>
    <root hash, base64>
    [extension lines, each non-empty]
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from storage.ledger.merkle import HASH_SIZE
from storage.ledger.note import NoteError, NoteSigner, NoteVerifier, open_note, sign_note

_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class CheckpointError(ValueError):
    """A checkpoint that is malformed, for another log, or not signed by the log's key."""


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement of the log: its first ``size`` entries have root ``root``."""

    origin: str
    size: int
    root: bytes
    note: str  # the whole signed note, as published


def format_checkpoint(origin: str, size: int, root: bytes) -> str:
    """The checkpoint body (the note text) for ``size`` entries with root ``root``."""
    if not origin or "\n" in origin:
        raise CheckpointError(f"the origin must be one non-empty line, not {origin!r}")
    if size < 0:
        raise CheckpointError(f"a tree cannot have {size} entries")
    if len(root) != HASH_SIZE:
        raise CheckpointError(f"the root must be a {HASH_SIZE}-byte SHA-256 hash")
    return f"{origin}\n{size}\n{base64.b64encode(root).decode('ascii')}\n"


def parse_checkpoint_body(text: str) -> tuple[str, int, bytes]:
    """The (origin, size, root) of a checkpoint body; extension lines are allowed and ignored."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise CheckpointError(
            "a checkpoint has an origin line, a size line and a root line, each ending in newline"
        )
    origin, size_s, root_s, extensions = lines[0], lines[1], lines[2], lines[3:-1]
    if not origin:
        raise CheckpointError("the checkpoint's origin line is empty")
    if not _DECIMAL.fullmatch(size_s):
        raise CheckpointError(f"the checkpoint's size {size_s!r} is not a decimal number")
    try:
        root = base64.b64decode(root_s.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise CheckpointError(f"the checkpoint's root {root_s!r} is not base64") from exc
    if len(root) != HASH_SIZE:
        raise CheckpointError(f"the checkpoint's root is {len(root)} bytes, not a SHA-256 hash")
    if any(not line for line in extensions):
        raise CheckpointError("a checkpoint's extension lines must not be empty")
    return origin, int(size_s), root


def sign_checkpoint(signer: NoteSigner, origin: str, size: int, root: bytes) -> Checkpoint:
    """Sign the checkpoint for ``size`` entries with root ``root``."""
    note = sign_note(signer, format_checkpoint(origin, size, root))
    return Checkpoint(origin, size, root, note)


def open_checkpoint(note: str, verifier: NoteVerifier, origin: str) -> Checkpoint:
    """Verify the note's signature and read the checkpoint, which must be for log ``origin``."""
    try:
        text = open_note(note, [verifier])
    except NoteError as exc:
        raise CheckpointError(
            f"the checkpoint is not validly signed by {verifier.name}: {exc}"
        ) from exc
    got_origin, size, root = parse_checkpoint_body(text)
    if got_origin != origin:
        raise CheckpointError(f"the checkpoint is for log {got_origin!r}, not for {origin!r}")
    return Checkpoint(got_origin, size, root, note)
