"""RFC 6962 math: against a naive recursive RFC 6962 implementation and real CT (Argon 2020) data.

No independent RFC 6962 library (sigstore, trillian, pymerkle) is installed in the venv, so the
naive definitions below and the Certificate Transparency proofs are the independent references.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from storage.ledger.merkle import (
    EMPTY_TREE_HASH,
    HashReaderError,
    MemoryHashReader,
    ProofError,
    check_consistency,
    check_inclusion,
    leaf_hash,
    node_hash,
    prove_consistency,
    prove_inclusion,
    split_stored_hash_index,
    stored_hash_count,
    stored_hash_index,
    stored_hashes_for_record_hash,
    stored_hashes_for_records,
    tree_hash,
)

SIZES = 70


# --- RFC 6962 section 2.1, written straight from the text ------------------------------------


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_root(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = _split(len(leaves))
    return hashlib.sha256(b"\x01" + naive_root(leaves[:k]) + naive_root(leaves[k:])).digest()


def naive_path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if m < k:
        return [*naive_path(m, leaves[:k]), naive_root(leaves[k:])]
    return [*naive_path(m - k, leaves[k:]), naive_root(leaves[:k])]


def naive_subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [naive_root(leaves)]
    k = _split(n)
    if m <= k:
        return [*naive_subproof(m, leaves[:k], complete), naive_root(leaves[k:])]
    return [*naive_subproof(m - k, leaves[k:], False), naive_root(leaves[:k])]


def naive_consistency(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    return naive_subproof(m, leaves, True)


# --- helpers ---------------------------------------------------------------------------------


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


class CountingReader:
    """Serves any index with a made-up hash, counting batches and indexes read."""

    def __init__(self) -> None:
        self.calls = 0
        self.indexes = 0

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        self.calls += 1
        self.indexes += len(indexes)
        return [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in indexes]


LEAVES = [b"leaf %d" % i for i in range(SIZES)]


@pytest.fixture(scope="module")
def reader() -> MemoryHashReader:
    r = MemoryHashReader()
    for leaf in LEAVES:
        r.append(leaf_hash(leaf))
    return r


# --- hashing and the stored-hash layout ------------------------------------------------------


def test_leaf_and_node_hashes_are_domain_separated_sha256() -> None:
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )
    assert leaf_hash(b"") != EMPTY_TREE_HASH


def test_stored_hash_index_matches_tlog_layout_for_small_trees() -> None:
    # Leaves 0,1 then their parent; leaf 2; leaf 3, parent (2,3), parent of the four; ...
    assert [stored_hash_index(0, n) for n in range(5)] == [0, 1, 3, 4, 7]
    assert [stored_hash_index(1, n) for n in range(3)] == [2, 5, 9]
    assert stored_hash_index(2, 0) == 6
    assert [stored_hash_count(n) for n in range(6)] == [0, 1, 3, 4, 7, 8]


def test_split_stored_hash_index_inverts_stored_hash_index() -> None:
    for index in range(5000):
        level, n = split_stored_hash_index(index)
        assert stored_hash_index(level, n) == index
    for level in range(12):
        for n in range(40):
            assert split_stored_hash_index(stored_hash_index(level, n)) == (level, n)


def test_memory_reader_stores_exactly_stored_hash_count_hashes(reader: MemoryHashReader) -> None:
    r = MemoryHashReader()
    for size, leaf in enumerate(LEAVES, start=1):
        r.append(leaf_hash(leaf))
        assert len(r.hashes) == stored_hash_count(size)
        assert r.size == size
    assert MemoryHashReader(reader.hashes).size == SIZES


def test_each_stored_hash_is_the_hash_of_its_subtree(reader: MemoryHashReader) -> None:
    for index, h in enumerate(reader.hashes):
        level, n = split_stored_hash_index(index)
        assert h == naive_root(LEAVES[n << level : (n + 1) << level])


def test_batch_append_equals_repeated_single_appends(reader: MemoryHashReader) -> None:
    hashes = [leaf_hash(x) for x in LEAVES]
    for start in range(SIZES):
        for count in sorted({min(c, SIZES - start) for c in (0, 1, 2, 3, 7, 16, SIZES)}):
            prefix = MemoryHashReader(reader.hashes[: stored_hash_count(start)])
            batch = stored_hashes_for_records(start, hashes[start : start + count], prefix)
            single: list[bytes] = []
            one = MemoryHashReader(prefix.hashes)
            for n in range(start, start + count):
                new = stored_hashes_for_record_hash(n, hashes[n], one)
                one.hashes.extend(new)
                single.extend(new)
            assert batch == single
            assert prefix.hashes + batch == reader.hashes[: stored_hash_count(start + count)]


def test_batch_append_reads_the_existing_tree_once() -> None:
    counting = CountingReader()
    stored_hashes_for_records(1_000_003, [leaf_hash(b"%d" % i) for i in range(500)], counting)
    assert counting.calls == 1
    assert counting.indexes <= 21  # the frontier: one hash per set bit of the old size


# --- roots and proofs against the naive definitions ------------------------------------------


def test_empty_tree_hash_is_sha256_of_nothing(reader: MemoryHashReader) -> None:
    assert tree_hash(0, reader) == hashlib.sha256(b"").digest()


def test_roots_and_every_proof_match_rfc6962_for_all_sizes_to_70(
    reader: MemoryHashReader,
) -> None:
    for t in range(1, SIZES + 1):
        root = tree_hash(t, reader)
        assert root == naive_root(LEAVES[:t])
        for n in range(t):
            path = prove_inclusion(t, n, reader)
            assert path == naive_path(n, LEAVES[:t])
            check_inclusion(path, t, root, n, leaf_hash(LEAVES[n]))
        for m in range(1, t + 1):
            proof = prove_consistency(t, m, reader)
            assert proof == naive_consistency(m, LEAVES[:t])
            check_consistency(proof, t, root, m, tree_hash(m, reader))


def test_consistency_of_a_tree_with_itself_is_empty(reader: MemoryHashReader) -> None:
    root = tree_hash(13, reader)
    assert prove_consistency(13, 13, reader) == []
    check_consistency([], 13, root, 13, root)
    with pytest.raises(ProofError):
        check_consistency([], 13, root, 13, _flip(root, 0))


def test_impossible_sizes_are_refused(reader: MemoryHashReader) -> None:
    for t, n in ((0, 0), (5, 5), (5, -1)):
        with pytest.raises(ProofError):
            prove_inclusion(t, n, reader)
    for t, n in ((5, 0), (5, 6), (0, 0)):
        with pytest.raises(ProofError):
            prove_consistency(t, n, reader)
    root = tree_hash(5, reader)
    with pytest.raises(ProofError):
        check_inclusion([], 5, root, 5, leaf_hash(b"x"))
    with pytest.raises(ProofError):
        check_consistency([], 5, root, 0, EMPTY_TREE_HASH)
    with pytest.raises(ProofError):
        tree_hash(-1, reader)


def test_inclusion_fails_after_any_one_byte_change_of_proof_root_or_leaf(
    reader: MemoryHashReader,
) -> None:
    for t in range(1, SIZES + 1):
        root = tree_hash(t, reader)
        for n in range(t):
            path = prove_inclusion(t, n, reader)
            h = leaf_hash(LEAVES[n])
            for i in range(len(path)):
                bad = list(path)
                bad[i] = _flip(bad[i], (i * 7 + n) % 32)
                with pytest.raises(ProofError):
                    check_inclusion(bad, t, root, n, h)
            with pytest.raises(ProofError):
                check_inclusion(path, t, _flip(root, n % 32), n, h)
            with pytest.raises(ProofError):
                check_inclusion(path, t, root, n, leaf_hash(_flip(LEAVES[n], n % len(LEAVES[n]))))


def test_inclusion_fails_for_another_index_size_or_proof_length(reader: MemoryHashReader) -> None:
    t, n = 45, 17
    root = tree_hash(t, reader)
    path = prove_inclusion(t, n, reader)
    h = leaf_hash(LEAVES[n])
    for bad_n in (n - 1, n + 1, 44):
        with pytest.raises(ProofError):
            check_inclusion(path, t, root, bad_n, h)
    # (A size with the same path shape, such as 46, rightly gives the same answer.)
    for bad_t in (17, 31, 65):
        with pytest.raises(ProofError):
            check_inclusion(path, bad_t, root, n, h)
    with pytest.raises(ProofError):
        check_inclusion(path[:-1], t, root, n, h)
    with pytest.raises(ProofError):
        check_inclusion([*path, path[0]], t, root, n, h)
    with pytest.raises(ProofError):
        check_inclusion([*path[:-1], path[-1][:31]], t, root, n, h)


def test_consistency_fails_after_any_one_byte_change_of_proof_or_roots(
    reader: MemoryHashReader,
) -> None:
    for t in range(2, SIZES + 1):
        root = tree_hash(t, reader)
        for m in range(1, t):
            proof = prove_consistency(t, m, reader)
            old = tree_hash(m, reader)
            for i in range(len(proof)):
                bad = list(proof)
                bad[i] = _flip(bad[i], (i * 5 + m) % 32)
                with pytest.raises(ProofError):
                    check_consistency(bad, t, root, m, old)
            with pytest.raises(ProofError):
                check_consistency(proof, t, _flip(root, m % 32), m, old)
            with pytest.raises(ProofError):
                check_consistency(proof, t, root, m, _flip(old, t % 32))
            with pytest.raises(ProofError):
                check_consistency(proof[:-1], t, root, m, old)
            with pytest.raises(ProofError):
                check_consistency([*proof, root], t, root, m, old)


def test_consistency_rejects_a_rewritten_history() -> None:
    honest, forged = MemoryHashReader(), MemoryHashReader()
    for i, leaf in enumerate(LEAVES[:20]):
        honest.append(leaf_hash(leaf))
        forged.append(leaf_hash(b"rewritten" if i == 3 else leaf))
    proof = prove_consistency(20, 10, forged)
    with pytest.raises(ProofError):
        check_consistency(proof, 20, tree_hash(20, forged), 10, tree_hash(10, honest))


# --- cost: O(log n) stored hashes, one batch -------------------------------------------------


@pytest.mark.parametrize("t", [1, 2, 3, 1000, 2**31 + 12345, 10**12 + 7])
def test_proofs_read_one_batch_of_o_log_n_stored_hashes(t: int) -> None:
    bound = 2 * t.bit_length() + 2
    for n in {0, t // 3, t // 2, t - 1}:
        counting = CountingReader()
        path = prove_inclusion(t, n, counting)
        assert counting.calls <= 1 and counting.indexes <= bound
        assert len(path) <= t.bit_length()
    for m in {1, t // 3 or 1, t // 2 or 1, max(t - 1, 1)}:
        counting = CountingReader()
        prove_consistency(t, m, counting)
        assert counting.calls <= 1 and counting.indexes <= bound
    counting = CountingReader()
    tree_hash(t, counting)
    assert counting.calls == 1 and counting.indexes <= t.bit_length()


def test_a_reader_that_breaks_its_contract_fails_loudly(reader: MemoryHashReader) -> None:
    class ShortReader:
        def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
            return reader.read_hashes(indexes)[:-1]

    class TruncatingReader:
        def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
            return [h[:16] for h in reader.read_hashes(indexes)]

    for bad in (ShortReader(), TruncatingReader()):
        with pytest.raises(HashReaderError):
            tree_hash(37, bad)
        with pytest.raises(HashReaderError):
            prove_inclusion(37, 5, bad)
    with pytest.raises(HashReaderError):
        prove_inclusion(SIZES + 10, 3, reader)


# --- real Certificate Transparency data (Google Argon 2020): tests/fixtures/vectors/README.md ---

CT_OLD_SIZE = 3654490
CT_OLD_ROOT = base64.b64decode("AuIZ5V6sDUj1vn3Y1K85oOaQ7y+FJJKtyRTl1edIKBQ=")


@pytest.fixture(scope="module")
def ct(fixtures_dir: Path) -> dict[str, Any]:
    folder = fixtures_dir / "vectors" / "ct-argon2020"
    sth = json.loads((folder / "sth.json").read_text())
    proof = json.loads((folder / "proof.json").read_text())
    entry = json.loads((folder / "entries.json").read_text())["entries"][0]
    consistency = json.loads((folder / "consistency.json").read_text())["consistency"]
    return {
        "size": sth["tree_size"],
        "root": base64.b64decode(sth["sha256_root_hash"]),
        "index": proof["leaf_index"],
        "path": [base64.b64decode(h) for h in proof["audit_path"]],
        # The RFC 6962 MerkleTreeLeaf is the base64-decoded leaf_input, hashed with the 0x00 prefix.
        "leaf": base64.b64decode(entry["leaf_input"]),
        "consistency": [base64.b64decode(h) for h in consistency],
    }


def test_certificate_transparency_vectors_are_the_ones_described(ct: dict[str, Any]) -> None:
    assert ct["size"] == 961984013 and ct["index"] == 10000
    assert ct["leaf"][:2] == b"\x00\x00"  # MerkleTreeLeaf: version v1, leaf type timestamped_entry
    assert len(ct["path"]) == 30 and len(ct["consistency"]) == 30


def test_certificate_transparency_inclusion_verifies(ct: dict[str, Any]) -> None:
    check_inclusion(ct["path"], ct["size"], ct["root"], ct["index"], leaf_hash(ct["leaf"]))


def test_certificate_transparency_consistency_verifies(ct: dict[str, Any]) -> None:
    check_consistency(ct["consistency"], ct["size"], ct["root"], CT_OLD_SIZE, CT_OLD_ROOT)


def test_certificate_transparency_inclusion_fails_after_any_one_byte_change(
    ct: dict[str, Any],
) -> None:
    size, root, index, path, leaf = ct["size"], ct["root"], ct["index"], ct["path"], ct["leaf"]
    for at in range(len(leaf)):
        with pytest.raises(ProofError):
            check_inclusion(path, size, root, index, leaf_hash(_flip(leaf, at)))
    h = leaf_hash(leaf)
    for i in range(len(path)):
        for at in range(32):
            bad = list(path)
            bad[i] = _flip(bad[i], at)
            with pytest.raises(ProofError):
                check_inclusion(bad, size, root, index, h)
    for at in range(32):
        with pytest.raises(ProofError):
            check_inclusion(path, size, _flip(root, at), index, h)
    with pytest.raises(ProofError):
        check_inclusion(path, size, root, index + 1, h)


def test_certificate_transparency_consistency_fails_after_any_one_byte_change(
    ct: dict[str, Any],
) -> None:
    size, root, proof = ct["size"], ct["root"], ct["consistency"]
    for i in range(len(proof)):
        for at in range(32):
            bad = list(proof)
            bad[i] = _flip(bad[i], at)
            with pytest.raises(ProofError):
                check_consistency(bad, size, root, CT_OLD_SIZE, CT_OLD_ROOT)
    for at in range(32):
        with pytest.raises(ProofError):
            check_consistency(proof, size, _flip(root, at), CT_OLD_SIZE, CT_OLD_ROOT)
        with pytest.raises(ProofError):
            check_consistency(proof, size, root, CT_OLD_SIZE, _flip(CT_OLD_ROOT, at))
    with pytest.raises(ProofError):
        check_consistency(proof, size, root, CT_OLD_SIZE + 1, CT_OLD_ROOT)
