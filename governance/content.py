"""What a turn keeps besides its ledger events: the content, committed to and stored as blobs.

Ledger leaves carry *salted commitments* (``storage.ledger.leaf.commit_content``), never content.
The content itself — the request as it arrived, the prompt, every input image, the upstream's
answer, each signed file and its manifest, each decision input — goes to the blob store, where a
lawful erasure can destroy it without breaking the tree.

Blob writes are slow (an fsync each), so a turn computes its commitments at once (hashing only)
and writes the blobs in the background while the turn goes on (the policy decides meanwhile).

Contract: no ledger append refers to content that is not durable and openable. Before every
append of a turn, ``durable_rows`` waits for every blob committed so far (each fsynced) and hands
their salts (``blob_commitments`` rows) to that same append, in one transaction: a crash at any
moment leaves each committed leaf with its blob and its salt, so ``ledger verify`` passes after a
``kill -9``. ``closing_rows`` does the same for the last append and adds the turn's index rows,
so the index never disagrees with the ledger. A blob write that fails (the database went away)
fails that wait, and is written again by the next one: the turn's failure record, which carries
the same events, never cites a blob that is not stored.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from storage.blobs import Commitment, Commitments
from storage.fingerprint_index import FINGERPRINT_COLUMNS
from storage.ledger.events import SideRows
from storage.ledger.leaf import commit_digest, new_salt
from storage.schema.turns import DecisionInput, Turn, TurnImage, columns_written

if TYPE_CHECKING:
    from governance.provenance.types import SignedOutput
    from governance.upstream.client import UpstreamResult


@dataclass
class TurnContent:
    """The content of one turn: commitments now, durable blobs before the append citing them."""

    recorder: ContentRecorder
    turn_id: str
    pending: list[_BlobWrite] = field(default_factory=list)
    made: list[Commitment] = field(default_factory=list)
    is_closed: bool = False
    decision_inputs: list[tuple[str, str]] = field(default_factory=list)  # (stage, commitment)
    carried: list[SideRows] = field(default_factory=list)  # salts of a failed append
    closing_salts: list[SideRows] = field(default_factory=list)  # the closing append's

    async def commit(self, *items: bytes | tuple[bytes, str]) -> list[str]:
        """Salted commitments to ``items`` — bytes, or (bytes, their SHA-256 hex) when already
        hashed — computed off the event loop; their blobs are written in the background and
        their salts recorded with the turn's last event."""
        return [c.commitment for c in await self.commitments(*items)]

    async def commitments(self, *items: bytes | tuple[bytes, str]) -> list[Commitment]:
        """``commit``, returning each ``Commitment`` whole (with the digest, hashed once)."""
        loop = asyncio.get_running_loop()
        pairs: list[tuple[bytes, str | None]] = [
            item if isinstance(item, tuple) else (item, None) for item in items
        ]
        made = await loop.run_in_executor(self.recorder.executor, _commit_all, pairs)
        for (data, _), c in zip(pairs, made, strict=True):
            self._store(loop, data, c)
        return made

    def commit_now(self, data: bytes) -> str:
        """A salted commitment to ``data`` computed here, on the loop (for the few KiB to
        hundreds of KiB an oversized event field holds: hashing is microseconds); its blob is
        written in the background and made durable before the next append like every other."""
        (made,) = _commit_all([(data, None)])
        self._store(asyncio.get_running_loop(), data, made)
        return made.commitment

    def _store(self, loop: asyncio.AbstractEventLoop, data: bytes, c: Commitment) -> None:
        put = partial(self.recorder.commitments.blobs.put, data, c.digest)
        self.pending.append(_BlobWrite(put, loop.run_in_executor(self.recorder.executor, put)))
        self.made.append(c)

    async def decision_input(self, stage: str, data: bytes) -> str:
        """Keep the full input a decision was made on (for replay; ``decision_input_bytes``) as
        a blob, like any content: the event and the ``decision_inputs`` row hold only its
        commitment (it has the prompt), which this returns."""
        commitment = (await self.commit(data))[0]
        self.decision_inputs.append((stage, commitment))
        return commitment

    async def upstream_response(self, raw: bytes, sha256: str) -> dict[str, Any]:
        """Commit to the upstream's answer exactly as it arrived (``upstream_bytes``: unsigned
        images included), whose SHA-256 hex the caller computed."""
        if not raw:
            return {}
        return {"response": (await self.commit((raw, sha256)))[0], "response_bytes": len(raw)}

    async def signed_output(self, output: SignedOutput) -> dict[str, Any]:
        """Keep the released file and its manifest (the signer already hashed both)."""
        manifest, signed_file = await self.commit(
            (output.manifest, output.manifest_sha256), (output.data, output.sha256)
        )
        return {"manifest": manifest, "signed_file": signed_file}

    async def rejected_body(self, body: bytes) -> tuple[dict[str, Any], str | None]:
        """A request refused before parsing is kept too: bad input is recorded, never lost.
        Returns the ``turn.failed`` fields and the body's SHA-256 (for the ``turns`` row)."""
        if not body:
            return {}, None
        (made,) = await self.commitments(body)
        return {"request": made.commitment, "request_bytes": len(body)}, made.digest

    async def durable_rows(self) -> list[SideRows]:
        """Wait until every blob committed so far is durable, then return the salts of those
        commitments, to commit in the same transaction as the append that refers to them."""
        if self.pending:
            error = await self._rewrite_failed()
            if error is not None:
                # Raised without a name left in this frame (which the traceback holds): a
                # cycle here kept the failed blob and the turn until a full collection.
                try:
                    raise error
                finally:
                    del error
        made, self.made = self.made, []
        carried, self.carried = self.carried, []
        return [*carried, self.recorder.commitments.side_rows(made)] if made else carried

    async def _rewrite_failed(self) -> BaseException | None:
        """Wait for the pending writes; the first one's error if any failed, after starting
        those writes again. Nothing cites their commitments yet, and nothing may until their
        blobs are stored: the next wait (the failure record's) waits for the new writes."""
        pending, self.pending = self.pending, []
        outcomes = await asyncio.gather(*(w.done for w in pending), return_exceptions=True)
        failed = [
            w for w, err in zip(pending, outcomes, strict=True) if isinstance(err, BaseException)
        ]
        if not failed:
            return None
        loop = asyncio.get_running_loop()
        self.pending = [
            _BlobWrite(w.put, loop.run_in_executor(self.recorder.executor, w.put)) for w in failed
        ]
        return next(err for err in outcomes if isinstance(err, BaseException))

    def carry(self, rows: list[SideRows]) -> None:
        """Salt rows an append that failed did not commit: the next append carries them."""
        self.carried.extend(rows)

    async def closing_rows(
        self,
        turn_row: dict[str, Any],
        image_rows: list[dict[str, Any]],
        fingerprint_rows: Sequence[tuple[Any, ...]] = (),
    ) -> list[SideRows]:
        """Wait for every blob of the turn, then return its salts and index rows (``turns``,
        ``turn_images``, ``decision_inputs``, ``image_fingerprints`` — rows in
        ``FINGERPRINT_COLUMNS`` order) to commit in the same transaction as the turn's
        last event (``turn.released`` or ``turn.failed``): the index can never disagree with the
        ledger. Call ``closed`` once that append succeeded; after it, this returns nothing."""
        if self.is_closed:
            return []
        salts = await self.durable_rows()
        self.closing_salts = salts
        return [
            *salts,
            SideRows("turns", TURN_COLUMNS, [tuple(turn_row[c] for c in TURN_COLUMNS)]),
            SideRows(
                "turn_images",
                IMAGE_COLUMNS,
                [tuple(r[c] for c in IMAGE_COLUMNS) for r in image_rows],
            ),
            SideRows(
                "decision_inputs",
                INPUT_COLUMNS,
                [
                    (self.turn_id, stage, commitment, turn_row["created_ms"])
                    for stage, commitment in self.decision_inputs
                ],
            ),
            SideRows("image_fingerprints", FINGERPRINT_COLUMNS, list(fingerprint_rows)),
        ]

    def closing_failed(self) -> None:
        """The closing append failed: its salts go with the next one (the failure record's),
        whose events cite the same commitments; its index rows are built again."""
        self.carry(self.closing_salts)
        self.closing_salts = []

    def closed(self) -> None:
        """The turn's last append (with the rows of ``closing_rows``) is durable."""
        self.made = []
        self.carried = []
        self.closing_salts = []
        self.decision_inputs = []
        self.is_closed = True


def upstream_bytes(result: UpstreamResult) -> bytes:
    """The upstream's answer as it arrived: the body, or a stream's events one per line."""
    return result.body if not result.events else b"\n".join(result.events)


def decision_input_bytes(document: dict[str, Any]) -> bytes:
    """The stored form of a decision input: canonical-order JSON (what replay reads back)."""
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def _commit_all(items: list[tuple[bytes, str | None]]) -> list[Commitment]:
    out = []
    for data, known in items:
        salt = new_salt()
        raw = bytes.fromhex(known) if known else hashlib.sha256(data).digest()
        out.append(Commitment(commit_digest(raw, salt), raw.hex(), salt))
    return out


@dataclass(frozen=True, slots=True)
class _BlobWrite:
    """One blob being written in the background, and how to write it again if that fails."""

    put: Callable[[], str]
    done: asyncio.Future[str]


class ContentRecorder:
    """Commitments and blob writes for turns; one per process."""

    def __init__(self, commitments: Commitments, executor: Any) -> None:
        self.commitments = commitments
        self.executor = executor

    def begin(self, turn_id: str) -> TurnContent:
        return TurnContent(self, turn_id)


# The side rows' columns, from the one schema source (every column but the row ids the
# database assigns).
TURN_COLUMNS = columns_written(Turn)
IMAGE_COLUMNS = columns_written(TurnImage)
INPUT_COLUMNS = columns_written(DecisionInput)
