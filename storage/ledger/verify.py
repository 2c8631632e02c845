"""Verify a whole ledger from its stored bytes, trusting nothing the database says about itself.

Streams the entries in index order and recomputes: every leaf hash from the leaf bytes (and that
each leaf is a canonical, well-formed leaf of this log), every stored interior hash, the head
counter, every stored checkpoint's signature and root, and the roots of checkpoints published
earlier (a rewritten history with a re-signed checkpoint fails here). Where blobs remain, each
commitment is checked against its blob; erased blobs are counted, not faults.

Everything the API, lookups or replay read outside the leaf bytes is checked against them too:
each entry's ``time_ms``/``type``/``tenant``/``turn_id`` columns equal its leaf's fields, and the
index tables (``turns``, ``turn_images``, ``decision_inputs``) and erasure records agree with the
events (``verify_index``). A fault names the entry index, or the table and row.

Memory stays O(log n): the tree is rebuilt from its right edge (``merkle.Frontier``, the same
one the SQLite store appends with).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Engine, text

from storage.db import make_engine
from storage.ledger.checkpoint import CheckpointError, open_checkpoint
from storage.ledger.leaf import LeafError, decode_leaf, is_canonical, iter_commitments
from storage.ledger.merkle import Frontier, leaf_hash, stored_hash_count
from storage.ledger.note import NoteVerifier
from storage.ledger.verify_index import ContentOpener, verify_index

BATCH = 5_000


class CommitmentChecker(Protocol):
    def check(self, commitment: str) -> str: ...


@dataclass(frozen=True)
class Fault:
    """One thing wrong, in plain words; ``index`` is the entry it concerns, ``row`` the index
    table row (``turns turn_id=…``); neither: the log."""

    index: int | None
    kind: str
    message: str
    row: str | None = None

    def __str__(self) -> str:
        where = f"entry {self.index}" if self.index is not None else (self.row or "the log")
        return f"{where}: {self.message}"


@dataclass
class VerifyReport:
    entries: int = 0
    checkpoints: int = 0
    published_checkpoints: int = 0
    commitments_checked: int = 0
    erased: int = 0
    turns_checked: int = 0
    faults: list[Fault] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.faults

    @property
    def first_fault(self) -> Fault | None:
        indexed = [f for f in self.faults if f.index is not None]
        if indexed:
            return min(indexed, key=lambda f: f.index if f.index is not None else -1)
        return self.faults[0] if self.faults else None

    def to_dict(self) -> dict[str, Any]:
        first = self.first_fault
        return {
            "ok": self.ok,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "published_checkpoints": self.published_checkpoints,
            "commitments_checked": self.commitments_checked,
            "erased_blobs": self.erased,
            "turns_checked": self.turns_checked,
            "first_bad_entry": first.index if first else None,
            "faults": [
                {"index": f.index, "row": f.row, "kind": f.kind, "message": f.message}
                for f in self.faults
            ],
        }

    def summary(self) -> str:
        head = (
            f"{self.entries:,} entries, {self.checkpoints} checkpoints, "
            f"{self.published_checkpoints} published checkpoints, "
            f"{self.commitments_checked:,} commitments checked, {self.erased} to erased content, "
            f"{self.turns_checked:,} turns checked against their index rows"
        )
        if self.ok:
            return f"OK: the ledger verifies ({head})."
        first = self.first_fault
        lines = [f"FAILED: {len(self.faults)} fault(s) ({head})."]
        if first is not None:
            lines.append(f"First bad: {first}")
        lines.extend(f"  - {f}" for f in self.faults[:50])
        if len(self.faults) > 50:
            lines.append(f"  ... and {len(self.faults) - 50} more")
        return "\n".join(lines)


def verify_ledger(
    engine: Engine,
    *,
    origin: str,
    verifier: NoteVerifier,
    commitments: CommitmentChecker | None = None,
    trusted_checkpoints: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Recompute everything; the report lists every fault, the first bad entry first.

    ``trusted_checkpoints`` are signed notes published earlier (kept outside this database): the
    tree rebuilt from the stored leaves must have their roots at their sizes. Entries appended
    while verifying are left for the next run: the counts are read in one snapshot.
    """
    report = VerifyReport()
    reader = _reading_engine(engine)
    try:
        _verify(reader, origin, verifier, commitments, trusted_checkpoints, progress, report)
    finally:
        if reader is not engine:
            reader.dispose()
    return report


def _reading_engine(engine: Engine) -> Engine:
    """SQLite engines for writers take the write lock at BEGIN; verification only reads."""
    if engine.dialect.name == "sqlite":
        return make_engine(engine.url.render_as_string(hide_password=False), immediate=False)
    return engine


def _verify(
    engine: Engine,
    origin: str,
    verifier: NoteVerifier,
    commitments: CommitmentChecker | None,
    trusted_checkpoints: Sequence[str],
    progress: Callable[[int, int], None] | None,
    report: VerifyReport,
) -> None:
    snapshot = engine.connect()
    if engine.dialect.name == "postgresql":
        snapshot = snapshot.execution_options(isolation_level="REPEATABLE READ")
    with snapshot as conn, conn.begin():
        head = int(conn.execute(text("SELECT size FROM ledger_head WHERE id = 1")).one()[0])
        count, top = conn.execute(text("SELECT count(*), max(idx) FROM ledger_entries")).one()
        count, top = int(count), (-1 if top is None else int(top))
        hash_count = int(conn.execute(text("SELECT count(*) FROM ledger_hashes")).one()[0])
        stored_cps = [
            (int(s), bytes(r), str(n))
            for s, r, n in conn.execute(
                text("SELECT size, root, note FROM ledger_checkpoints ORDER BY size")
            ).all()
        ]
    total = max(head, top + 1)
    if count != head or top + 1 != head:
        report.faults.append(
            Fault(
                None,
                "head",
                f"the head counter says {head} entries but {count} are stored"
                f" (highest index {top})",
            )
        )
    if hash_count != stored_hash_count(total):
        report.faults.append(
            Fault(
                None,
                "tree",
                f"{hash_count} tree hashes are stored; {total} entries need "
                f"{stored_hash_count(total)}",
            )
        )
    # Which roots must match at which sizes: stored checkpoints and published ones.
    expect: dict[int, list[tuple[str, bytes]]] = {}
    for size, root, note in stored_cps:
        report.checkpoints += 1
        try:
            cp = open_checkpoint(note, verifier, origin)
        except CheckpointError as exc:
            report.faults.append(Fault(None, "checkpoint", f"checkpoint at size {size}: {exc}"))
            continue
        if cp.size != size or cp.root != root:
            report.faults.append(
                Fault(None, "checkpoint", f"checkpoint at size {size}: its row and note disagree")
            )
        expect.setdefault(cp.size, []).append((f"the stored checkpoint at size {size}", cp.root))
    for n, note in enumerate(trusted_checkpoints):
        report.published_checkpoints += 1
        try:
            cp = open_checkpoint(note, verifier, origin)
        except CheckpointError as exc:
            report.faults.append(Fault(None, "published", f"published checkpoint {n + 1}: {exc}"))
            continue
        if cp.size > total:
            report.faults.append(
                Fault(
                    None,
                    "published",
                    f"a published checkpoint covers {cp.size} entries but the log now has {total}:"
                    " entries were removed",
                )
            )
        expect.setdefault(cp.size, []).append(
            (f"the published checkpoint at size {cp.size}", cp.root)
        )

    edge = Frontier()
    _check_root(edge, expect, report)
    next_hash = 0
    for start in range(0, total, BATCH):
        end = min(start + BATCH, total)
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT idx, leaf, leaf_hash, time_ms, type, tenant, turn_id"
                    " FROM ledger_entries WHERE idx >= :a AND idx < :b ORDER BY idx"
                ),
                {"a": start, "b": end},
            ).all()
            hash_rows = conn.execute(
                text("SELECT idx, hash FROM ledger_hashes WHERE idx >= :a AND idx < :b"),
                {"a": next_hash, "b": stored_hash_count(end)},
            ).all()
        stored_hashes = {int(i): bytes(h) for i, h in hash_rows}
        expected_idx = start
        for idx, leaf_b, lh_b, *columns in rows:
            idx, leaf, stored_lh = int(idx), bytes(leaf_b), bytes(lh_b)
            while expected_idx < idx:
                report.faults.append(Fault(expected_idx, "gap", "this entry is missing (a gap)"))
                expected_idx += 1
            expected_idx = idx + 1
            report.entries += 1
            computed = leaf_hash(leaf)
            if computed != stored_lh:
                report.faults.append(
                    Fault(idx, "leaf", "the leaf's bytes do not match its stored leaf hash")
                )
            _check_leaf(idx, leaf, origin, commitments, report, columns)
            for h in edge.append(computed):
                stored = stored_hashes.get(next_hash)
                if stored != h:
                    what = "missing" if stored is None else "different from the recomputed hash"
                    report.faults.append(
                        Fault(idx, "tree", f"stored tree hash #{next_hash} is {what}")
                    )
                next_hash += 1
            _check_root(edge, expect, report, idx)
        while expected_idx < end:
            report.faults.append(Fault(expected_idx, "gap", "this entry is missing (a gap)"))
            expected_idx += 1
        if progress:
            progress(end, total)

    def index_fault(index: int | None, kind: str, message: str, row: str | None) -> None:
        report.faults.append(Fault(index, kind, message, row))

    opener = commitments if isinstance(commitments, ContentOpener) else None
    report.turns_checked = verify_index(engine, index_fault, opener)


def _check_root(
    edge: Frontier,
    expect: dict[int, list[tuple[str, bytes]]],
    report: VerifyReport,
    idx: int | None = None,
) -> None:
    wanted = expect.get(edge.size)
    if not wanted:
        return
    root = edge.root()
    for what, expected in wanted:
        if expected != root:
            report.faults.append(
                Fault(
                    idx,
                    "root",
                    f"{what} does not match the tree rebuilt from the stored entries "
                    f"(history before entry {edge.size} was changed)",
                )
            )


def _check_leaf(
    idx: int,
    leaf: bytes,
    origin: str,
    commitments: CommitmentChecker | None,
    report: VerifyReport,
    columns: Sequence[Any] = (),
) -> None:
    try:
        doc = decode_leaf(leaf)
    except LeafError as exc:
        report.faults.append(Fault(idx, "leaf", f"the leaf is not readable: {exc}"))
        return
    if not is_canonical(leaf):
        report.faults.append(Fault(idx, "leaf", "the leaf is not canonical RFC 8785 JSON"))
    if doc.get("origin") != origin:
        report.faults.append(
            Fault(idx, "leaf", f"the leaf names log {doc.get('origin')!r}, not {origin!r}")
        )
    for column, value in zip(("time_ms", "type", "tenant", "turn_id"), columns, strict=False):
        field_ = "turn" if column == "turn_id" else column
        if value != doc.get(field_):
            report.faults.append(
                Fault(
                    idx,
                    "column",
                    f"ledger_entries.{column} is {value!r} but the leaf says {doc.get(field_)!r}"
                    " (the API and lookups read that column)",
                )
            )
    if commitments is None:
        return
    for path, commitment in iter_commitments(doc.get("body")):
        state = commitments.check(commitment)
        report.commitments_checked += 1
        if state == "erased":
            report.erased += 1
        elif state == "mismatch":
            report.faults.append(
                Fault(idx, "blob", f"{path}: the stored blob no longer matches its commitment")
            )
        elif state == "corrupt":
            report.faults.append(
                Fault(idx, "blob", f"{path}: the commitment's stored row (digest, salt) is corrupt")
            )
        elif state == "missing":
            report.faults.append(
                Fault(idx, "blob", f"{path}: the committed blob is missing (and was not erased)")
            )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
