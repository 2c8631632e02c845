"""Rate counters in the database: one budget for every replica and across restarts.

A bucket is one (window, actor or tenant) pair, named by the caller (its SHA-256 is the key).
Its window starts with the first turn counted in it and lasts ``window_ms``; a turn that finds
the window over starts the next one. Each count is one upsert
(``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``) — atomic on SQLite and PostgreSQL alike, so
of N concurrent reservations against a limit L, across any number of processes, exactly L see a
count ≤ L. One reservation's buckets are updated in one transaction, in sorted order (no two
transactions wait on each other's rows the other way round).

MUST: ``release`` only what ``reserve`` returned, once; it takes the turn back from the window
it was counted in and never from a later one.

Durability: a count commits without waiting for its own log flush (PostgreSQL
``synchronous_commit = off`` for the transaction; on SQLite the caller passes an engine made
with ``flush_on_commit=False``). The gateway's next step after counting a turn is always a
ledger append of that turn, which flushes the log (the WAL, on SQLite) up to and past the count:
the count is durable before the turn goes upstream or is answered, and a crash can lose only a
count whose turn has recorded nothing yet. The count's own fsync used to wait behind the turn's
blob writes on the same disk (~3 ms of a 1024² turn's request gate, docs/performance.md,
"Request gate").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, bindparam, text

_UPSERT = text(
    """
    INSERT INTO rate_counters (bucket, started_ms, turns, images)
    VALUES (:bucket, :now, 1, :images)
    ON CONFLICT (bucket) DO UPDATE SET
      turns = CASE WHEN rate_counters.started_ms <= :cutoff THEN 1
                   ELSE rate_counters.turns + 1 END,
      images = CASE WHEN rate_counters.started_ms <= :cutoff THEN excluded.images
                    ELSE rate_counters.images + excluded.images END,
      started_ms = CASE WHEN rate_counters.started_ms <= :cutoff THEN excluded.started_ms
                        ELSE rate_counters.started_ms END
    RETURNING turns, images, started_ms
    """
)
_RELEASE = text(
    "UPDATE rate_counters SET turns = turns - 1, images = images - :images"
    " WHERE bucket = :bucket AND started_ms = :started AND turns > 0"
)

_PEEK = text(
    "SELECT bucket, started_ms, turns, images FROM rate_counters WHERE bucket IN :keys"
).bindparams(bindparam("keys", expanding=True))


@dataclass(frozen=True)
class Count:
    """A bucket's window after a reservation (or as it stands, for ``peek``)."""

    bucket: str  # the key's SHA-256
    started_ms: int
    turns: int
    images: int


def _no_flush_wait(conn: Connection) -> None:
    """On PostgreSQL, this transaction's commit returns without waiting for its WAL flush."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SET LOCAL synchronous_commit TO OFF"))


def bucket_key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def reserve(
    engine: Engine, buckets: list[tuple[str, int]], images: int, now_ms: int
) -> dict[str, Count]:
    """Count one turn (and its ``images``) in every (name, window_ms) bucket; by name, the
    counts including it."""
    out: dict[str, Count] = {}
    with engine.begin() as conn:
        _no_flush_wait(conn)
        for name, window_ms in sorted(buckets, key=lambda b: bucket_key(b[0])):
            key = bucket_key(name)
            row = conn.execute(
                _UPSERT,
                {"bucket": key, "now": now_ms, "images": images, "cutoff": now_ms - window_ms},
            ).one()
            out[name] = Count(key, int(row.started_ms), int(row.turns), int(row.images))
    return out


def release(engine: Engine, counted: list[Count], images: int) -> None:
    """Take one reserved turn back from each bucket's window it was counted in."""
    with engine.begin() as conn:
        _no_flush_wait(conn)
        for count in sorted(counted, key=lambda c: c.bucket):
            conn.execute(
                _RELEASE,
                {"bucket": count.bucket, "started": count.started_ms, "images": images},
            )


def peek(engine: Engine, buckets: list[tuple[str, int]], now_ms: int) -> dict[str, Count]:
    """The counts as they stand, reserving nothing (a window that is over counts zero)."""
    keys = {bucket_key(name): (name, window_ms) for name, window_ms in buckets}
    out = {name: Count(key, now_ms, 0, 0) for key, (name, _) in keys.items()}
    if not keys:
        return out
    with engine.connect() as conn:
        rows = conn.execute(
            _PEEK,
            {"keys": list(keys)},
        ).all()
    for row in rows:
        name, window_ms = keys[row.bucket]
        if int(row.started_ms) > now_ms - window_ms:
            out[name] = Count(row.bucket, int(row.started_ms), int(row.turns), int(row.images))
    return out
