"""Group commit as a component: order, durability before return, failure isolation, the bound.

The flush functions here stand in for a store's append (a list that "commits"), and a gate
holds a flush open so that the next submits provably queue behind it: no test depends on how
fast anything runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest

from storage.ledger.batching import BatchLimits, GroupCommit, LedgerPushback


class _Log:
    """A flush that appends to ``committed``; the first ``held`` flushes wait on ``gate``."""

    def __init__(self, held: int = 0, fail_if: Callable[[Sequence[int]], bool] | None = None):
        self.committed: list[int] = []
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.held = held
        self.fail_if = fail_if

    def flush(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        if len(self.batches) <= self.held:
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        if self.fail_if is not None and self.fail_if(items):
            raise OSError(f"disk full while writing {list(items)}")
        first = len(self.committed)
        self.committed.extend(items)
        return list(range(first, first + len(items)))


def _wait_for(what: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not what():
        assert time.monotonic() < deadline, "the submits never queued"
        time.sleep(0.001)


def _submit_in_threads(
    gc: GroupCommit[int, int], items: Sequence[int], out: dict[int, object]
) -> list[threading.Thread]:
    def run(item: int) -> None:
        try:
            out[item] = gc.submit(item)
        except BaseException as exc:
            out[item] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in items]
    for t in threads:
        t.start()
    return threads


def test_items_are_flushed_in_submission_order_and_each_caller_gets_its_own_result() -> None:
    log = _Log(held=1)
    gc: GroupCommit[int, int] = GroupCommit(log.flush)
    out: dict[int, object] = {}
    first = _submit_in_threads(gc, [0], out)
    assert log.entered.wait(30)
    queued = []
    for i in range(1, 6):  # one at a time, so the queue order is known
        queued += _submit_in_threads(gc, [i], out)
        _wait_for(lambda i=i: gc.queued[0] == i)
    log.gate.set()
    for t in [*first, *queued]:
        t.join()
    assert log.committed == [0, 1, 2, 3, 4, 5]
    assert out == {i: i for i in range(6)}  # each caller got its own item's index
    assert log.batches == [[0], [1, 2, 3, 4, 5]]  # everything that queued went in one flush
    assert gc.flushes == 2 and gc.items == 6


def test_nobody_returns_before_the_flush_carrying_their_item_returned() -> None:
    log = _Log()
    gc: GroupCommit[int, int] = GroupCommit(log.flush)
    seen_committed: dict[int, bool] = {}

    def writer(k: int) -> None:
        for i in range(50):
            item = k * 1000 + i
            index = gc.submit(item)
            seen_committed[item] = log.committed[index] == item  # durable when returned

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen_committed) == 400 and all(seen_committed.values())
    for k in range(8):  # each writer's items stay in its order
        mine = [x for x in log.committed if x // 1000 == k]
        assert mine == sorted(mine)


def test_a_failing_flush_fails_every_waiter_of_that_batch_and_only_them() -> None:
    log = _Log(held=1, fail_if=lambda items: 2 in items)
    gc: GroupCommit[int, int] = GroupCommit(log.flush, BatchLimits(max_entries=2))
    out: dict[int, object] = {}
    first = _submit_in_threads(gc, [0], out)
    assert log.entered.wait(30)
    later = []
    for i in range(1, 6):
        later += _submit_in_threads(gc, [i], out)
        _wait_for(lambda i=i: gc.queued[0] == i)
    log.gate.set()
    for t in [*first, *later]:
        t.join()
    # Batches of at most 2 entries: [0], [1, 2] (fails), [3, 4], [5].
    assert log.batches == [[0], [1, 2], [3, 4], [5]]
    assert isinstance(out[1], OSError) and isinstance(out[2], OSError)
    assert out[1] is out[2]  # the batch's one exception
    assert [out[i] for i in (0, 3, 4, 5)] == [0, 1, 2, 3]
    assert log.committed == [0, 3, 4, 5]
    assert gc.submit(6) == 4  # and the queue goes on


def test_a_full_queue_pushes_back_at_once_and_queues_nothing() -> None:
    log = _Log(held=1)
    limits = BatchLimits(max_queued_entries=3, max_queued_bytes=1 << 20)
    gc: GroupCommit[int, int] = GroupCommit(log.flush, limits)
    out: dict[int, object] = {}
    first = _submit_in_threads(gc, [0], out)
    assert log.entered.wait(30)
    waiting = []
    for i in range(1, 4):  # three entries wait behind the flush in flight: the bound
        waiting += _submit_in_threads(gc, [i], out)
        _wait_for(lambda i=i: gc.queued[0] == i)
    with pytest.raises(LedgerPushback) as caught:
        gc.submit(99)
    assert caught.value.retry_after_ms >= 1
    assert caught.value.queued_entries == 3
    assert "retry in" in str(caught.value)
    assert gc.queued == (3, 3)  # the refused item did not queue
    log.gate.set()
    for t in [*first, *waiting]:
        t.join()
    assert log.committed == [0, 1, 2, 3]  # 99 was never written
    assert gc.submit(4) == 4  # room again once the queue drained


def test_the_byte_bound_pushes_back_too_and_an_empty_queue_takes_any_item() -> None:
    log = _Log(held=1)
    gc: GroupCommit[int, int] = GroupCommit(log.flush, BatchLimits(max_queued_bytes=100))
    big = threading.Thread(target=lambda: gc.submit(0, nbytes=10_000))  # alone: accepted
    big.start()
    assert log.entered.wait(30)
    out: dict[int, object] = {}
    threads = _submit_in_threads(gc, [1], out)  # 0 bytes: fits
    _wait_for(lambda: gc.queued[0] == 1)
    with pytest.raises(LedgerPushback):
        gc.submit(2, nbytes=101)
    log.gate.set()
    for t in [big, *threads]:
        t.join()
    assert log.committed == [0, 1]


# --- lingering: a new leader waits briefly for the callers the last batch released ---------------


def _lingering(gc: GroupCommit[int, int], want: int, seconds: float) -> None:
    """White-box: as after a flush of ``want`` items that took ``seconds``."""
    gc._last_seen, gc._last_flush_s = want, seconds


class _ThreadLog(_Log):
    """A ``_Log`` that also records which thread called each flush."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.flushers: list[str] = []

    def flush(self, items: Sequence[int]) -> list[int]:
        self.flushers.append(threading.current_thread().name)
        return super().flush(items)


def _named_submit(
    gc: GroupCommit[int, int], item: int, out: dict[int, object], entries: int = 1
) -> threading.Thread:
    def run() -> None:
        try:
            out[item] = gc.submit(item, entries=entries)
        except BaseException as exc:
            out[item] = exc

    t = threading.Thread(target=run, name=f"submitter-{item}")
    t.start()
    return t


def test_the_caller_that_completes_a_lingering_batch_flushes_it_itself() -> None:
    log = _ThreadLog()
    gc: GroupCommit[int, int] = GroupCommit(log.flush, BatchLimits(max_age_ms=60_000))
    _lingering(gc, want=3, seconds=60.0)  # the leader would wait up to a minute for 3 items
    out: dict[int, object] = {}
    first = _named_submit(gc, 0, out)
    _wait_for(lambda: gc._lingerer is not None)
    second = _named_submit(gc, 1, out)
    _wait_for(lambda: gc.queued[0] == 2)
    third = _named_submit(gc, 2, out)  # completes the batch: flushes at once, in its thread
    for t in (first, second, third):
        t.join(10)
        assert not t.is_alive(), "the lingering leader was not taken over"
    assert log.batches == [[0, 1, 2]] and log.flushers == ["submitter-2"]
    assert out == {0: 0, 1: 1, 2: 2}
    assert gc._lingerer is None and gc.queued == (0, 0)


def test_a_lingering_leader_flushes_what_arrived_when_its_wait_ends() -> None:
    log = _ThreadLog()
    gc: GroupCommit[int, int] = GroupCommit(log.flush, BatchLimits(max_age_ms=200))
    _lingering(gc, want=3, seconds=60.0)  # bounded by max_age_ms: 0.2 s
    out: dict[int, object] = {}
    first = _named_submit(gc, 0, out)
    _wait_for(lambda: gc._lingerer is not None)
    second = _named_submit(gc, 1, out)
    for t in (first, second):
        t.join(10)
    assert log.batches == [[0, 1]] and log.flushers == ["submitter-0"]
    assert out == {0: 0, 1: 1}


def test_a_taker_whose_item_does_not_fit_the_batch_flushes_the_next_one() -> None:
    log = _ThreadLog()
    gc: GroupCommit[int, int] = GroupCommit(
        log.flush, BatchLimits(max_entries=3, max_age_ms=60_000)
    )
    _lingering(gc, want=3, seconds=60.0)
    out: dict[int, object] = {}
    first = _named_submit(gc, 0, out)
    _wait_for(lambda: gc._lingerer is not None)
    second = _named_submit(gc, 1, out)
    _wait_for(lambda: gc.queued[0] == 2)
    third = _named_submit(gc, 2, out, entries=2)  # 4 entries queued: past a full flush
    for t in (first, second, third):
        t.join(10)
        assert not t.is_alive()
    assert log.batches == [[0, 1], [2]]
    assert log.flushers == ["submitter-2", "submitter-2"]
    assert out == {0: 0, 1: 1, 2: 2}


def test_many_writers_with_lingering_and_small_batches_each_get_their_own_durable_result() -> None:
    log = _Log()
    gc: GroupCommit[int, int] = GroupCommit(log.flush, BatchLimits(max_entries=3, max_age_ms=5))
    got: dict[int, int] = {}

    def writer(k: int) -> None:
        for i in range(300):
            item = k * 1000 + i
            index = gc.submit(item, entries=1 + (i % 2))
            assert log.committed[index] == item
            got[item] = index

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 1800 and sorted(got.values()) == list(range(1800))
    assert all(sum(1 + (x % 1000) % 2 for x in b) <= 3 or len(b) == 1 for b in log.batches)
    assert gc.queued == (0, 0) and not gc._flushing and gc._lingerer is None


def test_a_lone_writer_flushes_without_queueing_and_a_failure_is_its_own() -> None:
    log = _Log(fail_if=lambda items: 13 in items)
    gc: GroupCommit[int, int] = GroupCommit(log.flush)
    assert [gc.submit(i) for i in range(3)] == [0, 1, 2]
    with pytest.raises(OSError):
        gc.submit(13)
    assert gc.submit(3) == 3 and gc.queued == (0, 0) and not gc._flushing
    assert log.batches == [[0], [1], [2], [13], [3]] and gc.flushes == 4 and gc.entries == 4


def test_a_lone_flush_that_fails_still_hands_the_lead_to_the_item_behind_it() -> None:
    log = _Log(held=1, fail_if=lambda items: 0 in items)
    gc: GroupCommit[int, int] = GroupCommit(log.flush)
    out: dict[int, object] = {}
    first = _submit_in_threads(gc, [0], out)
    assert log.entered.wait(30)  # 0 flushes alone (nothing queued, nobody to linger for)
    second = _submit_in_threads(gc, [1], out)
    _wait_for(lambda: gc.queued[0] == 1)
    log.gate.set()
    for t in [*first, *second]:
        t.join(30)
    assert isinstance(out[0], OSError) and out[1] == 0
    assert log.batches == [[0], [1]] and not gc._flushing


def test_a_taker_behind_an_item_that_does_not_fit_waits_its_turn_one_flush_at_a_time() -> None:
    """The lingering leader's batch is completed by a taker, but an item queued before the taker
    does not fit the flush either: that item leads next, and the taker waits behind it (it used
    to lead at the same time: two flushes at once)."""
    in_flush = threading.Lock()
    log = _Log(held=1)

    def flush(items: Sequence[int]) -> list[int]:
        assert in_flush.acquire(blocking=False), "two flushes at once"
        try:
            return log.flush(items)
        finally:
            in_flush.release()

    gc: GroupCommit[int, int] = GroupCommit(flush, BatchLimits(max_entries=5, max_age_ms=60_000))
    lingerers: list[str] = []
    linger = gc._linger

    def recorded(me: object) -> bool:
        lingerers.append(threading.current_thread().name)
        return linger(me)  # type: ignore[arg-type]

    gc._linger = recorded  # type: ignore[method-assign]
    out: dict[int, object] = {}
    threads = [_named_submit(gc, 0, out)]
    assert log.entered.wait(30)  # 0 flushes alone and is held there
    for item in (1, 2, 3):  # 2 entries each: they queue behind it
        threads.append(_named_submit(gc, item, out, entries=2))
        _wait_for(lambda item=item: gc.queued[0] == item)
    time.sleep(0.2)  # the held flush takes 0.2 s: item 1's linger is bounded by that
    log.gate.set()  # 1 leads next and lingers for 4 items (as many as were waiting)
    _wait_for(lambda: gc._lingerer is not None)
    threads.append(_named_submit(gc, 4, out))  # the 4th: takes over; 1 and 2 fit, 3 does not
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert out == {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}
    assert log.batches == [[0], [1, 2], [3, 4]]
    assert lingerers == ["submitter-1", "submitter-3"]  # never the taker a second time
    assert not gc._flushing and gc.queued == (0, 0)


@pytest.mark.parametrize("seed", range(12))
def test_random_writers_limits_and_failures_keep_the_contract(seed: int) -> None:
    """One flush at a time, every item flushed exactly once or failed with its batch, each
    writer's items in its order, nothing left queued: over random limits, lingers, entry
    counts, slow and failing flushes."""
    import random

    rng = random.Random(seed)
    committed: list[tuple[int, int]] = []
    in_flush = threading.Lock()

    def flush(items: Sequence[tuple[int, int]]) -> list[int]:
        assert in_flush.acquire(blocking=False), "two flushes at once"
        try:
            if rng.random() < 0.2:
                time.sleep(rng.random() * 0.0005)
            if rng.random() < 0.03:
                raise OSError("disk full")
            first = len(committed)
            committed.extend(items)
            return list(range(first, first + len(items)))
        finally:
            in_flush.release()

    limits = BatchLimits(
        max_entries=rng.choice([1, 2, 3, 5, 1024]), max_age_ms=rng.choice([0, 0.2, 1, 5])
    )
    gc: GroupCommit[tuple[int, int], int] = GroupCommit(flush, limits)
    got: dict[tuple[int, int], int | None] = {}

    def writer(k: int) -> None:
        pick = random.Random(seed * 100 + k)
        for i in range(100):
            try:
                index = gc.submit((k, i), entries=pick.choice([1, 1, 2]))
                assert committed[index] == (k, i)
                got[(k, i)] = index
            except OSError:
                got[(k, i)] = None

    writers = rng.choice([2, 4, 7, 16])
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a writer never got its answer"
    assert len(got) == writers * 100
    assert sorted(i for i in got.values() if i is not None) == list(range(len(committed)))
    for k in range(writers):
        mine = [i for (w, _), i in sorted(got.items()) if w == k and i is not None]
        assert mine == sorted(mine)
    assert gc.queued == (0, 0) and not gc._flushing and gc._lingerer is None
