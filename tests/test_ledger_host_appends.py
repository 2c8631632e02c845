"""Group commit across processes (``storage/ledger/host_appends.py``), on SQLite and PostgreSQL.

The processes of one host that open one ledger elect a sequencer that commits their batches
together; a sequencer that goes away — before or after committing a batch it did not answer —
loses nothing and writes nothing twice; a process that cannot reach one appends directly.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage.db import make_engine, migrate
from storage.ledger.events import LedgerEvent
from storage.ledger.host_appends import HostAppends, _read, batch_from, endpoint_for
from storage.ledger.leaf import encode_leaf
from storage.ledger.log import Ledger, load_or_create_note_signer
from storage.ledger.merkle import leaf_hash
from storage.ledger.open_store import open_store
from storage.ledger.store import LeafRow
from storage.ledger.verify import verify_ledger

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

ORIGIN = "test.custody.example/ledger"


def _event(worker: int, i: int) -> LedgerEvent:
    return LedgerEvent("test.event", "acme", f"worker-{worker}", body={"w": worker, "i": i})


def _rows(*events: LedgerEvent) -> list[LeafRow]:
    leaves = [encode_leaf(ORIGIN, ev, 1_000 + n) for n, ev in enumerate(events)]
    return [
        LeafRow(1_000 + n, ev.type, ev.tenant, ev.turn, leaf, leaf_hash(leaf))
        for n, (ev, leaf) in enumerate(zip(events, leaves, strict=True))
    ]


def _append_many(url: str, key_path: str, worker: int, count: int, barrier: Any, out: Any) -> None:
    """Runs in a spawned process: ``count`` appends once every worker is ready; puts its indexes
    and the batches it sent and served."""
    engine = make_engine(url)
    signer = load_or_create_note_signer(Path(key_path), ORIGIN)
    ledger = Ledger.open(engine, origin=ORIGIN, signer=signer)
    barrier.wait()
    indexes = [ledger.append([_event(worker, i)])[0].index for i in range(count)]
    store = ledger.store
    assert isinstance(store, HostAppends)
    barrier.wait()  # nobody closes (and hands the sequencer on) before everyone is done
    out.put((indexes, store.sent_batches, store.remote_batches))
    ledger.close()
    engine.dispose()


def test_processes_of_one_host_commit_through_one_sequencer(db_url: str, tmp_path: Path) -> None:
    migrate(db_url)
    key_path = tmp_path / "ledger-note.key"
    signer = load_or_create_note_signer(key_path, ORIGIN)
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    procs = [
        ctx.Process(target=_append_many, args=(db_url, str(key_path), w, 150, barrier, out))
        for w in range(3)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    indexes = sorted(i for r, _, _ in results for i in r)
    assert indexes == list(range(450))  # one order, no gap, no duplicate
    sent = sum(s for _, s, _ in results)
    served = sum(s for _, _, s in results)
    assert sent >= 2 * 150 and sent == served  # two of the three sent every batch, answered once
    engine = make_engine(db_url)
    report = verify_ledger(engine, origin=ORIGIN, verifier=signer.verifier())
    engine.dispose()
    assert report.ok, report.summary()


def test_a_ledger_takes_over_when_the_sequencer_closes(db_url: str, tmp_path: Path) -> None:
    migrate(db_url)
    signer = load_or_create_note_signer(tmp_path / "ledger-note.key", ORIGIN)
    engine = make_engine(db_url)
    first = Ledger.open(engine, origin=ORIGIN, signer=signer)
    second = Ledger.open(engine, origin=ORIGIN, signer=signer)
    assert isinstance(first.store, HostAppends) and isinstance(second.store, HostAppends)
    assert first.append([_event(1, 0)])[0].index == 0
    assert first.store.serving
    assert second.append([_event(2, 0)])[0].index == 1  # through the first one's socket
    assert second.store.sent_batches == 1 and first.store.remote_batches == 1
    first.close()
    assert [second.append([_event(2, i)])[0].index for i in (1, 2)] == [2, 3]
    assert second.store.serving  # the lock was free: the second one serves now
    assert [e.event.body for e in second.entries(0, 4)] == [
        {"w": 1, "i": 0},
        {"w": 2, "i": 0},
        {"w": 2, "i": 1},
        {"w": 2, "i": 2},
    ]
    second.close()
    engine.dispose()


@pytest.fixture
def endpoint() -> Iterator[Path]:
    """A socket path short enough for AF_UNIX (pytest's tmp_path may not be)."""
    base = Path(tempfile.mkdtemp(prefix="cl-"))
    os.chmod(base, 0o700)
    path = endpoint_for("test", base)
    assert path is not None
    yield path
    shutil.rmtree(base, ignore_errors=True)


def _fake_sequencer(endpoint: Path, store: HostAppends, *, commit: bool) -> threading.Thread:
    """Holds the election lock, takes one batch, commits it (or not), and hangs up unanswered."""
    lock = os.open(endpoint.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(endpoint))
    listener.listen(1)

    def serve() -> None:
        peer, _ = listener.accept()
        rows, side = batch_from(_read(peer))
        if commit:
            store.store.append(rows, side)
        peer.close()
        listener.close()
        endpoint.unlink()
        os.close(lock)  # as the kernel does when a sequencer process dies

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "not-committed"])
def test_an_unanswered_batch_is_found_or_sent_again_never_twice(
    db_url: str, endpoint: Path, committed: bool
) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    store = HostAppends(open_store(engine), endpoint)
    assert store.append(_rows(_event(0, 0)), []) == 0  # the lock was free: it serves
    store.close()
    store = HostAppends(open_store(engine), endpoint)
    fake = _fake_sequencer(endpoint, store, commit=committed)
    rows = _rows(_event(1, 0), _event(1, 1))
    assert store.append(rows, []) == 1  # found where the sequencer put it, or appended now
    fake.join(timeout=30)
    assert store.sent_batches == 0  # the batch never got an answer
    with engine.connect() as conn:
        stored = [bytes(r[0]) for r in conn.exec_driver_sql("SELECT leaf_hash FROM ledger_entries")]
    assert stored[1:] == [r.leaf_hash for r in rows]  # exactly once
    assert store.append(_rows(_event(1, 2)), []) == 3
    store.close()
    engine.dispose()


def test_locate_finds_only_a_whole_batch_after_the_given_index(db_url: str, endpoint: Path) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    store = open_store(engine)
    a, b = _rows(_event(0, 0), _event(0, 1)), _rows(_event(0, 2))
    assert store.append(a, []) == 0 and store.append(b, []) == 2
    assert store.locate(a, 0) == 0
    assert store.locate(b, 0) == 2 and store.locate(b, 2) == 2
    assert store.locate(a, 1) is None  # not at or after index 1
    assert store.locate(_rows(_event(0, 1), _event(0, 3)), 0) is None  # not together
    store.close()
    engine.dispose()


def test_no_private_directory_means_direct_appends(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    assert endpoint_for("x", shared) is None


def test_closing_while_a_peer_is_being_accepted_joins_only_started_handlers(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sequencer closing just as it accepts a peer: ``close`` never meets a handler thread
    that is listed but not yet started (joining one raises; ``custody keys create`` beside a
    busy gateway exited 1 on it)."""
    from storage.ledger import host_appends

    starting = threading.Event()

    class SlowToStart(threading.Thread):
        def start(self) -> None:
            if self.name == "custody-ledger-peer":  # the handler of an accepted peer
                starting.set()
                threading.Event().wait(0.3)  # the window in which close used to run
            super().start()

    migrate(sqlite_url)
    signer = load_or_create_note_signer(tmp_path / "ledger-note.key", ORIGIN)
    engine = make_engine(sqlite_url)
    first = Ledger.open(engine, origin=ORIGIN, signer=signer)
    second = Ledger.open(engine, origin=ORIGIN, signer=signer)
    assert first.append([_event(1, 0)])[0].index == 0 and first.store.serving  # type: ignore[attr-defined]
    monkeypatch.setattr(host_appends.threading, "Thread", SlowToStart)
    indexes: list[int] = []
    peer = threading.Thread(target=lambda: indexes.append(second.append([_event(2, 0)])[0].index))
    peer.start()
    assert starting.wait(10)
    first.close()  # raised RuntimeError('cannot join thread before it is started') before
    peer.join(30)
    assert indexes == [1]  # answered, or sent again directly once the sequencer went: once
    second.close()
    engine.dispose()


def test_a_batch_crosses_the_wire_as_it_was_sent() -> None:
    from storage.ledger.events import SideRows
    from storage.ledger.host_appends import batch_message

    rows = _rows(_event(0, 0), LedgerEvent("t", "acme", "a", turn="turn-1", body={"é": [1]}))
    side = [
        SideRows("turn_index", ("turn_id", "n"), [("turn-1", 1), ("turn-2", None)]),
        SideRows("sessions", ("id",), [(b"\x00raw",)], ignore_conflicts=True),
    ]
    got_rows, got_side = batch_from(batch_message(rows, side))
    assert got_rows == rows and all(isinstance(r, LeafRow) for r in got_rows)
    assert got_rows[1].turn_id == "turn-1" and got_rows[0].turn_id is None
    assert got_side == side


class _RefusingStore:
    """A store whose appends of tenant ``refused`` fail, as a constraint would."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.engine, self.read_engine = store.engine, store.read_engine

    def append(self, rows: Any, side: Any) -> int:
        if any(r.tenant == "refused" for r in rows):
            raise ValueError("the store refused the batch")
        return int(self.store.append(rows, side))

    def locate(self, rows: Any, after: int) -> int | None:
        return self.store.locate(rows, after)  # type: ignore[no-any-return]

    def add_checkpoint(self, checkpoint: Any, time_ms: int) -> None:
        self.store.add_checkpoint(checkpoint, time_ms)

    def close(self) -> None:
        self.store.close()


def test_the_sequencer_answers_errors_and_push_back_to_the_sender(
    sqlite_url: str, endpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage.ledger.batching import LedgerPushback

    migrate(sqlite_url)
    engine = make_engine(sqlite_url)
    serving = HostAppends(_RefusingStore(open_store(engine)), endpoint)  # type: ignore[arg-type]
    assert serving.append(_rows(_event(0, 0)), []) == 0 and serving.serving
    sender = HostAppends(open_store(engine), endpoint)
    assert sender.append(_rows(_event(1, 0)), []) == 1 and sender.sent_batches == 1
    with pytest.raises(ValueError, match="the store refused the batch"):
        sender.append(_rows(LedgerEvent("t", "refused", "a")), [])

    def full(*_: object, **__: object) -> int:
        raise LedgerPushback(7, queued_entries=3, queued_bytes=9)

    monkeypatch.setattr(serving._commits, "submit", full)
    with pytest.raises(LedgerPushback) as caught:
        sender.append(_rows(_event(1, 1)), [])
    assert (caught.value.retry_after_ms, caught.value.queued_entries) == (7, 3)
    monkeypatch.undo()
    assert sender.append(_rows(_event(1, 2)), []) == 2  # the connection is still good
    assert sender.sent_batches == 4 and serving.remote_batches == 4
    sender.close()
    serving.close()
    engine.dispose()
