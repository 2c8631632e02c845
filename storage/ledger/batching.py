"""Group commit: items submitted by many threads of one process, flushed together in batches.

Contract (what ``GroupCommit.submit`` promises its caller):

- It returns only after the flush that carried its item returned, with that flush's result for
  the item. The flush function is the store's append, which MUST be durable before it returns,
  so nobody gets an index before it is durable.
- Items are flushed in submission order, one batch at a time, each batch one call of the one
  flush function (``max_entries`` / ``max_bytes`` per call).
- A flush that raises fails every item of that batch with its exception, and only those; the
  items queued behind it are flushed by the next batch.
- The queue is bounded (``max_queued_entries`` / ``max_queued_bytes``, counting what waits
  behind the batch in flight): a submit that would go past it raises ``LedgerPushback`` at once
  with a retry hint, instead of queueing without bound. The front end answers it with 503 and
  ``Retry-After``.

There is no thread of its own: the submitting thread that finds no flush in flight becomes the
leader, flushes, and hands the lead to the oldest waiting item, so each flush wakes exactly the
threads it finished plus one. A new leader may linger up to ``max_age_ms`` (never longer than
the last flush took) for as many items as the last flush saw, i.e. for the threads the last
batch just released: without it batches alternate 1, n-1, 1, ... (PostgreSQL's
``commit_delay`` idea). The caller whose item completes that number takes the lead over and
flushes at once, in its own thread, instead of waking the lingering leader (which is then woken
once, with its result): one thread hand-off less per batch, and no wake-up per arriving item.
Batching is per process; across processes the store's lock orders the flushes.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchLimits:
    """How big one flush may be, how long a leader lingers, and where push-back starts."""

    max_entries: int = 1024  # entries per flush
    max_bytes: int = 8 << 20  # leaf bytes per flush
    max_age_ms: float = 1.0  # the longest a new leader waits for more items
    max_queued_entries: int = 16_384  # waiting behind the flush in flight, then push back
    max_queued_bytes: int = 128 << 20


class LedgerPushback(RuntimeError):
    """The append queue is full: retry after ``retry_after_ms``; nothing was queued or written."""

    def __init__(self, retry_after_ms: int, *, queued_entries: int, queued_bytes: int) -> None:
        self.retry_after_ms = retry_after_ms
        self.queued_entries = queued_entries
        self.queued_bytes = queued_bytes
        super().__init__(
            f"the ledger's append queue is full ({queued_entries} entries, {queued_bytes} bytes"
            f" waiting); nothing was recorded — retry in {retry_after_ms} ms"
        )


class _Waiter(Generic[T, R]):
    __slots__ = ("done", "entries", "error", "item", "nbytes", "result", "wake")

    def __init__(self, item: T, entries: int, nbytes: int) -> None:
        self.item = item
        self.entries = entries
        self.nbytes = nbytes
        self.result: R | None = None
        self.error: BaseException | None = None
        self.done = False
        # Made (acquired) only when this caller must wait; released once: when its batch is
        # done, or when it is handed the lead.
        self.wake: threading.Lock | None = None


def _locked() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


class GroupCommit(Generic[T, R]):
    """Batches ``submit`` calls from many threads into calls of ``flush`` (see the module)."""

    def __init__(
        self, flush: Callable[[Sequence[T]], Sequence[R]], limits: BatchLimits | None = None
    ) -> None:
        self.flush = flush
        self.limits = limits or BatchLimits()
        self._mutex = threading.Lock()
        self._queue: deque[_Waiter[T, R]] = deque()
        self._queued_entries = 0
        self._queued_bytes = 0
        self._flushing = False  # a leader exists (lingering or flushing)
        self._lingerer: _Waiter[T, R] | None = None  # the leader while it lingers
        self._want = 1  # items the lingering leader waits for
        self._last_seen = 1  # items in flight or waiting when the last flush started
        self._last_flush_s = 0.0
        self._entries_per_s = 0.0  # a moving average, for the push-back hint
        self.flushes = 0  # flush calls that succeeded
        self.items = 0  # items they carried
        self.entries = 0  # entries they carried

    @property
    def queued(self) -> tuple[int, int]:
        """Items and entries waiting behind the flush in flight (a gauge, for metrics)."""
        with self._mutex:
            return len(self._queue), self._queued_entries

    def submit(self, item: T, *, entries: int = 1, nbytes: int = 0) -> R:
        """Queue ``item`` (``entries`` entries, ``nbytes`` bytes) and return its flush result."""
        with self._mutex:
            if not self._flushing and self._last_seen <= 1:
                # Idle, and the last flush had nobody waiting behind it: nobody to linger for.
                self._flushing = True
                alone = True
            else:
                alone = False
        if alone:
            return self._flush_alone(item, entries)
        me: _Waiter[T, R] = _Waiter(item, entries, nbytes)
        with self._mutex:
            self._check_room(entries, nbytes)
            self._queue.append(me)
            self._queued_entries += entries
            self._queued_bytes += nbytes
            if not self._flushing:
                self._flushing = lead = True
                took_over = False
            elif self._lingerer is not None and self._batch_ready():
                # This item completes the batch the lingering leader waits for: lead in its
                # place, now, instead of waking it (one hand-off less per batch).
                self._lingerer = None
                lead = took_over = True
            else:
                lead = took_over = False
                wake = me.wake = _locked()
        if not lead:
            wake.acquire()  # done, or handed the lead (the leader is always the queue's head)
        while not me.done:
            if not self._lead(me, took_over=took_over):
                # A taker whose item did not fit its batch, behind other items: it waits its
                # turn like them (``_lead`` gave it a lock), until done or handed the lead.
                me.wake.acquire()  # type: ignore[union-attr]
            took_over = False
        if me.error is not None:
            try:
                raise me.error
            finally:  # the traceback holds this frame: it must not name the error (a cycle)
                del me
        return me.result  # type: ignore[return-value]  # set with done, error is None

    def _flush_alone(self, item: T, entries: int) -> R:
        """``_lead`` for one item that never queued (the common case of one writer)."""
        started = time.monotonic()
        try:
            results = self.flush((item,))
            if len(results) != 1:
                raise RuntimeError(f"bad math: the flush returned {len(results)} results for 1")
        finally:
            with self._mutex:
                self._last_seen = 1 + len(self._queue)
                successor = self._queue[0] if self._queue else None
                if successor is None:
                    self._flushing = False
            if successor is not None:
                successor.wake.release()  # type: ignore[union-attr]  # it waits: it leads next
        seconds = time.monotonic() - started
        self._last_flush_s = seconds
        rate = entries / max(seconds, 1e-6)
        old = self._entries_per_s
        self._entries_per_s = rate if not old else 0.8 * old + 0.2 * rate
        self.flushes += 1
        self.items += 1
        self.entries += entries
        return results[0]

    def _batch_ready(self) -> bool:
        """Mutex held: the lingering leader's wait is over (enough items, or a full flush)."""
        return (
            len(self._queue) >= self._want
            or self._queued_entries >= self.limits.max_entries
            or self._queued_bytes >= self.limits.max_bytes
        )

    def _check_room(self, entries: int, nbytes: int) -> None:
        """Called with the mutex held. An empty queue accepts any item, however large."""
        limits = self.limits
        if not self._queue:
            return
        if (
            self._queued_entries + entries <= limits.max_queued_entries
            and self._queued_bytes + nbytes <= limits.max_queued_bytes
        ):
            return
        rate = self._entries_per_s or 1_000.0
        retry_ms = max(1, math.ceil(1000 * self._queued_entries / rate))
        raise LedgerPushback(
            retry_ms, queued_entries=self._queued_entries, queued_bytes=self._queued_bytes
        )

    def _lead(self, me: _Waiter[T, R], *, took_over: bool) -> bool:
        """Lead one flush. False when ``me`` is not done and must now wait its turn (a taker
        whose item did not fit the batch, with other items queued before it)."""
        with self._mutex:
            if not took_over and not self._linger(me):
                return True  # another caller took the lead over and flushed ``me`` with its batch
            batch = self._take()
            self._last_seen = len(batch) + len(self._queue)
        started = time.monotonic()
        try:
            results = self.flush([w.item for w in batch])
            if len(results) != len(batch):
                raise RuntimeError(
                    f"bad math: the flush returned {len(results)} results for {len(batch)} items"
                )
        except BaseException as exc:  # every waiter of this batch, and only them, fails
            # Its traceback starts at the flush, not in this frame, whose ``batch`` holds the
            # error: that reference cycle kept every item of the batch until a full collection.
            exc.__traceback__ = exc.__traceback__.tb_next if exc.__traceback__ else None
            for w in batch:
                w.error = exc
        else:
            for w, r in zip(batch, results, strict=True):
                w.result = r
            self._record(batch, time.monotonic() - started)
        with self._mutex:
            for w in batch:
                w.done = True
            successor = self._queue[0] if self._queue else None
            if successor is None:
                self._flushing = False
            elif successor is not me and not me.done:
                me.wake = _locked()  # released when done, or when handed the lead
        for w in batch:
            if w is not me and w.wake is not None:
                w.wake.release()
        if successor is not None and successor is not me:
            successor.wake.release()  # type: ignore[union-attr]  # it waits: it leads next
        return me.done or successor is me

    def _linger(self, me: _Waiter[T, R]) -> bool:
        """Mutex held (released while waiting): wait briefly for the items the last flush's
        callers are about to submit. True: ``me`` leads the flush; False: a caller that
        completed the batch took the lead over, and ``me`` is done (its batch was flushed)."""
        want = min(self._last_seen, self.limits.max_entries)
        if want <= 1 or len(self._queue) >= want or self.limits.max_age_ms <= 0:
            return True
        self._want = want
        self._lingerer = me
        wake = me.wake = _locked()
        self._mutex.release()
        try:
            woken = wake.acquire(timeout=min(self.limits.max_age_ms / 1000, self._last_flush_s))
        finally:
            self._mutex.acquire()
        if self._lingerer is me:  # nobody took over: lead what has arrived
            self._lingerer = None
            return True
        if not woken:  # taken over as the wait timed out: the taker releases ``me`` when done
            self._mutex.release()
            try:
                wake.acquire()
            finally:
                self._mutex.acquire()
        return False

    def _take(self) -> list[_Waiter[T, R]]:
        """The oldest items within the per-flush limits (at least one). Mutex held."""
        limits = self.limits
        batch = [self._queue.popleft()]
        entries, nbytes = batch[0].entries, batch[0].nbytes
        while self._queue:
            nxt = self._queue[0]
            if entries + nxt.entries > limits.max_entries or nbytes + nxt.nbytes > limits.max_bytes:
                break
            batch.append(self._queue.popleft())
            entries += nxt.entries
            nbytes += nxt.nbytes
        self._queued_entries -= entries
        self._queued_bytes -= nbytes
        return batch

    def _record(self, batch: list[_Waiter[T, R]], seconds: float) -> None:
        entries = sum(w.entries for w in batch)
        self._last_flush_s = seconds
        rate = entries / max(seconds, 1e-6)
        old = self._entries_per_s
        self._entries_per_s = rate if not old else 0.8 * old + 0.2 * rate
        self.flushes += 1
        self.items += len(batch)
        self.entries += entries
