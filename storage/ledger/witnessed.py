"""Stored witness cosignatures, and which checkpoint they make publishable.

``CosignatureStore`` keeps the verified ``cosignature/v1`` line each witness returned for a
checkpoint (table ``ledger_cosignatures``). The published checkpoint is the newest stored one
that at least ``quorum`` of the configured witnesses cosigned, with their lines appended to the
log's note: a checkpoint below the quorum is never served as the latest. Every line is verified
again when read, so a row written around Custody counts for nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import Engine, text

from storage.ledger.checkpoint import Checkpoint
from storage.ledger.cosignature import Cosignature, WitnessKey, cosignatures_in, with_cosignatures
from storage.ledger.store import read_checkpoints


class CosignatureStore:
    """The ``ledger_cosignatures`` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, size: int, key: WitnessKey, cosig: Cosignature) -> None:
        """Store a verified cosignature (a second one of the same witness and size is kept
        out: the first stands)."""
        with self.engine.begin() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM ledger_cosignatures WHERE size = :s AND witness_key = :k"),
                {"s": size, "k": key.key_string()},
            ).first()
            if exists:
                return
            conn.execute(
                text(
                    "INSERT INTO ledger_cosignatures"
                    " (size, witness_key, witness, line, timestamp, received_ms)"
                    " VALUES (:s, :k, :w, :l, :t, :r)"
                ),
                {
                    "s": size,
                    "k": key.key_string(),
                    "w": key.name,
                    "l": cosig.line,
                    "t": cosig.timestamp,
                    "r": int(time.time() * 1000),
                },
            )

    def lines(self, size: int) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT line FROM ledger_cosignatures WHERE size = :s ORDER BY witness"),
                {"s": size},
            ).all()
        return [str(r[0]) for r in rows]

    def last_cosigned(self, key: WitnessKey) -> int:
        """The largest size ``key`` cosigned for this log (0: none yet)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                text("SELECT max(size) FROM ledger_cosignatures WHERE witness_key = :k"),
                {"k": key.key_string()},
            ).one()
        return int(row[0] or 0)

    def cosigned(self, cp: Checkpoint) -> Checkpoint:
        """``cp`` with every stored cosignature line of its size appended to its note."""
        return Checkpoint(
            cp.origin, cp.size, cp.root, with_cosignatures(cp.note, self.lines(cp.size))
        )


def published_checkpoint(
    engine: Engine, origin: str, keys: Sequence[WitnessKey], quorum: int
) -> Checkpoint | None:
    """The newest checkpoint cosigned by at least ``quorum`` of ``keys`` (with their lines),
    or None when there is none yet."""
    store = CosignatureStore(engine)
    with engine.connect() as conn:
        sizes = [
            int(r[0])
            for r in conn.execute(
                text(
                    "SELECT size FROM ledger_cosignatures GROUP BY size"
                    " HAVING count(*) >= :q ORDER BY size DESC LIMIT 16"
                ),
                {"q": max(quorum, 1)},
            ).all()
        ]
    if quorum <= 0:
        found = read_checkpoints(engine, origin, newest_only=True)
        return store.cosigned(found[0]) if found else None
    by_size = {cp.size: cp for cp in read_checkpoints(engine, origin, newest_only=False)}
    for size in sizes:
        cp = by_size.get(size)
        if cp is None:
            continue
        cosigned = store.cosigned(cp)
        good, _ = cosignatures_in(cosigned.note, list(keys))
        if len(good) >= quorum:
            return cosigned
    return None
