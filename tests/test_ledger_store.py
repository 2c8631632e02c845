"""The ledger's store: gap-free appends, reads, proofs, checkpoints and the database's own guards.

Every test runs on SQLite and on PostgreSQL (``db_url``).
"""

from __future__ import annotations

import stat
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, text

from storage.db import is_sqlite, make_engine, migrate
from storage.ledger import open_ledger
from storage.ledger.checkpoint import open_checkpoint
from storage.ledger.events import LedgerEvent
from storage.ledger.leaf import decode_leaf
from storage.ledger.log import Ledger, frontier_indexes, load_or_create_note_signer
from storage.ledger.merkle import (
    MemoryHashReader,
    ProofError,
    check_consistency,
    check_inclusion,
    leaf_hash,
    stored_hash_index,
    tree_hash,
)
from storage.ledger.note import CallbackNoteSigner, Ed25519NoteSigner, NoteSigner, NoteVerifier
from storage.ledger.verify import verify_ledger

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

ORIGIN = "test.custody.example/ledger"


def _event(n: int, turn: str | None = None) -> LedgerEvent:
    return LedgerEvent(type="test.event", tenant="acme", actor="tester", turn=turn, body={"n": n})


@pytest.fixture()
def engine(db_url: str) -> Iterator[Engine]:
    migrate(db_url)
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture()
def signer() -> NoteSigner:
    return Ed25519NoteSigner.generate(ORIGIN)


@pytest.fixture()
def ledger(engine: Engine, signer: NoteSigner) -> Iterator[Ledger]:
    led = Ledger.open(
        engine, origin=ORIGIN, signer=signer, checkpoint_every_entries=0, checkpoint_every_ms=0
    )
    yield led
    led.close()


def test_appends_get_consecutive_indexes_and_read_back(ledger: Ledger) -> None:
    first = ledger.append([_event(0, "turn-a"), _event(1, "turn-a")])
    second = ledger.append([_event(2, "turn-b")])
    assert [e.index for e in first + second] == [0, 1, 2]
    assert ledger.size() == 3
    stored = ledger.entries(0, 3)
    assert [e.leaf for e in stored] == [e.leaf for e in first + second]
    assert [e.event.body["n"] for e in stored] == [0, 1, 2]
    assert all(e.leaf_hash == leaf_hash(e.leaf) for e in stored)
    assert ledger.entry(2).event.turn == "turn-b"
    assert [e.index for e in ledger.entries_for_turn("turn-a")] == [0, 1]
    assert decode_leaf(stored[0].leaf)["origin"] == ORIGIN
    with pytest.raises(IndexError):
        ledger.entry(3)


def test_appending_nothing_writes_nothing(ledger: Ledger) -> None:
    assert ledger.append([]) == []
    assert ledger.size() == 0


def test_root_and_proofs_match_an_independent_tree(ledger: Ledger) -> None:
    entries = ledger.append([_event(i) for i in range(37)])
    mem = MemoryHashReader()
    for e in entries:
        mem.append(e.leaf_hash)
    for size in (1, 2, 5, 16, 37):
        assert ledger.root(size) == tree_hash(size, mem)
    root = ledger.root(37)
    for index in (0, 7, 31, 36):
        proof = ledger.prove_inclusion(index, 37)
        check_inclusion(proof, 37, root, index, entries[index].leaf_hash)
        with pytest.raises(ProofError):
            check_inclusion(proof, 37, root, index, entries[(index + 1) % 37].leaf_hash)
    for old in (1, 8, 20, 37):
        proof = ledger.prove_consistency(old, 37)
        check_consistency(proof, 37, root, old, ledger.root(old))


def test_checkpoints_are_signed_every_n_entries_by_the_job_never_by_an_append(
    engine: Engine, signer: NoteSigner
) -> None:
    ledger = Ledger.open(
        engine, origin=ORIGIN, signer=signer, checkpoint_every_entries=10, checkpoint_every_ms=0
    )
    try:
        first = ledger.latest_checkpoint()  # none yet: one is issued at size 0
        assert first.size == 0
        for i in range(25):
            ledger.append([_event(i)])
            assert [cp.size for cp in ledger.checkpoints()][-1] <= i // 10 * 10
            ledger.checkpoint_if_due()  # what the gateway's background job calls
        sizes = [cp.size for cp in ledger.checkpoints()]
        assert sizes == [0, 10, 20]
        assert ledger.checkpoints_issued == 3
        latest = ledger.latest_checkpoint()
        cp = open_checkpoint(latest.note, signer.verifier(), ORIGIN)
        assert (cp.size, cp.root) == (20, ledger.root(20))
        again = ledger.issue_checkpoint()
        assert again.size == 25
        assert ledger.issue_checkpoint().note == again.note  # same size: no second signature
        assert ledger.checkpoint_if_due() is None  # nothing new since
    finally:
        ledger.close()


def test_appends_alone_never_sign_a_checkpoint(engine: Engine, signer: NoteSigner) -> None:
    ledger = Ledger.open(
        engine, origin=ORIGIN, signer=signer, checkpoint_every_entries=1, checkpoint_every_ms=1
    )
    try:
        for i in range(5):
            ledger.append([_event(i)])
            time.sleep(0.002)
        assert ledger.checkpoints() == []
        assert ledger.checkpoints_issued == 0
    finally:
        ledger.close()


def test_checkpoints_are_issued_after_their_interval(engine: Engine, signer: NoteSigner) -> None:
    ledger = Ledger.open(
        engine, origin=ORIGIN, signer=signer, checkpoint_every_entries=0, checkpoint_every_ms=1
    )
    try:
        ledger.append([_event(0)])
        time.sleep(0.01)
        ledger.append([_event(1)])
        assert ledger.checkpoint_if_due() is not None
        assert [cp.size for cp in ledger.checkpoints()][-1] == 2
    finally:
        ledger.close()


def test_a_checkpoint_signed_elsewhere_for_the_same_size_is_returned_not_duplicated(
    engine: Engine, ledger: Ledger, signer: NoteSigner
) -> None:
    ledger.append([_event(i) for i in range(4)])
    other = Ledger.open(engine, origin=ORIGIN, signer=signer)
    try:
        theirs = other.issue_checkpoint()
    finally:
        other.close()
    assert ledger.issue_checkpoint() == theirs
    assert ledger.checkpoints_issued == 0
    assert [cp.size for cp in ledger.checkpoints()] == [4]


def test_the_log_refuses_to_sign_a_checkpoint_inconsistent_with_the_last(
    engine: Engine, ledger: Ledger, signer: NoteSigner
) -> None:
    ledger.append([_event(i) for i in range(5)])
    # A stored checkpoint at size 3 whose root is not the tree's (as after a rewrite).
    forged = b"\x07" * 32
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ledger_checkpoints (size, time_ms, root, note) VALUES (3, 0, :r, '')"
            ),
            {"r": forged},
        )
    with pytest.raises(ProofError):
        ledger.issue_checkpoint()
    assert [cp.size for cp in ledger.checkpoints()] == [3]


def test_group_commit_shares_transactions_between_threads(ledger: Ledger) -> None:
    threads, per_thread = 16, 25
    results: list[list[int]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads)

    def writer(k: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            (entry,) = ledger.append([_event(k * 1000 + i)])
            assert ledger.size() > entry.index  # durable and visible before the call returns
            results[k].append(entry.index)

    workers = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    indexes = sorted(i for r in results for i in r)
    assert indexes == list(range(threads * per_thread))
    assert all(r == sorted(r) for r in results)  # each caller's appends stay in its order
    assert ledger.appended == threads * per_thread
    assert ledger.transactions < ledger.appended
    report = verify_ledger(ledger.engine, origin=ORIGIN, verifier=ledger.signer.verifier())
    assert report.ok, report.summary()


def test_a_bad_event_fails_its_caller_only(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="float"):
        ledger.append([LedgerEvent("test.event", "acme", "tester", body={"x": 1.5})])
    assert ledger.append([_event(0)])[0].index == 0


def test_proofs_read_only_the_frontier_hashes() -> None:
    # The frontier of size 6 (= 4 + 2) is the hash of leaves 0..3 and of leaves 4..5.
    assert frontier_indexes(6) == [stored_hash_index(2, 0), stored_hash_index(1, 2)]
    assert frontier_indexes(0) == []


APPEND_ONLY = ("ledger_entries", "ledger_hashes", "ledger_checkpoints")


def _refused(engine: Engine, sql: str) -> bool:
    try:
        with engine.begin() as conn:
            conn.execute(text(sql))
    except Exception as exc:
        return "append-only" in str(exc) or "only grows" in str(exc) or "cannot" in str(exc)
    return False


def test_the_database_refuses_to_change_or_remove_ledger_rows(
    engine: Engine, ledger: Ledger, db_url: str
) -> None:
    ledger.append([_event(i) for i in range(3)])
    ledger.issue_checkpoint()
    for table in APPEND_ONLY:
        column = "note" if table == "ledger_checkpoints" else "idx"
        value = "'x'" if column == "note" else "idx"
        assert _refused(engine, f"UPDATE {table} SET {column} = {value}"), table
        assert _refused(engine, f"DELETE FROM {table}"), table
        if not is_sqlite(db_url):
            assert _refused(engine, f"TRUNCATE {table}"), table
    assert _refused(engine, "UPDATE ledger_head SET size = size - 1")
    assert _refused(engine, "DELETE FROM ledger_head")
    if not is_sqlite(db_url):
        assert _refused(engine, "TRUNCATE ledger_head")
    assert ledger.size() == 3
    assert len(ledger.entries(0, 3)) == 3
    report = verify_ledger(engine, origin=ORIGIN, verifier=ledger.signer.verifier())
    assert report.ok, report.summary()


def test_note_key_is_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "ledger-note.key"
    signer = load_or_create_note_signer(path, ORIGIN)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signer.name == ORIGIN
    again = load_or_create_note_signer(path, ORIGIN)
    assert again.verifier_key() == signer.verifier_key()
    with pytest.raises(ValueError, match="origin"):
        load_or_create_note_signer(path, "another.example/log")


APP_TABLES = (
    "api_keys, turns, turn_images, decision_inputs, image_fingerprints, blobs, blob_commitments,"
    " blob_erasures"
)


def test_an_application_role_locked_out_of_the_tables_can_still_append(
    pg_url: str, signer: NoteSigner
) -> None:
    """The operator recipe of docs/ledger-format.md: the tables and append functions belong to
    the NOLOGIN role ``custody_ledger_owner``; the application role may only read and call."""
    migrate(pg_url)
    app = f"custody_app_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(pg_url, autocommit=True)
    database = pg_url.rsplit("/", 1)[1]
    tables = "ledger_entries, ledger_hashes, ledger_head, ledger_checkpoints"
    append_sig = "custody_ledger_append(bigint[], text[], text[], text[], bytea[])"
    functions = (
        "custody_ledger_lock_head()",
        append_sig,
        "custody_ledger_add_checkpoint(bigint, bigint, bytea, text)",
    )
    try:
        admin.execute(f"CREATE ROLE {app} LOGIN")
        for table in tables.split(", "):
            admin.execute(f"ALTER TABLE {table} OWNER TO custody_ledger_owner")
        for fn in functions:
            admin.execute(f"ALTER FUNCTION {fn} OWNER TO custody_ledger_owner")
        admin.execute(f"REVOKE ALL ON {tables} FROM {app}")
        admin.execute(f"GRANT SELECT ON {tables} TO {app}")
        admin.execute(f"GRANT EXECUTE ON FUNCTION {', '.join(functions)} TO {app}")
        admin.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {app}')
        # The application keeps its ordinary rights on its own tables (keys, the turn index,
        # blobs and salts): verify reads them against the leaves.
        admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {APP_TABLES} TO {app}")

        app_url = pg_url.replace("postgres@", f"{app}@", 1)
        engine = make_engine(app_url)
        ledger = Ledger.open(engine, origin=ORIGIN, signer=signer, checkpoint_every_entries=2)
        try:
            assert [e.index for e in ledger.append([_event(i) for i in range(3)])] == [0, 1, 2]
            ledger.append([_event(3)])
            assert ledger.issue_checkpoint().size == 4
            for sql in (
                "INSERT INTO ledger_hashes (idx, hash) VALUES (999, 'x')",
                "UPDATE ledger_head SET size = 100",
                "DELETE FROM ledger_entries",
            ):
                with pytest.raises(Exception, match="permission denied"), engine.begin() as conn:
                    conn.execute(text(sql))
            report = verify_ledger(engine, origin=ORIGIN, verifier=signer.verifier())
            assert report.ok, report.summary()
        finally:
            ledger.close()
            engine.dispose()
    finally:
        admin.execute(f'REVOKE CONNECT ON DATABASE "{database}" FROM {app}')
        admin.execute(f"DROP OWNED BY {app}")
        admin.execute(f"DROP ROLE IF EXISTS {app}")
        admin.close()


def test_a_kms_signer_behind_a_callback_signs_checkpoints_verify_accepts(
    db_url: str, tmp_path: Path
) -> None:
    held = Ed25519NoteSigner.generate(ORIGIN)  # the key inside the "KMS"
    calls: list[bytes] = []

    def kms_sign(msg: bytes) -> bytes:
        calls.append(msg)
        return held.sign(msg)

    signer = CallbackNoteSigner(ORIGIN, held.public_key, kms_sign)
    ledger = open_ledger(db_url, origin=ORIGIN, signer=signer)
    try:
        ledger.append([_event(i) for i in range(3)])
        cp = ledger.issue_checkpoint()
        assert calls and cp.size == 3
        verifier = NoteVerifier.from_key_string(signer.verifier_key())
        report = verify_ledger(ledger.engine, origin=ORIGIN, verifier=verifier)
        assert report.ok and report.checkpoints == 1, report.summary()
    finally:
        ledger.close()


def test_open_ledger_migrates_makes_the_key_file_and_owns_its_engine(
    db_url: str, tmp_path: Path
) -> None:
    key = tmp_path / "keys" / "ledger-note.key"
    ledger = open_ledger(db_url, origin=ORIGIN, signer=key, checkpoint_every_entries=0)
    try:
        assert ledger.append([_event(0)])[0].index == 0
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        again = load_or_create_note_signer(key, ORIGIN)
        assert ledger.latest_checkpoint().note.endswith("\n")
        report = verify_ledger(ledger.engine, origin=ORIGIN, verifier=again.verifier())
        assert report.ok, report.summary()
    finally:
        ledger.close()
    assert ledger.engine.pool.checkedout() == 0


def test_two_handles_taking_turns_keep_one_tree(engine: Engine, signer: NoteSigner) -> None:
    """Each store caches the tree's right edge; after the other appended, it must re-read it."""
    a = Ledger.open(engine, origin=ORIGIN, signer=signer)
    b = Ledger.open(engine, origin=ORIGIN, signer=signer)
    try:
        for i in range(9):
            (a if i % 3 else b).append([_event(i), _event(100 + i)])
        assert a.size() == 18
        tree = MemoryHashReader()
        tree.extend([e.leaf_hash for e in a.entries(0, 18)])
        assert a.root(18) == b.root(18) == tree_hash(18, tree)
        report = verify_ledger(engine, origin=ORIGIN, verifier=signer.verifier())
        assert report.ok, report.summary()
    finally:
        a.close()
        b.close()


def test_awkward_column_values_are_stored_exactly(ledger: Ledger, engine: Engine) -> None:
    """The PostgreSQL append sends its arrays as literals: quotes, backslashes, braces, commas,
    a literal NULL, blanks and non-ASCII text must all arrive as they were."""
    awkward = ['a"b', "back\\slash", "{x,y}", "NULL", "", " sp ", "é😀", '\\"', "a,b", "}"]
    events = [
        LedgerEvent(type=f"t{v}", tenant=v or "t", actor="a", turn=v, body={"v": v})
        for v in awkward
    ] + [LedgerEvent(type="t", tenant="t", actor="a", turn=None)]
    entries = ledger.append(events)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT idx, type, tenant, turn_id, leaf FROM ledger_entries ORDER BY idx")
        ).all()
    assert [(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows] == [
        (e.index, ev.type, ev.tenant, ev.turn, e.leaf)
        for e, ev in zip(entries, events, strict=True)
    ]
    assert [e.index for e in ledger.entries_for_turn("NULL")] == [entries[3].index]
    assert verify_ledger(engine, origin=ORIGIN, verifier=ledger.signer.verifier()).ok
