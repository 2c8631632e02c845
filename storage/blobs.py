"""The content-addressed blob store, and the salted commitments ledger leaves make to its blobs.

Blobs are addressed by the SHA-256 of their bytes. ``FileBlobStore`` (the embedded default) keeps
them in sharded directories with atomic, fsynced writes; ``PostgresBlobStore`` keeps them in the
database so several gateway replicas share one store. Anything with ``put/get/exists/erase`` (an
object store, for instance) can stand in: see ``BlobStore``.

``Commitments`` ties a blob to the commitment a leaf holds: it keeps each commitment's salt, checks
a commitment against the blob that remains, and erases a blob on an authorised request, recording
the erasure. The tree stays valid after an erasure because leaves hold only commitments.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from storage.ledger.events import SideRows
from storage.ledger.leaf import commit_digest, new_salt
from storage.private_files import FILE_MODE, make_private_dir


class BlobStore(Protocol):
    """Content-addressed bytes: the key is the hex SHA-256 of the value."""

    def put(self, data: bytes, digest: str | None = None) -> str: ...
    def get(self, digest: str) -> bytes | None: ...
    def exists(self, digest: str) -> bool: ...
    def erase(self, digest: str) -> bool: ...


def _check_digest(digest: str) -> None:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a hex SHA-256 digest: {digest!r}")


class FileBlobStore:
    """Blobs as files ``root/ab/cd/<digest>``: written to a temporary file, fsynced, renamed.

    Files are 0600 (``mkstemp``'s mode) and the directories Custody makes 0700: blobs are the
    private content of turns."""

    def __init__(self, root: Path) -> None:
        self.root = root
        make_private_dir(self.root)

    def path(self, digest: str) -> Path:
        _check_digest(digest)
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes, digest: str | None = None) -> str:
        digest = digest or hashlib.sha256(data).hexdigest()
        path = self.path(digest)
        if path.exists():
            return digest
        make_private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                _drop_cached(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return digest

    def get(self, digest: str) -> bytes | None:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, digest: str) -> bool:
        return self.path(digest).exists()

    def erase(self, digest: str) -> bool:
        path = self.path(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(path.parent)
        return True


def _drop_cached(fd: int) -> None:
    """Let the kernel drop a written, fsynced blob's pages from the page cache at once.

    Blobs are written once and seldom read soon after, yet without this every write grows the
    page cache by new pages: on the 2-core VM of docs/performance.md a 3 MB write + fsync took
    6.6 ms of CPU and 8.5 ms when the cache grew, and 1.1 ms of CPU and 2.4 ms once the pages
    of earlier blobs were handed back (200 writes each, "Blob writes"). A turn of a 1024² edit
    writes about 12 MB of blobs. The pages are clean after the fsync, so this only frees them;
    a later read comes from the disk. Not every platform has ``posix_fadvise``."""
    if _FADV_DONTNEED is not None:
        os.posix_fadvise(fd, 0, 0, _FADV_DONTNEED)


_FADV_DONTNEED: int | None = getattr(os, "POSIX_FADV_DONTNEED", None)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PostgresBlobStore:
    """Blobs in the ``blobs`` table, shared by every replica using the database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def put(self, data: bytes, digest: str | None = None) -> str:
        digest = digest or hashlib.sha256(data).hexdigest()
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO blobs (digest, data, size, created_ms) "
                    "VALUES (:d, :data, :size, :t) ON CONFLICT (digest) DO NOTHING"
                ),
                {"d": digest, "data": data, "size": len(data), "t": _now_ms()},
            )
        return digest

    def get(self, digest: str) -> bytes | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                text("SELECT data FROM blobs WHERE digest = :d"), {"d": digest}
            ).first()
        return bytes(row[0]) if row else None

    def exists(self, digest: str) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT 1 FROM blobs WHERE digest = :d"), {"d": digest})
            return row.first() is not None

    def erase(self, digest: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(text("DELETE FROM blobs WHERE digest = :d"), {"d": digest})
        return bool(result.rowcount)


def open_blob_store(spec: str, *, data_dir: Path, engine: Engine) -> BlobStore:
    """``file`` (default: ``data_dir/blobs``), ``file:/some/path``, or ``database``."""
    spec = spec or "file"
    if spec == "file":
        return FileBlobStore(data_dir / "blobs")
    if spec.startswith("file:"):
        return FileBlobStore(Path(spec[5:]))
    if spec in ("database", "postgres", "postgresql"):
        if engine.dialect.name != "postgresql":
            raise ValueError("the database blob store needs PostgreSQL (CUSTODY_DATABASE_URL)")
        return PostgresBlobStore(engine)
    raise ValueError(f"unknown blob store {spec!r}: use 'file', 'file:/path' or 'database'")


@dataclass(frozen=True)
class Commitment:
    """A commitment a leaf holds, and what it commits to."""

    commitment: str
    digest: str
    salt: bytes


CheckResult = Literal["ok", "erased", "missing", "mismatch", "corrupt"]


class Commitments:
    """Salts of commitments (table ``blob_commitments``) beside the blobs they commit to.

    Erasure destroys the blob and empties the salt of every commitment to it (without the salt
    nobody can test a guess of the content against the leaf); the commitment row stays, so a
    later check reports "erased" rather than "missing", and ``blob_erasures`` records who and why.
    """

    def __init__(self, engine: Engine, blobs: BlobStore) -> None:
        self.engine = engine
        self.blobs = blobs

    def put_committed(self, data: bytes, *, salt: bytes | None = None) -> Commitment:
        """Store ``data`` and the salt of its commitment; returns the commitment."""
        return self.put_committed_many([(data, salt)])[0]

    def put_committed_many(self, items: Sequence[tuple[bytes, bytes | None]]) -> list[Commitment]:
        """Store several contents (each with its salt, or None for a fresh one) and record all
        their commitments in one transaction. Each content is hashed once."""
        out: list[Commitment] = []
        for data, salt in items:
            salt = salt or new_salt()
            raw = hashlib.sha256(data).digest()
            digest = raw.hex()
            self.blobs.put(data, digest)
            out.append(Commitment(commit_digest(raw, salt), digest, salt))
        self.record(out)
        return out

    def side_rows(self, items: Sequence[Commitment]) -> SideRows:
        """The salt rows of ``items``, to commit in the same transaction as a ledger append."""
        now = _now_ms()
        return SideRows(
            "blob_commitments",
            ("commitment", "digest", "salt", "created_ms"),
            [(c.commitment, c.digest, c.salt, now) for c in items],
        )

    def record(self, items: Sequence[Commitment]) -> None:
        """Record commitments whose blobs the caller already stored (``blobs.put``), all in one
        transaction: a turn writes its blobs in parallel, then its salts at once."""
        if not items:
            return
        now = _now_ms()
        insert = (
            "INSERT INTO blob_commitments (commitment, digest, salt, created_ms) "
            "VALUES (:c, :d, :s, :t) ON CONFLICT (commitment) DO NOTHING"
        )
        with self.engine.begin() as conn:
            conn.execute(
                text(insert),
                [{"c": c.commitment, "d": c.digest, "s": c.salt, "t": now} for c in items],
            )

    def _row(self, commitment: str) -> tuple[str, bytes] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                text("SELECT digest, salt FROM blob_commitments WHERE commitment = :c"),
                {"c": commitment},
            ).first()
        return None if row is None else (str(row[0]), bytes(row[1]))

    def opening(self, commitment: str) -> Commitment | None:
        """The digest and salt that open ``commitment`` (the salt is empty once the content was
        erased), or None when it was never recorded."""
        row = self._row(commitment)
        return None if row is None else Commitment(commitment, row[0], row[1])

    def openings(self, commitments: Sequence[str]) -> dict[str, Commitment]:
        """``opening`` of many commitments, 500 a query; the ones never recorded are absent."""
        wanted = sorted(set(commitments))
        out: dict[str, Commitment] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ", ".join(f":c{i}" for i in range(len(chunk)))
                rows = conn.execute(
                    text(
                        "SELECT commitment, digest, salt FROM blob_commitments"
                        f" WHERE commitment IN ({marks})"
                    ),
                    {f"c{i}": c for i, c in enumerate(chunk)},
                ).all()
                for c, d, salt in rows:
                    out[str(c)] = Commitment(str(c), str(d), bytes(salt))
        return out

    def check(self, commitment: str) -> CheckResult:
        """Whether the blob behind ``commitment`` is intact ("ok"), "erased" on request,
        "missing" (gone without an erasure, or never recorded), changed ("mismatch"), or its
        salt row altered so that it no longer reads as one ("corrupt": a digest that is not
        UTF-8 or not a hex SHA-256). A database that cannot be read at all still raises."""
        try:
            row = self._row(commitment)
        except DBAPIError:
            with self.engine.connect() as conn:  # the database itself failing: raise that
                conn.execute(text("SELECT 1"))
            return "corrupt"
        if row is None:
            return "missing"
        digest, salt = row
        if not salt:
            return "erased"
        try:
            data = self.blobs.get(digest)
        except ValueError:  # not a hex SHA-256: the row was altered
            return "corrupt"
        if data is None:
            return "missing"
        if commit_digest(hashlib.sha256(data).digest(), salt) != commitment:
            return "mismatch"
        return "ok"

    def open(self, commitment: str) -> bytes | None:
        """The content behind ``commitment`` when it remains and still matches, else None."""
        row = self._row(commitment)
        if row is None or not row[1]:
            return None
        data = self.blobs.get(row[0])
        if data is None or commit_digest(hashlib.sha256(data).digest(), row[1]) != commitment:
            return None
        return data

    def digest_of(self, commitment: str) -> str | None:
        """The digest of the blob ``commitment`` commits to, when it was recorded."""
        row = self._row(commitment)
        return None if row is None else row[0]

    def commitments_of(self, digest: str) -> list[str]:
        """Every recorded commitment to the blob ``digest`` (one per time it was committed)."""
        _check_digest(digest)
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT commitment FROM blob_commitments WHERE digest = :d"
                    " ORDER BY created_ms, commitment"
                ),
                {"d": digest},
            ).all()
        return [str(r[0]) for r in rows]

    def erasure_record(self, digest: str, *, reason: str, actor: str) -> SideRows:
        """The ``blob_erasures`` row of an erasure, to commit with its ledger event; then call
        ``destroy``. The blob may not be destroyed before this row exists."""
        _check_digest(digest)
        return SideRows(
            "blob_erasures",
            ("digest", "time_ms", "reason", "actor"),
            [(digest, _now_ms(), reason, actor)],
        )

    def destroy(self, digest: str) -> bool:
        """Empty the salts of every commitment to ``digest`` and delete the blob, once its
        erasure is recorded (``erasure_record``). Returns whether blob bytes were present."""
        _check_digest(digest)
        if not self.erased(digest):
            raise PermissionError(
                f"blob {digest} has no recorded erasure: record it (erasure_record) first"
            )
        with self.engine.begin() as conn:
            conn.execute(
                text("UPDATE blob_commitments SET salt = :empty WHERE digest = :d"),
                {"empty": b"", "d": digest},
            )
        return self.blobs.erase(digest)

    def erase(self, digest: str, *, reason: str, actor: str) -> bool:
        """Destroy a blob and the salts of its commitments on an authorised request, recording
        the erasure (callers with a ledger use ``erasure_record`` in the same transaction as
        their ``content.erased`` event, then ``destroy``). Returns whether blob bytes were
        present."""
        record = self.erasure_record(digest, reason=reason, actor=actor)
        insert = f"INSERT INTO {record.table} ({', '.join(record.columns)}) VALUES (:d, :t, :r, :a)"
        with self.engine.begin() as conn:
            conn.execute(text(insert), [dict(zip("dtra", row, strict=True)) for row in record.rows])
        return self.destroy(digest)

    def erased(self, digest: str) -> bool:
        """True when an erasure of ``digest`` was recorded."""
        with self.engine.connect() as conn:
            row = conn.execute(
                text("SELECT 1 FROM blob_erasures WHERE digest = :d LIMIT 1"), {"d": digest}
            ).first()
        return row is not None


def _now_ms() -> int:
    return int(time.time() * 1000)
