"""Group commit across the processes of one host: every replica's appends in shared transactions.

Why: the order lock (SQLite's write lock, PostgreSQL's counter row) is held through each
transaction's fsync, so processes that append on their own run one after another at about one
transaction per fsync, whatever the number of replicas (docs/performance.md, "Ledger"). Here the
processes of one host that open the same ledger database elect one of them, the host's
*sequencer*: the others send it their batches over a Unix socket, and it commits the batches that
arrive together as one transaction (``batching.GroupCommit`` one level up) and answers each with
its first index.

Contract (``HostAppends`` is a ``LedgerStore``; the store contract holds unchanged):

- An answer is sent only after the transaction that carried the batch is durable, so no process
  gets an index before it is durable. A batch is all or nothing; a failing transaction fails every
  batch it carried (as group commit does within a process), with the store's exception.
- Election: the process holding an exclusive ``flock`` on the ledger's lock file serves the
  socket. The kernel releases the lock when that process ends, however it ends; the next process
  to find the socket gone takes the lock and serves.
- Nothing depends on the sequencer for correctness: the store's own lock still orders every
  transaction, so a process that cannot reach a sequencer appends directly, as before.
- A batch sent to a sequencer that went away before answering may or may not have been
  committed. The sender then takes the order lock (which waits for any transaction still open)
  and looks for its rows after the last index it knew of: found, it returns their index; not
  found, it appends again. So a batch is never lost nor written twice.
- Who may connect: the socket lives in a per-user directory (mode 0700, owned by this user) and
  a peer's uid is checked (``SO_PEERCRED``) before anything is read, because batches travel as
  pickles — a peer with the same uid can already open the database itself.

Wire: a length-prefixed pickle of plain tuples (the rows' and side rows' fields, no classes to
look up or rebuild: a tenth of the cost of pickling ``LeafRow`` objects), answered by 9 bytes
(the first index) or, for push-back and errors, a pickle. The protocol's version is part of the
socket's name, so processes of two Custody versions elect two sequencers (both correct: the
store's lock still orders every transaction) instead of misreading each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import pickle
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from storage.ledger.batching import BatchLimits, GroupCommit, LedgerPushback
from storage.ledger.checkpoint import Checkpoint
from storage.ledger.events import SideRows
from storage.ledger.store import LeafRow, LedgerStore, read_size

log = logging.getLogger("custody.ledger")

_PROTOCOL = 2  # part of the socket's name (see the module docstring)
_LENGTH = struct.Struct("!Q")
_ANSWER = struct.Struct("!Bq")  # kind, first index
_OK, _PICKLED = 0, 1
_RECV = 1 << 16  # first read of a message: its length and, nearly always, all of it
_CONNECT_TRIES = 20  # about 0.2 s for a new sequencer to start listening, then append directly
_RETRY_SHARING_S = 1.0  # after falling back to direct appends, look for a sequencer again
_MAX_MESSAGE = 1 << 30

Batch = tuple[Sequence[LeafRow], Sequence[SideRows]]
# A batch waiting for the sequencer's transaction, and the peer to answer (None: this process's).
_Queued = tuple[Sequence[LeafRow], Sequence[SideRows], socket.socket | None]


class SequencerGone(ConnectionError):
    """The sequencer closed the connection before it answered a batch."""


def shared(store: LedgerStore, limits: BatchLimits | None = None) -> LedgerStore:
    """``store`` behind the host's sequencer; ``store`` itself for an in-memory database or
    when no private directory for the socket can be made."""
    url = store.engine.url
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            return store
        identity = "sqlite:" + os.path.realpath(url.database)
    else:
        identity = url.set(password=None).render_as_string(hide_password=True)
    endpoint = endpoint_for(identity)
    return store if endpoint is None else HostAppends(store, endpoint, limits)


def endpoint_for(identity: str, directory: Path | None = None) -> Path | None:
    """The socket path of the ledger ``identity`` (its ``.lock`` beside it), or None when the
    per-user directory cannot be made private (then every append goes to the store directly)."""
    base = directory or Path(tempfile.gettempdir()) / f"custody-ledger-{os.getuid()}"
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        st = base.lstat()
    except OSError as exc:
        log.warning("ledger appends are not shared across processes: %s", exc)
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        log.warning(
            "ledger appends are not shared across processes: %s is not a private directory of"
            " this user",
            base,
        )
        return None
    name = hashlib.sha256(f"{_PROTOCOL}:{identity}".encode()).hexdigest()[:32]
    return base / (name + ".sock")


class HostAppends:
    """A ``LedgerStore`` whose appends go through the host's sequencer (see the module)."""

    def __init__(
        self, store: LedgerStore, endpoint: Path, limits: BatchLimits | None = None
    ) -> None:
        self.store = store
        self.endpoint = endpoint
        self._lock_path = endpoint.with_suffix(".lock")
        self._commits: GroupCommit[_Queued, int] = GroupCommit(self._flush, limits)
        self._mutex = threading.Lock()
        self._lock_fd: int | None = None  # held while this process is the sequencer
        self._listener: socket.socket | None = None
        self._peers: set[socket.socket] = set()
        self._handlers: list[threading.Thread] = []
        self._client: socket.socket | None = None
        self._after = -1  # every batch of this process not yet answered lands at or after it
        self._direct_until = 0.0  # appending directly until then (no sequencer reachable)
        self._closing = False
        self.remote_batches = 0  # batches this process committed for other processes
        self.sent_batches = 0  # batches this process had another process commit
        self.direct_appends = 0  # transactions without a sequencer (none reachable, closing)

    @property
    def engine(self) -> Engine:
        return self.store.engine

    @property
    def read_engine(self) -> Engine:
        return self.store.read_engine

    @property
    def serving(self) -> bool:
        """True while this process is the host's sequencer."""
        return self._listener is not None

    def add_checkpoint(self, checkpoint: Checkpoint, time_ms: int) -> None:
        self.store.add_checkpoint(checkpoint, time_ms)

    def locate(self, rows: Sequence[LeafRow], after: int) -> int | None:
        return self.store.locate(rows, after)

    # --- appending ------------------------------------------------------------------------------

    def append(self, rows: Sequence[LeafRow], side: Sequence[SideRows]) -> int:
        """Called by this process's group-commit leader (one thread at a time)."""
        while True:
            if self._closing or time.monotonic() < self._direct_until:
                return self._direct(rows, side)
            if self.serving or (self._client is None and self._try_to_serve()):
                return self._commits.submit((rows, side, None), entries=len(rows))
            try:
                client = self._connected()
            except OSError:
                self._direct_until = time.monotonic() + _RETRY_SHARING_S
                continue
            if client is None:
                continue  # this process became the sequencer meanwhile
            try:
                return self._send(client, rows, side)
            except SequencerGone:
                self._drop_client()
                found = self.store.locate(rows, self._after)
                if found is not None:
                    self._after = found + len(rows)
                    return found
                # not committed: send it again, to the next sequencer or directly

    @property
    def transactions(self) -> int:
        """Append transactions this process committed, for itself and for others."""
        return self._commits.flushes + self.direct_appends

    def _direct(self, rows: Sequence[LeafRow], side: Sequence[SideRows]) -> int:
        first = self.store.append(rows, side)
        self.direct_appends += 1
        self._after = max(self._after, first + len(rows))
        return first

    def _send(
        self, client: socket.socket, rows: Sequence[LeafRow], side: Sequence[SideRows]
    ) -> int:
        try:
            _write(client, batch_message(rows, side))
            answer = _read(client)
        except OSError as exc:
            raise SequencerGone(str(exc)) from exc
        self.sent_batches += 1
        if len(answer) == _ANSWER.size and answer[0] == _OK:
            first: int = _ANSWER.unpack(answer)[1]
            self._after = max(self._after, first + len(rows))
            return first
        if answer[:1] != bytes([_PICKLED]):
            raise SequencerGone(f"the sequencer's answer is not understood: {answer[:16]!r}")
        reply = pickle.loads(answer[1:])
        kind = reply[0]
        if kind == "pushback":
            _, retry_ms, entries, nbytes = reply
            raise LedgerPushback(retry_ms, queued_entries=entries, queued_bytes=nbytes)
        raise _error_from(reply)

    def _flush(self, batches: Sequence[_Queued]) -> list[int]:
        """The sequencer's one transaction for every batch that arrived together. Once it is
        durable, the peers' answers go out from here, in this thread: waking each peer's
        handler thread first would put a thread hand-off before every answer."""
        if len(batches) == 1:
            rows, side = batches[0][0], batches[0][1]
        else:
            rows = [r for batch in batches for r in batch[0]]
            side = [s for batch in batches for s in batch[1]]
        first = self.store.append(rows, side)
        out, at = [], first
        for batch_rows, _, peer in batches:
            out.append(at)
            if peer is not None:
                self.remote_batches += 1
                with contextlib.suppress(OSError):  # gone: its handler finds out on reading
                    _write(peer, _ANSWER.pack(_OK, at))
            at += len(batch_rows)
        self._after = max(self._after, at)
        return out

    # --- being a client -------------------------------------------------------------------------

    def _connected(self) -> socket.socket | None:
        """The connection to the sequencer; None when this process became it instead."""
        if self._client is not None:
            return self._client
        last: OSError | None = None
        for attempt in range(_CONNECT_TRIES):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.endpoint))
            except OSError as exc:
                sock.close()
                last = exc
                if self._try_to_serve():
                    return None
                time.sleep(0.001 * (attempt + 1))
                continue
            if self._after < 0:
                self._after = read_size(self.store.read_engine)
            self._client = sock
            return sock
        raise last or ConnectionRefusedError(str(self.endpoint))

    def _drop_client(self) -> None:
        sock, self._client = self._client, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    # --- being the sequencer --------------------------------------------------------------------

    def _try_to_serve(self) -> bool:
        with self._mutex:
            if self._listener is not None:
                return True
            if self._closing:
                return False
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            try:
                with contextlib.suppress(FileNotFoundError):
                    self.endpoint.unlink()  # left by a sequencer that ended without cleaning up
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listener.bind(str(self.endpoint))
                listener.listen(64)
            except OSError as exc:
                os.close(fd)
                log.warning(
                    "could not serve the ledger's host appends at %s: %s", self.endpoint, exc
                )
                return False
            self._lock_fd, self._listener = fd, listener
            self._drop_client()
            threading.Thread(
                target=self._accept, args=(listener,), name="custody-ledger-host", daemon=True
            ).start()
            log.debug("this process sequences the host's ledger appends (%s)", self.endpoint)
            return True

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                peer, _ = listener.accept()
            except OSError:
                return  # closed
            if not _same_user(peer):
                peer.close()
                continue
            with self._mutex:
                if self._closing:
                    peer.close()
                    return
                self._peers.add(peer)
                thread = threading.Thread(
                    target=self._serve_peer, args=(peer,), name="custody-ledger-peer", daemon=True
                )
                # Started under the mutex: ``close`` joins every listed handler, and joining
                # one not yet started raises (a ``custody keys create`` exiting 1 beside a
                # busy gateway was that race).
                thread.start()
                self._handlers.append(thread)

    def _serve_peer(self, peer: socket.socket) -> None:
        try:
            while not self._closing:
                try:
                    message = _read(peer)
                except OSError:
                    return
                if self._closing:
                    return  # unanswered and not committed: the sender locates, then re-sends
                rows, side = batch_from(message)
                try:
                    self._commits.submit((rows, side, peer), entries=len(rows))
                    continue  # answered (and counted) by the transaction's flush, ``_flush``
                except LedgerPushback as exc:
                    reply: tuple[Any, ...] = (
                        "pushback",
                        exc.retry_after_ms,
                        exc.queued_entries,
                        exc.queued_bytes,
                    )
                    answer = bytes([_PICKLED]) + pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
                except Exception as exc:
                    reply = _error_reply(exc)
                    answer = bytes([_PICKLED]) + pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
                self.remote_batches += 1
                try:
                    _write(peer, answer)
                except OSError:
                    return
        finally:
            with self._mutex:
                self._peers.discard(peer)
            with contextlib.suppress(OSError):
                peer.close()

    def close(self) -> None:
        """Stop serving (batches being committed are answered first) and close the store."""
        with self._mutex:
            self._closing = True
            listener, self._listener = self._listener, None
            peers = list(self._peers)
            handlers = list(self._handlers)
        self._drop_client()
        if listener is not None:
            with contextlib.suppress(FileNotFoundError):
                self.endpoint.unlink()
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            listener.close()
        for peer in peers:
            with contextlib.suppress(OSError):
                peer.shutdown(socket.SHUT_RD)  # wakes its handler; a batch in flight is answered
        for thread in handlers:
            if thread is not threading.current_thread():
                thread.join(timeout=30)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock: the next process may serve
            self._lock_fd = None
        self.store.close()


def _same_user(peer: socket.socket) -> bool:
    try:
        creds = peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return False
    _, uid, _ = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


def _write(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


def _read(sock: socket.socket) -> bytes:
    """One message. Each side sends its next message only after reading the other's answer, so
    a read never runs into the next message: one ``recv`` nearly always gets it all."""
    data = sock.recv(_RECV)
    if len(data) < _LENGTH.size:
        if not data:
            raise ConnectionResetError("the ledger's host sequencer closed the connection")
        data += _read_exactly(sock, _LENGTH.size - len(data))
    (length,) = _LENGTH.unpack_from(data)
    if length > _MAX_MESSAGE:
        raise ConnectionError(f"a ledger host message of {length} bytes is not believable")
    end = _LENGTH.size + length
    if len(data) < end:
        return data[_LENGTH.size :] + _read_exactly(sock, end - len(data))
    if len(data) > end:
        raise ConnectionError("a ledger host peer sent a second message before its answer")
    return data[_LENGTH.size :]


def batch_message(rows: Sequence[LeafRow], side: Sequence[SideRows]) -> bytes:
    """A batch on the wire: plain tuples, pickled (``batch_from`` reads it)."""
    return pickle.dumps(
        (
            [tuple(r) for r in rows],
            [(s.table, s.columns, s.rows, s.ignore_conflicts) for s in side],
        ),
        pickle.HIGHEST_PROTOCOL,
    )


def batch_from(message: bytes) -> Batch:
    rows, side = pickle.loads(message)
    return [LeafRow._make(r) for r in rows], [SideRows(*s) for s in side]


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionResetError("the ledger's host sequencer closed the connection")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _error_reply(exc: Exception) -> tuple[Any, ...]:
    try:
        return ("error", pickle.dumps(exc, pickle.HIGHEST_PROTOCOL))
    except Exception:
        return ("error-text", f"{type(exc).__name__}: {exc}")


def _error_from(reply: tuple[Any, ...]) -> BaseException:
    if reply[0] == "error":
        try:
            exc = pickle.loads(reply[1])
        except Exception:
            return RuntimeError("the ledger's host sequencer failed the append")
        if isinstance(exc, BaseException):
            return exc
    return RuntimeError(f"the ledger's host sequencer failed the append: {reply[-1]}")
