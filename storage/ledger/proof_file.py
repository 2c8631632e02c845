"""Self-contained offline proofs of one entry, in the style of C2SP ``tlog-proof``::

    c2sp.org/tlog-proof@v1
    index <N>
    <base64 audit-path hash, one per line, RFC 6962 order>

    <the signed checkpoint note>

With the leaf bytes and the log's verifier key, anyone can check the entry was in the log at the
checkpoint's size, without Custody, its database or network access.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

from storage.ledger.checkpoint import Checkpoint, open_checkpoint
from storage.ledger.merkle import ProofError, check_inclusion, leaf_hash
from storage.ledger.note import NoteVerifier

HEADER = "c2sp.org/tlog-proof@v1"


class ProofFileError(ValueError):
    """A proof file that is malformed or does not prove the leaf."""


@dataclass(frozen=True)
class ParsedProof:
    index: int
    hashes: list[bytes]
    note: str


def format_proof(index: int, path: Sequence[bytes], checkpoint_note: str) -> str:
    lines = [HEADER, f"index {index}", *(base64.b64encode(h).decode() for h in path)]
    return "\n".join(lines) + "\n\n" + checkpoint_note


def parse_proof(text: str) -> ParsedProof:
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise ProofFileError("no blank line between the proof and its checkpoint")
    lines = head.split("\n")
    if lines[0] != HEADER:
        raise ProofFileError(f"the first line must be {HEADER!r}")
    if len(lines) < 2 or not lines[1].startswith("index ") or not lines[1][6:].isdigit():
        raise ProofFileError("the second line must be 'index <N>'")
    try:
        hashes = [base64.b64decode(line, validate=True) for line in lines[2:]]
    except (binascii.Error, ValueError) as exc:
        raise ProofFileError("an audit-path line is not base64") from exc
    return ParsedProof(int(lines[1][6:]), hashes, note)


def verify_proof(text: str, leaf: bytes, verifier: NoteVerifier, origin: str) -> Checkpoint:
    """The checkpoint under which ``leaf`` is proven; raises ``ValueError`` subclasses."""
    proof = parse_proof(text)
    cp = open_checkpoint(proof.note, verifier, origin)
    try:
        check_inclusion(proof.hashes, cp.size, cp.root, proof.index, leaf_hash(leaf))
    except ProofError as exc:
        raise ProofFileError(f"entry {proof.index} is not proven: {exc}") from exc
    return cp
