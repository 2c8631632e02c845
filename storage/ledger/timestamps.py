"""RFC 3161 timestamp tokens of checkpoints (table ``ledger_checkpoint_timestamps``).

A token is over the checkpoint *body* (its origin, size and root lines, as the log signs them),
so it stays valid whatever cosignature lines witnesses add to the note. Storage only: getting a
token from a TSA and checking one belong to the caller.
"""

from __future__ import annotations

import time

from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError


class CheckpointTimestamps:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, size: int, token: bytes) -> bool:
        """Store ``token`` for the checkpoint of ``size``; False when one is stored already."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO ledger_checkpoint_timestamps (size, token, time_ms)"
                        " VALUES (:s, :t, :m)"
                    ),
                    {"s": size, "t": token, "m": int(time.time() * 1000)},
                )
        except IntegrityError:
            return False
        return True

    def get(self, size: int) -> bytes | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                text("SELECT token FROM ledger_checkpoint_timestamps WHERE size = :s"),
                {"s": size},
            ).first()
        return None if row is None else bytes(row[0])
