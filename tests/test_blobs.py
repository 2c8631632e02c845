"""The content-addressed blob stores and the salted commitments leaves make to their blobs."""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from storage.blobs import (
    BlobStore,
    Commitments,
    FileBlobStore,
    PostgresBlobStore,
    open_blob_store,
)
from storage.db import is_sqlite, make_engine, migrate
from storage.ledger.events import LedgerEvent
from storage.ledger.leaf import commit_content
from storage.ledger.log import Ledger
from storage.ledger.note import Ed25519NoteSigner
from storage.ledger.verify import verify_ledger

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

ORIGIN = "test.custody.example/ledger"


@pytest.fixture()
def engine(db_url: str) -> Iterator[Engine]:
    migrate(db_url)
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture()
def store(engine: Engine, db_url: str, tmp_path: Path) -> BlobStore:
    """The file store next to SQLite, the database store next to PostgreSQL."""
    if is_sqlite(db_url):
        return open_blob_store("file", data_dir=tmp_path, engine=engine)
    return open_blob_store("database", data_dir=tmp_path, engine=engine)


def _record_erasure(engine: Engine, digest: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO blob_erasures (digest, time_ms, reason, actor)"
                " VALUES (:d, 0, 'test', 'tester')"
            ),
            {"d": digest},
        )


def test_blobs_are_content_addressed_and_idempotent(engine: Engine, store: BlobStore) -> None:
    data = b"a red bicycle" * 100
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.put(data) == digest
    assert store.exists(digest)
    assert store.get(digest) == data
    assert store.get("0" * 64) is None
    _record_erasure(engine, digest)
    assert store.erase(digest)
    assert not store.exists(digest)
    assert store.get(digest) is None
    assert not store.erase(digest)


def test_file_store_shards_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    digest = store.put(b"x")
    assert (tmp_path / "blobs" / digest[:2] / digest[2:4] / digest).read_bytes() == b"x"
    assert [p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == [digest]
    with pytest.raises(ValueError):
        store.get("../../etc/passwd")


def test_open_blob_store_understands_its_specs(tmp_path: Path, sqlite_url: str) -> None:
    migrate(sqlite_url)
    engine = make_engine(sqlite_url)
    assert isinstance(open_blob_store("", data_dir=tmp_path, engine=engine), FileBlobStore)
    custom = open_blob_store(f"file:{tmp_path / 'elsewhere'}", data_dir=tmp_path, engine=engine)
    assert isinstance(custom, FileBlobStore) and custom.root == tmp_path / "elsewhere"
    with pytest.raises(ValueError, match="PostgreSQL"):
        open_blob_store("database", data_dir=tmp_path, engine=engine)
    with pytest.raises(ValueError, match="unknown"):
        open_blob_store("s3://bucket", data_dir=tmp_path, engine=engine)
    engine.dispose()


def test_postgres_store_is_shared_through_the_database(pg_url: str, tmp_path: Path) -> None:
    migrate(pg_url)
    one, two = make_engine(pg_url), make_engine(pg_url)
    digest = PostgresBlobStore(one).put(b"shared")
    assert PostgresBlobStore(two).get(digest) == b"shared"
    for sql in ("DELETE FROM blobs", "TRUNCATE blobs"):  # only a recorded erasure deletes
        with pytest.raises(Exception, match=r"erasure|append-only"), one.begin() as conn:
            conn.execute(text(sql))
    assert PostgresBlobStore(two).exists(digest)
    one.dispose()
    two.dispose()


def test_commitments_check_ok_mismatch_missing_and_erased(engine: Engine, store: BlobStore) -> None:
    commitments = Commitments(engine, store)
    c = commitments.put_committed(b"the prompt", salt=b"\x01" * 16)
    assert c.commitment == commit_content(b"the prompt", b"\x01" * 16)
    assert c.digest == hashlib.sha256(b"the prompt").hexdigest()
    assert commitments.check(c.commitment) == "ok"
    assert commitments.open(c.commitment) == b"the prompt"
    assert commitments.check(commit_content(b"never stored", b"\x02" * 16)) == "missing"

    # The bytes change behind the store's back: the commitment no longer matches.
    if isinstance(store, FileBlobStore):
        store.path(c.digest).write_bytes(b"the pr0mpt")
    else:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE blobs SET data = :d WHERE digest = :g"), {"d": b"x", "g": c.digest}
            )
    assert commitments.check(c.commitment) == "mismatch"
    assert commitments.open(c.commitment) is None

    # Gone without an erasure request (a file deleted by hand; the database store refuses).
    if isinstance(store, FileBlobStore):
        store.erase(c.digest)
        assert commitments.check(c.commitment) == "missing"
    else:
        with pytest.raises(Exception, match="recorded erasure"):
            store.erase(c.digest)

    d = commitments.put_committed(b"a mask")
    assert commitments.erase(d.digest, reason="GDPR art. 17 request 42", actor="dpo@acme")
    assert commitments.check(d.commitment) == "erased"
    assert commitments.erased(d.digest)
    assert not store.exists(d.digest)


def test_put_committed_many_stores_everything_in_one_go(engine: Engine, store: BlobStore) -> None:
    commitments = Commitments(engine, store)
    made = commitments.put_committed_many([(b"one", None), (b"two", b"\x03" * 16), (b"one", None)])
    assert len({c.commitment for c in made}) == 3  # fresh salts: same content, new commitment
    assert made[1].commitment == commit_content(b"two", b"\x03" * 16)
    assert all(commitments.check(c.commitment) == "ok" for c in made)


def test_erasure_keeps_the_ledger_verifying(engine: Engine, store: BlobStore) -> None:
    signer = Ed25519NoteSigner.generate(ORIGIN)
    ledger = Ledger.open(engine, origin=ORIGIN, signer=signer)
    commitments = Commitments(engine, store)
    kept = commitments.put_committed(b"an output image")
    erased = commitments.put_committed(b"the user's original photo")
    ledger.append(
        [
            LedgerEvent(
                "turn.received",
                "acme",
                "editor@acme",
                body={"input": erased.commitment, "output": kept.commitment},
            )
        ]
    )
    # The event naming the erased commitments comes with the erasure (governance/erasure.py
    # commits both together); an erasure no event names is a fault (tests/test_ledger_tamper_index).
    ledger.append(
        [
            LedgerEvent(
                "content.erased",
                "acme",
                "dpo@acme",
                body={"commitments": [erased.commitment], "reason": "legal erasure"},
            )
        ]
    )
    commitments.erase(erased.digest, reason="legal erasure", actor="dpo@acme")
    ledger.issue_checkpoint()
    ledger.close()
    report = verify_ledger(
        engine, origin=ORIGIN, verifier=signer.verifier(), commitments=commitments
    )
    assert report.ok, report.summary()
    # Three commitments in leaves (the content.erased event names the erased one again); two of
    # them are to the erased content.
    assert (report.erased, report.commitments_checked) == (2, 3)


def _resident_pages(path: Path) -> int:
    """Pages of ``path`` in the page cache, by mincore(2) over a mapping that touches none."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]  # fmt: skip
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size, page = path.stat().st_size, mmap.PAGESIZE
    pages = -(-size // page)
    with path.open("rb") as f:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = ctypes.create_string_buffer(pages)
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(b & 1 for b in vec.raw)
        finally:
            libc.munmap(addr, size)


def _filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (the longest mount point above it)."""
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _, point, fstype, *_ = line.split()
        if str(path.resolve()).startswith(point.rstrip("/") + "/") and len(point) > len(best):
            best, kind = point, fstype
    return kind


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore(2) as Linux has it")
def test_a_written_blob_leaves_the_page_cache_once_it_is_durable(tmp_path: Path) -> None:
    # Each blob is written once and seldom read soon after: its pages go back to the kernel
    # after the fsync instead of growing the page cache (docs/performance.md, "Blob writes").
    if _filesystem_of(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("the test directory is in memory: its pages are the file itself")
    blobs = FileBlobStore(tmp_path / "blobs")
    data = os.urandom(3 << 20)
    digest = blobs.put(data)
    assert _resident_pages(blobs.path(digest)) == 0
    assert blobs.get(digest) == data  # read back from the disk, the same bytes
