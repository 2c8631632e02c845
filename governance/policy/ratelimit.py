"""Turn and image counters per actor and per tenant over sliding windows, reserved atomically.

The limiter never decides: it reserves the turn being decided (under one lock, so two threads can
never read the same count) and hands the policy counts that already include it. The policy denies
when a count passes its limit; a denied turn's reservation is released. Of N concurrent turns
against a limit L, exactly L see a count ≤ L.

Two limiters share that contract: ``DatabaseRateLimiter`` (what ``custody serve`` uses) keeps the
counters in the database (``storage.rate_counters``), so every replica on one database draws on
one budget and a restart grants no fresh one; its windows are fixed, each starting with the first
turn counted in it. ``RateLimiter`` keeps sliding-window logs in this process (one process, and
tests that move a clock).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Engine

from storage import rate_counters

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


class Limiter(Protocol):
    """What the policy service needs of a limiter (both below)."""

    def reserve(
        self, tenant: str, actor: str, images: int, windows: tuple[Window, ...]
    ) -> Reservation: ...

    def peek(self, tenant: str, actor: str, windows: tuple[Window, ...]) -> dict[str, Any]: ...

    def release(self, reservation_id: str) -> bool: ...

    def forget(self, reservation_id: str) -> None: ...


def _scopes(tenant: str, actor: str) -> tuple[tuple[str, str], ...]:
    return (("actor", f"{tenant}\x00{actor}"), ("tenant", tenant))


class DatabaseRateLimiter:
    """Fixed windows counted in the database's ``rate_counters`` (see ``storage.rate_counters``):
    one budget for every replica on the database, kept across restarts."""

    def __init__(
        self,
        engine: Engine,
        read_engine: Engine | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        # ``peek`` (the response gate's counters, every turn) reads through ``read_engine``: on
        # SQLite a transaction of ``engine`` takes the write lock, which the ledger's appends hold.
        self._reader = read_engine or engine
        self._clock = clock
        self._lock = threading.Lock()
        self._held: OrderedDict[str, tuple[list[rate_counters.Count], int]] = OrderedDict()

    @staticmethod
    def _buckets(
        tenant: str, actor: str, windows: tuple[Window, ...]
    ) -> list[tuple[Window, str, str, int]]:
        return [
            (w, scope, f"{w.name}\x00{w.seconds}\x00{scope}\x00{who}", w.seconds * 1000)
            for w in windows
            for scope, who in _scopes(tenant, actor)
        ]

    @staticmethod
    def _counters(
        buckets: list[tuple[Window, str, str, int]], counts: dict[str, rate_counters.Count]
    ) -> dict[str, Any]:
        counters: dict[str, Any] = {}
        for window, scope, name, _ in buckets:
            got = counters.setdefault(window.name, {"window_s": window.seconds})
            got[f"{scope}_turns"] = counts[name].turns
            got[f"{scope}_images"] = counts[name].images
        return counters

    def reserve(
        self, tenant: str, actor: str, images: int, windows: tuple[Window, ...]
    ) -> Reservation:
        """Count this turn in every window, in the database, atomically; the counts include it."""
        rid = uuid.uuid4().hex
        buckets = self._buckets(tenant, actor, windows)
        if not buckets:
            return Reservation(rid, {})
        now_ms = int(self._clock() * 1000)
        counts = rate_counters.reserve(
            self._engine, [(name, ms) for _, _, name, ms in buckets], images, now_ms
        )
        reservation = Reservation(
            rid, self._counters(buckets, counts), [(counts[n].bucket, rid) for *_, n, _ in buckets]
        )
        with self._lock:
            self._held[rid] = (list(counts.values()), images)
            while len(self._held) > 100_000:  # old ones have left their windows
                self._held.popitem(last=False)
        return reservation

    def peek(self, tenant: str, actor: str, windows: tuple[Window, ...]) -> dict[str, Any]:
        buckets = self._buckets(tenant, actor, windows)
        now_ms = int(self._clock() * 1000)
        counts = rate_counters.peek(self._reader, [(n, ms) for *_, n, ms in buckets], now_ms)
        return self._counters(buckets, counts)

    def release(self, reservation_id: str) -> bool:
        """Give a place back to the window it was counted in; False if unknown or released."""
        with self._lock:
            held = self._held.pop(reservation_id, None)
        if held is None:
            return False
        rate_counters.release(self._engine, *held)
        return True

    def forget(self, reservation_id: str) -> None:
        """The turn keeps its place (it ended released, or held for review): nothing will
        release it, so what ``release`` would need goes now, not 100,000 turns later."""
        with self._lock:
            self._held.pop(reservation_id, None)


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
            for scope, who in _scopes(tenant, actor):
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

    def forget(self, reservation_id: str) -> None:
        """The turn keeps its place (it ended released, or held for review): its entries stay
        in their windows until they age out; only what ``release`` would need goes."""
        with self._lock:
            self._reservations.pop(reservation_id, None)

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
