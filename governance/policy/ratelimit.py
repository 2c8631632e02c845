"""Turn and image counters per actor and per tenant over sliding windows, reserved atomically.

The limiter never decides: it reserves the turn being decided (under one lock, so two threads can
never read the same count) and hands the policy counts that already include it. The policy denies
when a count passes its limit; a denied turn's reservation is released. Of N concurrent turns
against a limit L, exactly L see a count ≤ L.

Counters live in this process (one gateway replica); replicas behind one database need a shared
store — the same interface over PostgreSQL — which is future work.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

METRICS = ("actor_turns", "tenant_turns", "actor_images", "tenant_images")


@dataclass(frozen=True)
class Window:
    """One named window of a tenant's limits (``per_minute``: 60 s)."""

    name: str
    seconds: int


@dataclass
class _Entry:
    at: float
    images: int


class _Log(OrderedDict[str, _Entry]):
    """One window's entries, oldest first, with their image total kept up to date (a decision
    must not cost time proportional to the turns already in a day-long window)."""

    images = 0

    def add(self, rid: str, entry: _Entry) -> None:
        self[rid] = entry
        self.images += entry.images

    def drop(self, rid: str) -> None:
        entry = self.pop(rid, None)
        if entry is not None:
            self.images -= entry.images

    def drop_oldest(self) -> None:
        _, entry = self.popitem(last=False)
        self.images -= entry.images


@dataclass
class Reservation:
    """The turn's place in each window; ``counters`` is what the policy sees."""

    reservation_id: str
    counters: dict[str, dict[str, int]]
    keys: list[tuple[str, str]] = field(default_factory=list)  # (window key, entry id)


def windows_from_limits(rate_limits: Any) -> tuple[Window, ...]:
    """The windows a tenant's ``rate_limits`` data names (entries without window_s are skipped)."""
    if not isinstance(rate_limits, dict):
        return ()
    out = []
    for name, spec in sorted(rate_limits.items()):
        seconds = spec.get("window_s") if isinstance(spec, dict) else None
        if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0:
            out.append(Window(str(name), seconds))
    return tuple(out)


class RateLimiter:
    """Sliding-window logs keyed by (window, actor or tenant); every operation under one lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._logs: dict[str, _Log] = {}
        self._reservations: OrderedDict[str, Reservation] = OrderedDict()

    def reserve(
        self, tenant: str, actor: str, images: int, windows: tuple[Window, ...]
    ) -> Reservation:
        """Count this turn in every window and return the counts including it, atomically."""
        rid = uuid.uuid4().hex
        reservation = Reservation(rid, {})
        with self._lock:
            reservation.counters = self._count(tenant, actor, windows, (rid, images, reservation))
            if reservation.keys:
                self._reservations[rid] = reservation
                while len(self._reservations) > 100_000:  # old ones have left their windows
                    self._reservations.popitem(last=False)
        return reservation

    def peek(self, tenant: str, actor: str, windows: tuple[Window, ...]) -> dict[str, Any]:
        """The current counts, reserving nothing (the response stage sees these)."""
        with self._lock:
            return self._count(tenant, actor, windows, None)

    def _count(
        self,
        tenant: str,
        actor: str,
        windows: tuple[Window, ...],
        add: tuple[str, int, Reservation] | None,
    ) -> dict[str, Any]:
        """Per window, the actor's and the tenant's counts (after adding ``add``, if given).
        Called with the lock held."""
        now = self._clock()
        counters: dict[str, Any] = {}
        for window in windows:
            counts: dict[str, int] = {"window_s": window.seconds}
            for scope, who in (("actor", f"{tenant}\x00{actor}"), ("tenant", tenant)):
                key = f"{window.name}\x00{window.seconds}\x00{scope}\x00{who}"
                log = self._pruned(key, now - window.seconds)
                if add is not None:
                    rid, images, reservation = add
                    log.add(rid, _Entry(now, images))
                    reservation.keys.append((key, rid))
                counts[f"{scope}_turns"] = len(log)
                counts[f"{scope}_images"] = log.images
            counters[window.name] = counts
        return counters

    def release(self, reservation_id: str) -> bool:
        """Give a denied turn's place back; False if it was unknown or already released."""
        with self._lock:
            reservation = self._reservations.pop(reservation_id, None)
            if reservation is None:
                return False
            for key, rid in reservation.keys:
                log = self._logs.get(key)
                if log is not None:
                    log.drop(rid)
            return True

    def _pruned(self, key: str, cutoff: float) -> _Log:
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = _Log()
        while log:
            first = next(iter(log.values()))
            if first.at > cutoff:
                break
            log.drop_oldest()
        return log
