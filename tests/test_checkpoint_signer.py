"""One checkpoint signer at a time among replicas on one database (a lease, ``storage.leases``).

On SQLite and PostgreSQL: the lease has one holder, renews for it, passes to another only once
it expired or was given up. Two ledger handles with their own leases, hammered with appends and
checkpoint calls from many threads, never sign at the same time and store one checkpoint per
size, each consistent with the last. Two real gateways: only the lease holder's background job
signs; when it stops, the other takes over."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from storage.db import make_engine, migrate
from storage.leases import Lease
from storage.ledger.events import LedgerEvent
from storage.ledger.log import Ledger
from storage.ledger.note import Ed25519NoteSigner, NoteVerifier
from storage.ledger.verify import verify_ledger
from tests.conftest import start_custody

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

ORIGIN = "test.custody.example/ledger"


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def engine(db_url: str) -> Iterator[Engine]:
    migrate(db_url)
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def test_a_lease_has_one_holder_until_it_expires_or_is_given_up(engine: Engine) -> None:
    clock = Clock()
    a = Lease(engine, "job", holder="a", ttl_ms=1_000, clock=clock)
    b = Lease(engine, "job", holder="b", ttl_ms=1_000, clock=clock)
    assert a.hold() and not b.hold()
    clock.now += 0.9
    assert a.hold(), "renewed"
    clock.now += 0.9
    assert not b.hold(), "the renewal moved the expiry"
    clock.now += 1.1
    assert b.hold() and not a.hold(), "expired: b took it over"
    assert (b.taken, a.taken) == (1, 1)
    b.give_up()
    assert a.hold(), "given up: free at once"
    assert a.current() == ("a", int(clock.now * 1000) + 1_000)


class RecordingSigner:
    """An Ed25519 note key that records when each signature was made (shared by both
    replicas, as they share the log key) and takes a little while, as a KMS does."""

    def __init__(self, inner: Ed25519NoteSigner, intervals: list[tuple[str, float, float]]):
        self.inner = inner
        self.intervals = intervals
        self.lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def key_hash(self) -> int:
        return self.inner.key_hash

    def verifier(self) -> NoteVerifier:
        return self.inner.verifier()

    def verifier_key(self) -> str:
        return self.inner.verifier_key()

    def signing_as(self, who: str) -> RecordingSigner:
        me = RecordingSigner(self.inner, self.intervals)
        me.lock = self.lock
        me.who = who  # type: ignore[attr-defined]
        return me

    def sign(self, msg: bytes) -> bytes:
        start = time.monotonic()
        time.sleep(0.01)
        sig = self.inner.sign(msg)
        with self.lock:
            self.intervals.append((self.who, start, time.monotonic()))  # type: ignore[attr-defined]
        return sig


def test_two_replicas_never_sign_checkpoints_at_once(engine: Engine, db_url: str) -> None:
    intervals: list[tuple[str, float, float]] = []
    shared = RecordingSigner(Ed25519NoteSigner.generate(ORIGIN), intervals)
    ledgers = []
    for who in ("a", "b"):
        ledger = Ledger.open(
            make_engine(db_url),
            origin=ORIGIN,
            signer=shared.signing_as(who),
            checkpoint_every_entries=1,
            checkpoint_every_ms=0,
            share_appends=False,
        )
        ledger.signer_lease = Lease(ledger.engine, "checkpoint-signer", holder=who, ttl_ms=300)
        ledgers.append(ledger)

    def work(i: int) -> None:
        ledger = ledgers[i % 2]
        for n in range(6):
            ledger.append([LedgerEvent("test.event", "acme", "t", None, None, {"n": n})])
            if n % 3 == 2:
                ledger.issue_checkpoint()  # an explicit call waits for the lease
            else:
                ledger.checkpoint_if_due()  # the background job skips without it

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(intervals) >= 2
    ordered = sorted(intervals, key=lambda x: x[1])
    for (_, _, end), (_, start, _) in itertools.pairwise(ordered):
        assert start >= end, "two checkpoints were being signed at the same time"
    with engine.connect() as conn:
        sizes = [r[0] for r in conn.execute(text("SELECT size FROM ledger_checkpoints"))]
    assert len(sizes) == len(set(sizes)) == len(intervals), "one checkpoint per size, none lost"
    report = verify_ledger(engine, origin=ORIGIN, verifier=shared.verifier())
    assert report.ok, report.summary()
    for ledger in ledgers:
        ledger.close()
        ledger.engine.dispose()


def test_only_the_lease_holder_of_two_gateways_signs_and_the_other_takes_over(
    db_url: str, tmp_path: Path
) -> None:
    # A lease long enough that a loaded machine's late renewal (a full suite at load 10+ stalled
    # one past a 1 s lease, and b rightly took over) cannot pass it on while a serves: a gives
    # it up when it stops, so b's takeover does not wait for it to expire.
    a = start_custody(tmp_path / "a", db_url, checkpoint_lease_ms=15_000)
    b = start_custody(
        tmp_path / "b",
        db_url,
        checkpoint_lease_ms=15_000,
        log_key_file=tmp_path / "a" / "ledger-note.key",
    )
    running = [a, b]
    try:
        led_a, led_b = a.services.ledger, b.services.ledger  # type: ignore[attr-defined]
        for n in range(4):
            for r in (a, b):
                client = r.client()
                client.models.generate_content(  # type: ignore[attr-defined]
                    model="gemini-2.5-flash-image", contents=f"a red bicycle {n}"
                )
        _wait_for(lambda: led_a.latest_checkpoint().size >= led_a.size() - 1)
        assert led_a.checkpoints_issued > 0 and led_b.checkpoints_issued == 0
        holder = led_a.signer_lease.current()
        assert holder is not None and holder[0] == led_a.signer_lease.holder
        a.stop()  # gives the lease up: b's next background tick takes it
        running = [b]
        b.client().models.generate_content(  # type: ignore[attr-defined]
            model="gemini-2.5-flash-image", contents="a blue bicycle"
        )
        size = led_b.size()
        _wait_for(lambda: led_b.latest_checkpoint().size >= size)
        assert led_b.checkpoints_issued > 0 and led_b.signer_lease.taken == 1
    finally:
        for r in running:
            r.stop()


def _wait_for(condition, seconds: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        time.sleep(0.05)


def test_shutdown_waits_for_a_background_job_already_in_its_thread() -> None:
    """A replica shutting down while its checkpoint job runs lets that run end before its
    services close (and its signer lease is given up): else it could sign after another
    replica took the lease over, or sign with a closed ledger."""
    from governance.background import _every

    started, ended = threading.Event(), threading.Event()

    def job(_services: object) -> None:
        started.set()
        time.sleep(0.3)
        ended.set()

    class Services:  # what ``_every`` uses of the services
        def __init__(self) -> None:
            self.executor = ThreadPoolExecutor(1)

        async def run_blocking(self, fn: Any, *args: Any) -> Any:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def shut_down_mid_job() -> bool:
        task = asyncio.create_task(_every(Services(), 1, job))  # type: ignore[arg-type]
        while not started.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return ended.is_set()

    assert asyncio.run(shut_down_mid_job()), "the job was still running when shutdown went on"
