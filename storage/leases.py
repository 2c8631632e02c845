"""Leases: one holder at a time for a job that several processes on one database could run.

A lease is one row (``leases``): its holder and when it expires. ``hold`` takes a free or
expired lease, or renews the caller's own, with one conditional upsert
(``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` — atomic on SQLite and PostgreSQL); it answers
True only while the caller holds it. A holder that stops renewing (crashed, paused, cut off) loses
the lease ``ttl_ms`` after its last renewal and another process takes it over.

The guarantee is a lease's: two processes never both see ``hold`` answer True for overlapping
periods, provided their clocks agree to well within ``ttl_ms`` (keep them on NTP) and a holder
re-checks ``hold`` after any step that may take long (``Ledger.issue_checkpoint`` does so
after signing and before storing, so a signature made across a lost lease is discarded).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable

from sqlalchemy import Engine, text

_HOLD = text(
    """
    INSERT INTO leases (name, holder, acquired_ms, expires_ms)
    VALUES (:name, :holder, :now, :expires)
    ON CONFLICT (name) DO UPDATE SET
      acquired_ms = CASE WHEN leases.holder = excluded.holder THEN leases.acquired_ms
                         ELSE excluded.acquired_ms END,
      holder = excluded.holder,
      expires_ms = excluded.expires_ms
    WHERE leases.holder = excluded.holder OR leases.expires_ms <= :now
    RETURNING holder
    """
)
_GIVE_UP = text("DELETE FROM leases WHERE name = :name AND holder = :holder")
_CURRENT = text("SELECT holder, expires_ms FROM leases WHERE name = :name")


def process_holder() -> str:
    """A holder name unique to this process: host, pid and a random part."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Lease:
    """One named lease as seen by one holder."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        *,
        holder: str | None = None,
        ttl_ms: int = 15_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.name = name
        self.holder = holder or process_holder()
        self.ttl_ms = ttl_ms
        self._clock = clock
        self.taken = 0  # times this holder took the lease over (not renewals)
        self._held = False

    def hold(self) -> bool:
        """Take or renew the lease for ``ttl_ms``; True while this holder has it."""
        now = int(self._clock() * 1000)
        with self.engine.begin() as conn:
            row = conn.execute(
                _HOLD,
                {
                    "name": self.name,
                    "holder": self.holder,
                    "now": now,
                    "expires": now + self.ttl_ms,
                },
            ).first()
        held = row is not None and row.holder == self.holder
        if held and not self._held:
            self.taken += 1
        self._held = held
        return held

    @property
    def held(self) -> bool:
        """What the last ``hold`` answered."""
        return self._held

    def give_up(self) -> None:
        """Release the lease if this holder has it (a clean shutdown hands over at once)."""
        with self.engine.begin() as conn:
            conn.execute(_GIVE_UP, {"name": self.name, "holder": self.holder})
        self._held = False

    def current(self) -> tuple[str, int] | None:
        """(holder, expires_ms) as stored, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(_CURRENT, {"name": self.name}).first()
        return (row.holder, int(row.expires_ms)) if row is not None else None
