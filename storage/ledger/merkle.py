"""RFC 6962 Merkle tree math over stored hashes, as pure functions.

The layout is the one of Go's ``golang.org/x/mod/sumdb/tlog``: every complete subtree's hash is
stored once, at a fixed index (``stored_hash_index``), when its last leaf is appended. A tree hash,
an inclusion proof or a consistency proof then needs O(log n) stored hashes, read in one batch
through a ``HashReader`` — the only thing storage has to provide.

Proofs come out in RFC 6962 order (the sibling nearest the leaf first), so any RFC 6962 verifier
(Certificate Transparency, Sigstore, Trillian) accepts them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

HASH_SIZE = 32
EMPTY_TREE_HASH = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof does not prove what it claims (or was asked for impossible sizes)."""


class HashReader(Protocol):
    """Returns the stored hashes at ``indexes``, in the same order."""

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]: ...


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _maxpow2(n: int) -> tuple[int, int]:
    """The largest power of two strictly below ``n`` (n >= 2), and its log2."""
    level = (n - 1).bit_length() - 1
    return 1 << level, level


def stored_hash_index(level: int, n: int) -> int:
    """Where the hash of the ``n``-th subtree of height ``level`` is stored."""
    for _ in range(level):
        n = 2 * n + 1
    i = 0
    while n > 0:
        i += n
        n >>= 1
    return i + level


def split_stored_hash_index(index: int) -> tuple[int, int]:
    """The inverse of ``stored_hash_index``: (level, n)."""
    n = index // 2
    index_n = stored_hash_index(0, n)
    while True:
        x = index_n + 1 + _trailing_zeros(n + 1)
        if x > index:
            break
        n += 1
        index_n = x
    level = index - index_n
    return level, n >> level


def _trailing_zeros(x: int) -> int:
    return (x & -x).bit_length() - 1


def stored_hash_count(n: int) -> int:
    """How many hashes are stored for a tree of ``n`` leaves."""
    if n == 0:
        return 0
    count = stored_hash_index(0, n - 1) + 1
    i = n - 1
    while i & 1:
        count += 1
        i >>= 1
    return count


def stored_hashes_for_record_hash(n: int, h: bytes, reader: HashReader) -> list[bytes]:
    """The hashes to store when leaf ``n`` with leaf hash ``h`` is appended."""
    m = _trailing_zeros(n + 1)
    indexes = [stored_hash_index(m - 1 - j, (n >> (m - 1 - j)) - 1) for j in range(m)]
    old = reader.read_hashes(indexes) if m else []
    hashes = [h]
    for i in range(m):
        h = node_hash(old[m - 1 - i], h)
        hashes.append(h)
    return hashes


class MemoryHashReader:
    """Stored hashes in a list: for tests, tools and batch overlays."""

    def __init__(self, hashes: Sequence[bytes] = ()) -> None:
        self.hashes = list(hashes)

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        return [self.hashes[i] for i in indexes]

    def append_record(self, h: bytes) -> None:
        """Append one leaf by its leaf hash (counting leaves from the stored hashes)."""
        n = _records_of(len(self.hashes))
        self.hashes.extend(stored_hashes_for_record_hash(n, h, self))


def _records_of(count: int) -> int:
    """The number of leaves whose stored hashes number ``count`` (inverse of the count)."""
    lo, hi = 0, count
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if stored_hash_count(mid) <= count:
            lo = mid
        else:
            hi = mid - 1
    return lo


class _Overlay:
    """Stored hashes of the existing tree (read once) plus those of a batch being appended."""

    def __init__(self, start: int, reader: HashReader) -> None:
        self.base = reader
        self.first_new = stored_hash_count(start)
        self.new: list[bytes] = []
        frontier = _subtree_index(0, start, []) if start else []
        self.cache = dict(zip(frontier, reader.read_hashes(frontier), strict=True))

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        missing = [i for i in indexes if i < self.first_new and i not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.base.read_hashes(missing), strict=True))
        return [
            self.new[i - self.first_new] if i >= self.first_new else self.cache[i] for i in indexes
        ]


def stored_hashes_for_records(
    start: int, leaf_hashes: Sequence[bytes], reader: HashReader
) -> list[bytes]:
    """The hashes to store when leaves ``start, start+1, ...`` are appended in one batch.

    The existing tree's frontier is read in one batch; everything else comes from the batch.
    """
    overlay = _Overlay(start, reader)
    for offset, h in enumerate(leaf_hashes):
        overlay.new.extend(stored_hashes_for_record_hash(start + offset, h, overlay))
    return overlay.new


def _subtree_index(lo: int, hi: int, need: list[int]) -> list[int]:
    """Stored-hash indexes of the complete subtrees that make up leaves [lo, hi)."""
    while lo < hi:
        k, level = _maxpow2(hi - lo + 1)
        need.append(stored_hash_index(level, lo >> level))
        lo += k
    return need


def _subtree_hash(lo: int, hi: int, hashes: list[bytes]) -> tuple[bytes, list[bytes]]:
    """Fold the hashes read by ``_subtree_index(lo, hi)`` into the hash of [lo, hi)."""
    num = 0
    while lo < hi:
        k, _ = _maxpow2(hi - lo + 1)
        lo += k
        num += 1
    h = hashes[num - 1]
    for i in range(num - 2, -1, -1):
        h = node_hash(hashes[i], h)
    return h, hashes[num:]


def tree_hash(n: int, reader: HashReader) -> bytes:
    """The RFC 6962 root of the first ``n`` leaves (SHA-256 of nothing for the empty tree)."""
    if n == 0:
        return EMPTY_TREE_HASH
    indexes = _subtree_index(0, n, [])
    h, _ = _subtree_hash(0, n, reader.read_hashes(indexes))
    return h


# --- inclusion ---------------------------------------------------------------------------------


def _leaf_proof_index(lo: int, hi: int, n: int, need: list[int]) -> list[int]:
    if lo + 1 == hi:
        return need
    k, _ = _maxpow2(hi - lo)
    if n < lo + k:
        _leaf_proof_index(lo, lo + k, n, need)
        _subtree_index(lo + k, hi, need)
    else:
        _subtree_index(lo, lo + k, need)
        _leaf_proof_index(lo + k, hi, n, need)
    return need


def _leaf_proof(lo: int, hi: int, n: int, hashes: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    if lo + 1 == hi:
        return [], hashes
    k, _ = _maxpow2(hi - lo)
    if n < lo + k:
        proof, hashes = _leaf_proof(lo, lo + k, n, hashes)
        th, hashes = _subtree_hash(lo + k, hi, hashes)
    else:
        th, hashes = _subtree_hash(lo, lo + k, hashes)
        proof, hashes = _leaf_proof(lo + k, hi, n, hashes)
    proof.append(th)
    return proof, hashes


def prove_inclusion(t: int, n: int, reader: HashReader) -> list[bytes]:
    """The audit path of leaf ``n`` in the tree of size ``t`` (RFC 6962 order)."""
    if not 0 <= n < t:
        raise ProofError(f"leaf {n} is not in a tree of size {t}")
    indexes = _leaf_proof_index(0, t, n, [])
    if not indexes:
        return []
    proof, _ = _leaf_proof(0, t, n, reader.read_hashes(indexes))
    return proof


def _run_leaf_proof(proof: Sequence[bytes], lo: int, hi: int, n: int, h: bytes) -> bytes:
    if lo + 1 == hi:
        if proof:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        return h
    if not proof:
        raise ProofError("the inclusion proof is too short")
    k, _ = _maxpow2(hi - lo)
    if n < lo + k:
        return node_hash(_run_leaf_proof(proof[:-1], lo, lo + k, n, h), proof[-1])
    return node_hash(proof[-1], _run_leaf_proof(proof[:-1], lo + k, hi, n, h))


def check_inclusion(proof: Sequence[bytes], t: int, th: bytes, n: int, h: bytes) -> None:
    """Check that leaf hash ``h`` is leaf ``n`` of the tree of size ``t`` and root ``th``."""
    if not 0 <= n < t:
        raise ProofError(f"leaf {n} cannot be in a tree of size {t}")
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("an inclusion proof hash is not 32 bytes")
    if _run_leaf_proof(proof, 0, t, n, h) != th:
        raise ProofError(f"the inclusion proof of leaf {n} does not lead to the root of size {t}")


# --- consistency -------------------------------------------------------------------------------


def _tree_proof_index(lo: int, hi: int, n: int, need: list[int]) -> list[int]:
    if n == hi:
        return need if lo == 0 else _subtree_index(lo, hi, need)
    k, _ = _maxpow2(hi - lo)
    if n <= lo + k:
        _tree_proof_index(lo, lo + k, n, need)
        _subtree_index(lo + k, hi, need)
    else:
        _subtree_index(lo, lo + k, need)
        _tree_proof_index(lo + k, hi, n, need)
    return need


def _tree_proof(lo: int, hi: int, n: int, hashes: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    if n == hi:
        if lo == 0:
            return [], hashes
        th, hashes = _subtree_hash(lo, hi, hashes)
        return [th], hashes
    k, _ = _maxpow2(hi - lo)
    if n <= lo + k:
        proof, hashes = _tree_proof(lo, lo + k, n, hashes)
        th, hashes = _subtree_hash(lo + k, hi, hashes)
    else:
        th, hashes = _subtree_hash(lo, lo + k, hashes)
        proof, hashes = _tree_proof(lo + k, hi, n, hashes)
    proof.append(th)
    return proof, hashes


def prove_consistency(t: int, n: int, reader: HashReader) -> list[bytes]:
    """The proof that the tree of size ``n`` is a prefix of the tree of size ``t``."""
    if not 1 <= n <= t:
        raise ProofError(f"no consistency proof from size {n} to size {t}")
    indexes = _tree_proof_index(0, t, n, [])
    if not indexes:
        return []
    proof, _ = _tree_proof(0, t, n, reader.read_hashes(indexes))
    return proof


def _run_tree_proof(
    proof: Sequence[bytes], lo: int, hi: int, n: int, old: bytes
) -> tuple[bytes, bytes]:
    if n == hi:
        if lo == 0:
            if proof:
                raise ProofError("the consistency proof is too long")
            return old, old
        if len(proof) != 1:
            raise ProofError("the consistency proof has the wrong length")
        return proof[0], proof[0]
    if not proof:
        raise ProofError("the consistency proof is too short")
    k, _ = _maxpow2(hi - lo)
    if n <= lo + k:
        oh, th = _run_tree_proof(proof[:-1], lo, lo + k, n, old)
        return oh, node_hash(th, proof[-1])
    oh, th = _run_tree_proof(proof[:-1], lo + k, hi, n, old)
    return node_hash(proof[-1], oh), node_hash(proof[-1], th)


def check_consistency(proof: Sequence[bytes], t: int, th: bytes, n: int, h: bytes) -> None:
    """Check that the tree of size ``n`` and root ``h`` is a prefix of size ``t``, root ``th``."""
    if not 1 <= n <= t:
        raise ProofError(f"no consistency between sizes {n} and {t}")
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("a consistency proof hash is not 32 bytes")
    if n == t:
        if proof or h != th:
            raise ProofError(f"two different roots for the same size {t}")
        return
    oh, nh = _run_tree_proof(proof, 0, t, n, h)
    if oh != h or nh != th:
        raise ProofError(f"the tree of size {n} is not a prefix of the tree of size {t}")
