"""Offline proof files (C2SP tlog-proof): made from a tree, checked with only the leaf and a key."""

from __future__ import annotations

import base64

import pytest

from storage.ledger.checkpoint import CheckpointError, sign_checkpoint
from storage.ledger.merkle import MemoryHashReader, leaf_hash, prove_inclusion, tree_hash
from storage.ledger.note import Ed25519NoteSigner, NoteSigner
from storage.ledger.proof_file import (
    HEADER,
    ProofFileError,
    format_proof,
    parse_proof,
    verify_proof,
)

ORIGIN = "custody.test/log"
SIZE = 37
LEAVES = [b'{"entry":%d}' % i for i in range(SIZE)]


@pytest.fixture(scope="module")
def log_key() -> NoteSigner:
    return Ed25519NoteSigner.generate(ORIGIN)


@pytest.fixture(scope="module")
def tree() -> MemoryHashReader:
    reader = MemoryHashReader()
    reader.extend([leaf_hash(leaf) for leaf in LEAVES])
    return reader


@pytest.fixture(scope="module")
def note(log_key: NoteSigner, tree: MemoryHashReader) -> str:
    return sign_checkpoint(log_key, ORIGIN, SIZE, tree_hash(SIZE, tree)).note


def _proof(tree: MemoryHashReader, note: str, index: int) -> str:
    return format_proof(index, prove_inclusion(SIZE, index, tree), note)


def test_proof_file_has_the_tlog_proof_layout(tree: MemoryHashReader, note: str) -> None:
    path = prove_inclusion(SIZE, 5, tree)
    text = format_proof(5, path, note)
    head, _, rest = text.partition("\n\n")
    assert head.split("\n") == [HEADER, "index 5", *(base64.b64encode(h).decode() for h in path)]
    assert rest == note


def test_every_entry_is_proven_by_its_proof_file(
    log_key: NoteSigner, tree: MemoryHashReader, note: str
) -> None:
    for index, leaf in enumerate(LEAVES):
        cp = verify_proof(_proof(tree, note, index), leaf, log_key.verifier(), ORIGIN)
        assert (cp.origin, cp.size, cp.note) == (ORIGIN, SIZE, note)


def test_parse_returns_what_format_wrote(tree: MemoryHashReader, note: str) -> None:
    path = prove_inclusion(SIZE, 20, tree)
    parsed = parse_proof(format_proof(20, path, note, extra=b"context"))
    assert (parsed.index, parsed.hashes, parsed.note, parsed.extra) == (20, path, note, b"context")
    assert parse_proof(format_proof(20, path, note)).extra is None


def test_proof_with_extra_data_still_verifies(
    log_key: NoteSigner, tree: MemoryHashReader, note: str
) -> None:
    text = format_proof(3, prove_inclusion(SIZE, 3, tree), note, extra=b"\x00\xffopaque")
    assert text.split("\n")[1] == "extra " + base64.b64encode(b"\x00\xffopaque").decode()
    verify_proof(text, LEAVES[3], log_key.verifier(), ORIGIN)


def test_one_entry_log_has_an_empty_audit_path(log_key: NoteSigner) -> None:
    reader = MemoryHashReader()
    reader.append(leaf_hash(b"only"))
    cp = sign_checkpoint(log_key, ORIGIN, 1, tree_hash(1, reader))
    text = format_proof(0, [], cp.note)
    assert text.startswith(f"{HEADER}\nindex 0\n\n")
    assert verify_proof(text, b"only", log_key.verifier(), ORIGIN).size == 1


def test_other_leaf_bytes_are_not_proven(
    log_key: NoteSigner, tree: MemoryHashReader, note: str
) -> None:
    text = _proof(tree, note, 9)
    for leaf in (LEAVES[10], LEAVES[9] + b" ", b""):
        with pytest.raises(ProofFileError, match="not entry 9"):
            verify_proof(text, leaf, log_key.verifier(), ORIGIN)


def test_a_changed_audit_path_hash_or_index_is_not_proven(
    log_key: NoteSigner, tree: MemoryHashReader, note: str
) -> None:
    path = prove_inclusion(SIZE, 9, tree)
    for i in range(len(path)):
        bad = list(path)
        bad[i] = bad[i][:3] + bytes([bad[i][3] ^ 0x80]) + bad[i][4:]
        with pytest.raises(ProofFileError):
            verify_proof(format_proof(9, bad, note), LEAVES[9], log_key.verifier(), ORIGIN)
    with pytest.raises(ProofFileError):
        verify_proof(format_proof(8, path, note), LEAVES[9], log_key.verifier(), ORIGIN)
    with pytest.raises(ProofFileError):
        verify_proof(format_proof(9, path[:-1], note), LEAVES[9], log_key.verifier(), ORIGIN)


def test_index_beyond_the_checkpoint_is_refused_in_plain_words(
    log_key: NoteSigner, note: str
) -> None:
    with pytest.raises(ProofFileError, match="entry 40 cannot be proven by a checkpoint of 37"):
        verify_proof(format_proof(40, [], note), b"x", log_key.verifier(), ORIGIN)


def test_checkpoint_of_another_key_or_log_is_refused(
    log_key: NoteSigner, tree: MemoryHashReader, note: str
) -> None:
    text = _proof(tree, note, 4)
    with pytest.raises(CheckpointError):
        verify_proof(text, LEAVES[4], Ed25519NoteSigner.generate(ORIGIN).verifier(), ORIGIN)
    with pytest.raises(CheckpointError):
        verify_proof(text, LEAVES[4], log_key.verifier(), "other.test/log")
    with pytest.raises(CheckpointError):
        verify_proof(text.replace(f"\n{SIZE}\n", "\n36\n"), LEAVES[4], log_key.verifier(), ORIGIN)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace(HEADER, "c2sp.org/tlog-proof@v2", 1),
        lambda t: t.replace("index 4", "index 04", 1),
        lambda t: t.replace("index 4", "index -4", 1),
        lambda t: t.replace("index 4", "idx 4", 1),
        lambda t: t.replace("index 4\n", "index 4\nnot base64!\n", 1),
        lambda t: t.replace("index 4\n", "index 4\nAAAA\n", 1),
        lambda t: t.replace(f"{HEADER}\n", f"{HEADER}\nextra %%%\n", 1),
        lambda t: t.partition("\n\n")[0],
        lambda t: t.partition("\n\n")[0] + "\n\n",
    ],
)
def test_malformed_proof_files_are_refused(
    log_key: NoteSigner, tree: MemoryHashReader, note: str, mangle: object
) -> None:
    text = mangle(_proof(tree, note, 4))  # type: ignore[operator]
    with pytest.raises(ProofFileError):
        verify_proof(text, LEAVES[4], log_key.verifier(), ORIGIN)
