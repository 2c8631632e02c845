"""RFC 6962 Merkle tree math over stored hashes, as pure functions.

A port of Go's ``golang.org/x/mod/sumdb/tlog`` layout: the hash of every complete subtree is stored
once, at a fixed index (``stored_hash_index``, after Crosby and Wallach), when its last leaf is
appended. A tree hash, an inclusion proof or a consistency proof then needs O(log n) stored hashes,
read in one batch through a ``HashReader`` — the only thing storage has to provide.

Proofs come out in RFC 6962 order (the hash nearest the leaf first), so any RFC 6962 verifier
(Certificate Transparency, Sigstore, Trillian) accepts them; ``tests/test_merkle.py`` checks them
against a naive RFC 6962 implementation and real Certificate Transparency (Argon 2020) proofs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

HASH_SIZE = 32
EMPTY_TREE_HASH = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof does not prove what it claims, or was asked for sizes that cannot exist."""


class HashReaderError(RuntimeError):
    """A ``HashReader`` broke its contract (wrong count, wrong size, missing index)."""


class HashReader(Protocol):
    """Storage of the stored hashes: returns the hashes at ``indexes``, in the same order."""

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]: ...


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _read(reader: HashReader, indexes: Sequence[int]) -> list[bytes]:
    """Read through ``reader``, failing loudly if it does not keep its contract."""
    if not indexes:
        return []
    hashes = reader.read_hashes(indexes)
    if len(hashes) != len(indexes):
        raise HashReaderError(
            f"the hash reader returned {len(hashes)} hashes for {len(indexes)} indexes"
        )
    for index, h in zip(indexes, hashes, strict=True):
        if len(h) != HASH_SIZE:
            raise HashReaderError(f"stored hash {index} is {len(h)} bytes, not {HASH_SIZE}")
    return hashes


def _maxpow2(n: int) -> tuple[int, int]:
    """The largest power of two strictly below ``n`` (n >= 2), and its log2."""
    if n < 2:
        raise RuntimeError(f"bad math: no power of two below {n}")
    level = (n - 1).bit_length() - 1
    return 1 << level, level


def _trailing_zeros(x: int) -> int:
    return (x & -x).bit_length() - 1


# --- the stored-hash layout --------------------------------------------------------------------


def stored_hash_index(level: int, n: int) -> int:
    """Where the hash of the ``n``-th complete subtree of height ``level`` is stored."""
    if level < 0 or n < 0:
        raise ValueError(f"no stored hash for level {level}, subtree {n}")
    # The subtree's last leaf is leaf n'; its hash is stored right after those of leaves < n'.
    for _ in range(level):
        n = 2 * n + 1
    i = 0
    while n > 0:
        i += n
        n >>= 1
    return i + level


def split_stored_hash_index(index: int) -> tuple[int, int]:
    """The inverse of ``stored_hash_index``: the (level, n) stored at ``index``."""
    if index < 0:
        raise ValueError(f"no stored hash at index {index}")
    n = index // 2
    index_n = stored_hash_index(0, n)
    if index_n > index:
        raise RuntimeError(f"bad math: leaf {n} is stored after index {index}")
    while True:
        x = index_n + 1 + _trailing_zeros(n + 1)
        if x > index:
            break
        n += 1
        index_n = x
    level = index - index_n
    return level, n >> level


def stored_hash_count(n: int) -> int:
    """How many hashes are stored for a tree of ``n`` leaves."""
    if n < 0:
        raise ValueError(f"no tree has {n} leaves")
    if n == 0:
        return 0
    count = stored_hash_index(0, n - 1) + 1
    i = n - 1
    while i & 1:
        count += 1
        i >>= 1
    return count


def stored_hashes_for_record_hash(n: int, h: bytes, reader: HashReader) -> list[bytes]:
    """The hashes to store, in order, when leaf ``n`` with leaf hash ``h`` is appended."""
    if n < 0 or len(h) != HASH_SIZE:
        raise ValueError(f"cannot append leaf {n} with a {len(h)}-byte hash")
    # Each trailing 1 bit of n completes a subtree, whose left half is already stored.
    m = _trailing_zeros(n + 1)
    indexes = [stored_hash_index(m - 1 - j, (n >> (m - 1 - j)) - 1) for j in range(m)]
    old = _read(reader, indexes)
    hashes = [h]
    for i in range(m):
        h = node_hash(old[m - 1 - i], h)
        hashes.append(h)
    return hashes


def _records_for_count(count: int) -> int:
    """The number of leaves whose stored hashes number exactly ``count``."""
    lo, hi = 0, count
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if stored_hash_count(mid) <= count:
            lo = mid
        else:
            hi = mid - 1
    if stored_hash_count(lo) != count:
        raise ValueError(f"{count} stored hashes is not a whole tree")
    return lo


class MemoryHashReader:
    """Stored hashes in a list: for tests, tools and offline rebuilding.

    ``append`` adds one *leaf* (by its leaf hash) and stores every hash it completes.
    """

    def __init__(self, hashes: Sequence[bytes] = ()) -> None:
        self.hashes = list(hashes)
        self.size = _records_for_count(len(self.hashes))

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        try:
            return [self.hashes[i] for i in indexes]
        except IndexError:
            raise HashReaderError(
                f"asked for stored hash {max(indexes)} of {len(self.hashes)}"
            ) from None

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf by its leaf hash."""
        self.hashes.extend(stored_hashes_for_record_hash(self.size, leaf_hash, self))
        self.size += 1

    def extend(self, leaf_hashes: Sequence[bytes]) -> None:
        """Append several leaves at once (one batch, as group commit does)."""
        self.hashes.extend(stored_hashes_for_records(self.size, leaf_hashes, self))
        self.size += len(leaf_hashes)


class Frontier:
    """The right edge of a tree: the hashes of its maximal complete subtrees, left to right.

    This is all an append needs (RFC 6962 trees only ever grow on the right), so the SQLite
    store keeps one in memory between commits, group commit extends it by a whole batch, and
    verification rebuilds the tree with it; PostgreSQL's ``custody_ledger_append`` computes the
    same hashes in SQL (migration 0002). One subtree per set bit of ``size``, highest first.
    """

    __slots__ = ("hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != size.bit_count():
            raise RuntimeError(f"bad math: a tree of {size} leaves has {size.bit_count()} subtrees")
        self.size = size
        self.hashes = list(hashes)

    @staticmethod
    def indexes(size: int) -> list[int]:
        """The stored-hash indexes of the frontier of a ``size``-leaf tree, left to right."""
        return _subtree_index(0, size, [])

    @classmethod
    def read(cls, size: int, reader: HashReader) -> Frontier:
        """The frontier of the stored ``size``-leaf tree: one read of at most log2(size) hashes."""
        return cls(size, _read(reader, cls.indexes(size)))

    def copy(self) -> Frontier:
        return Frontier(self.size, self.hashes)

    def append(self, h: bytes) -> list[bytes]:
        """Append the leaf with leaf hash ``h``; returns the hashes to store, in stored order."""
        if len(h) != HASH_SIZE:
            raise ValueError(f"cannot append a leaf with a {len(h)}-byte hash")
        new = [h]
        n = self.size
        while n & 1:  # each trailing 1 bit completes a subtree whose left half is on the edge
            h = node_hash(self.hashes.pop(), h)
            new.append(h)
            n >>= 1
        self.hashes.append(h)
        self.size += 1
        return new

    def extend(self, leaf_hashes: Sequence[bytes]) -> list[bytes]:
        """Append several leaves; the concatenation of their stored hashes."""
        out: list[bytes] = []
        for h in leaf_hashes:
            out.extend(self.append(h))
        return out

    def root(self) -> bytes:
        """The RFC 6962 root of the tree."""
        if not self.hashes:
            return EMPTY_TREE_HASH
        h = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            h = node_hash(left, h)
        return h


def stored_hashes_for_records(
    start: int, leaf_hashes: Sequence[bytes], reader: HashReader
) -> list[bytes]:
    """The hashes to store when leaves ``start, start+1, ...`` are appended in one batch.

    Equal to concatenating ``stored_hashes_for_record_hash`` for each leaf in turn; the existing
    tree is read once (its O(log n) frontier), the rest comes from the batch itself.
    """
    return Frontier.read(start, reader).extend(leaf_hashes)


# --- tree hashes -------------------------------------------------------------------------------


def _subtree_index(lo: int, hi: int, need: list[int]) -> list[int]:
    """Append the stored indexes of the complete subtrees that make up leaves [lo, hi)."""
    while lo < hi:
        k, level = _maxpow2(hi - lo + 1)
        if lo & (k - 1):
            raise RuntimeError(f"bad math: subtree [{lo}, {lo + k}) is not aligned")
        need.append(stored_hash_index(level, lo >> level))
        lo += k
    return need


def _subtree_hash(lo: int, hi: int, hashes: list[bytes]) -> tuple[bytes, list[bytes]]:
    """Fold the hashes read for ``_subtree_index(lo, hi)`` into the hash of [lo, hi)."""
    num = 0
    while lo < hi:
        k, _ = _maxpow2(hi - lo + 1)
        lo += k
        num += 1
    if num == 0 or len(hashes) < num:
        raise RuntimeError("bad math: subtree hash of nothing")
    h = hashes[num - 1]
    for i in range(num - 2, -1, -1):
        h = node_hash(hashes[i], h)
    return h, hashes[num:]


def tree_hash(n: int, reader: HashReader) -> bytes:
    """The RFC 6962 root of the first ``n`` leaves (SHA-256 of nothing for the empty tree)."""
    if n < 0:
        raise ProofError(f"no tree has {n} leaves")
    if n == 0:
        return EMPTY_TREE_HASH
    indexes = _subtree_index(0, n, [])
    h, rest = _subtree_hash(0, n, _read(reader, indexes))
    if rest:
        raise RuntimeError("bad math: hashes left over")
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
    """The audit path of leaf ``n`` in the tree of size ``t``, in RFC 6962 order."""
    if not 0 <= n < t:
        raise ProofError(f"leaf {n} is not in a tree of size {t}")
    indexes = _leaf_proof_index(0, t, n, [])
    proof, rest = _leaf_proof(0, t, n, _read(reader, indexes))
    if rest:
        raise RuntimeError("bad math: hashes left over")
    return proof


def _run_leaf_proof(proof: Sequence[bytes], lo: int, hi: int, n: int, h: bytes) -> bytes:
    if lo + 1 == hi:
        if proof:
            raise ProofError("the inclusion proof has more hashes than the tree is deep")
        return h
    if not proof:
        raise ProofError("the inclusion proof has too few hashes for this tree size")
    k, _ = _maxpow2(hi - lo)
    if n < lo + k:
        return node_hash(_run_leaf_proof(proof[:-1], lo, lo + k, n, h), proof[-1])
    return node_hash(proof[-1], _run_leaf_proof(proof[:-1], lo + k, hi, n, h))


def check_inclusion(proof: Sequence[bytes], t: int, th: bytes, n: int, h: bytes) -> None:
    """Check that leaf hash ``h`` is leaf ``n`` of the tree of size ``t`` and root ``th``."""
    if not 0 <= n < t:
        raise ProofError(f"leaf {n} cannot be in a tree of size {t}")
    if len(th) != HASH_SIZE or len(h) != HASH_SIZE:
        raise ProofError(f"the root and the leaf hash must be {HASH_SIZE} bytes")
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError(f"a hash of the inclusion proof is not {HASH_SIZE} bytes")
    if _run_leaf_proof(proof, 0, t, n, h) != th:
        raise ProofError(
            f"the inclusion proof of leaf {n} does not lead to the root of the tree of size {t}: "
            "the leaf, the proof or the root was changed"
        )


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
    """The RFC 6962 proof that the tree of size ``n`` is a prefix of the tree of size ``t``."""
    if not 1 <= n <= t:
        raise ProofError(f"there is no consistency proof from size {n} to size {t}")
    indexes = _tree_proof_index(0, t, n, [])
    proof, rest = _tree_proof(0, t, n, _read(reader, indexes))
    if rest:
        raise RuntimeError("bad math: hashes left over")
    return proof


def _run_tree_proof(
    proof: Sequence[bytes], lo: int, hi: int, n: int, old: bytes
) -> tuple[bytes, bytes]:
    """The (old root, new root) that ``proof`` implies for subtree [lo, hi)."""
    if n == hi:
        if lo == 0:
            if proof:
                raise ProofError("the consistency proof has too many hashes for these sizes")
            return old, old
        if len(proof) != 1:
            raise ProofError("the consistency proof has the wrong number of hashes")
        return proof[0], proof[0]
    if not proof:
        raise ProofError("the consistency proof has too few hashes for these sizes")
    k, _ = _maxpow2(hi - lo)
    if n <= lo + k:
        oh, th = _run_tree_proof(proof[:-1], lo, lo + k, n, old)
        return oh, node_hash(th, proof[-1])
    oh, th = _run_tree_proof(proof[:-1], lo + k, hi, n, old)
    return node_hash(proof[-1], oh), node_hash(proof[-1], th)


def check_consistency(proof: Sequence[bytes], t: int, th: bytes, n: int, h: bytes) -> None:
    """Check that the tree of size ``n``, root ``h`` is a prefix of the one of size ``t``, root
    ``th`` (new size and root first, as in tlog's ``CheckTree``)."""
    if not 1 <= n <= t:
        raise ProofError(f"no consistency can hold from size {n} to size {t}")
    if len(th) != HASH_SIZE or len(h) != HASH_SIZE:
        raise ProofError(f"both roots must be {HASH_SIZE} bytes")
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError(f"a hash of the consistency proof is not {HASH_SIZE} bytes")
    old, new = _run_tree_proof(proof, 0, t, n, h)
    if old != h or new != th:
        raise ProofError(
            f"the tree of size {n} is not a prefix of the tree of size {t}: "
            "the history was rewritten, or a root or the proof was changed"
        )
