"""Self-contained offline proofs of one entry, in the C2SP ``tlog-proof`` format::

    c2sp.org/tlog-proof@v1
    [extra <base64 opaque data, unauthenticated>]
    index <N>
    <base64 audit-path hash, one per line, RFC 6962 order>

    <the signed checkpoint note>

With the leaf bytes and the log's verifier key, anyone can check that the entry was in the log at
the checkpoint's size, without Custody, its database or network access.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from storage.ledger.checkpoint import Checkpoint, open_checkpoint
from storage.ledger.merkle import HASH_SIZE, ProofError, check_inclusion, leaf_hash
from storage.ledger.note import NoteVerifier

HEADER = "c2sp.org/tlog-proof@v1"
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class ProofFileError(ValueError):
    """A proof file that is malformed, or does not prove the entry it names."""


@dataclass(frozen=True)
class ParsedProof:
    """The parts of a proof file; nothing in it is checked yet."""

    index: int
    hashes: list[bytes]
    note: str
    extra: bytes | None = None  # opaque and unauthenticated: never trust it


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def format_proof(
    index: int, path: Sequence[bytes], checkpoint_note: str, extra: bytes | None = None
) -> str:
    """The proof file for entry ``index`` with audit path ``path`` under ``checkpoint_note``."""
    if index < 0:
        raise ProofFileError(f"there is no entry {index}")
    if any(len(h) != HASH_SIZE for h in path):
        raise ProofFileError(f"every audit-path hash must be {HASH_SIZE} bytes")
    lines = [HEADER]
    if extra is not None:
        lines.append(f"extra {_b64(extra)}")
    lines.append(f"index {index}")
    lines.extend(_b64(h) for h in path)
    return "\n".join(lines) + "\n\n" + checkpoint_note


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise ProofFileError(f"{what} is not base64: {text!r}") from exc


def parse_proof(text: str) -> ParsedProof:
    """Split a proof file into its index, audit path, checkpoint note and optional extra data."""
    head, sep, note = text.partition("\n\n")
    if not sep or not note:
        raise ProofFileError("the proof has no checkpoint after a blank line")
    lines = head.split("\n")
    if lines[0] != HEADER:
        raise ProofFileError(f"this is not a tlog proof: the first line must be {HEADER!r}")
    rest = lines[1:]
    extra = None
    if rest and rest[0].startswith("extra "):
        extra = _unb64(rest[0][len("extra ") :], "the extra data")
        rest = rest[1:]
    if not rest or not rest[0].startswith("index "):
        raise ProofFileError("the proof does not say which entry it proves ('index <N>' line)")
    index_s = rest[0][len("index ") :]
    if not _DECIMAL.fullmatch(index_s):
        raise ProofFileError(f"the entry index {index_s!r} is not a decimal number")
    hashes = []
    for i, line in enumerate(rest[1:]):
        h = _unb64(line, f"audit-path hash {i}")
        if len(h) != HASH_SIZE:
            raise ProofFileError(f"audit-path hash {i} is {len(h)} bytes, not {HASH_SIZE}")
        hashes.append(h)
    return ParsedProof(int(index_s), hashes, note, extra)


def verify_proof(text: str, leaf: bytes, verifier: NoteVerifier, origin: str) -> Checkpoint:
    """The checkpoint under which ``leaf`` is proven to be entry ``index`` of log ``origin``.

    Raises ``ProofFileError`` (malformed proof, or the leaf is not proven) or ``CheckpointError``
    (the checkpoint is not signed by ``verifier`` or is for another log).
    """
    proof = parse_proof(text)
    cp = open_checkpoint(proof.note, verifier, origin)
    if proof.index >= cp.size:
        raise ProofFileError(
            f"entry {proof.index} cannot be proven by a checkpoint of {cp.size} entries"
        )
    try:
        check_inclusion(proof.hashes, cp.size, cp.root, proof.index, leaf_hash(leaf))
    except ProofError as exc:
        raise ProofFileError(
            f"these leaf bytes are not entry {proof.index} of {origin} at size {cp.size}: {exc}"
        ) from exc
    return cp
