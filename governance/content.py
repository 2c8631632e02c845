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
so the index never disagrees with the ledger.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from storage.blobs import Commitment, Commitments
from storage.ledger.events import SideRows
from storage.ledger.leaf import commit_digest, new_salt

if TYPE_CHECKING:
    from governance.auth.principal import Principal
    from governance.pipeline.parse import ParsedRequest
    from governance.pipeline.response import ResponseSummary
    from governance.pipeline.signing import SignedItem
    from governance.pipeline.turn import TurnRequest
    from governance.provenance.types import SignedOutput
    from governance.upstream.client import UpstreamResult

Runner = Callable[..., Any]


@dataclass(frozen=True)
class StoredRequest:
    """The commitments of a request's content, for the ``turn.received`` event."""

    request_commitment: str
    prompt_commitment: str | None
    image_commitments: list[str]
    document_commitments: list[str] = field(default_factory=list)  # non-image inputs

    def mask_commitments(self, parsed: ParsedRequest) -> list[str]:
        """The commitments of the mask images (the manifest names masks only this way)."""
        return [
            c
            for img, c in zip(parsed.edited_images, self.image_commitments, strict=True)
            if img.role == "mask"
        ]

    def received_body(self, request: TurnRequest, parsed: ParsedRequest) -> dict[str, Any]:
        """The ``turn.received`` body: what came in, as commitments and plain facts."""
        images = []
        for img, commitment in zip(parsed.edited_images, self.image_commitments, strict=True):
            images.append(
                {
                    "role": img.role,
                    "content": img.content_index,
                    "part": img.part_index,
                    "mime_type": img.mime_type,
                    "bytes": len(img.data),
                    "width": img.width,
                    "height": img.height,
                    "commitment": commitment,
                }
            )
        return {
            "api_version": request.api_version,
            "model": request.model,
            "method": request.method,
            "stream": request.stream,
            "request": self.request_commitment,
            "request_bytes": len(request.body),
            "prompt": self.prompt_commitment,
            "prompt_chars": len(parsed.prompt),
            "images": images,
            "history_images": sum(1 for i in parsed.images if i.role == "history"),
            "file_uris": len(parsed.file_uris),
            "documents": [
                {
                    "content": d.content_index,
                    "part": d.part_index,
                    "mime_type": d.mime_type,
                    "declared_mime_type": d.declared_mime_type,
                    "bytes": len(d.data),
                    "history": d.history,
                    "commitment": commitment,
                }
                for d, commitment in zip(parsed.documents, self.document_commitments, strict=True)
            ],
        }


@dataclass
class TurnContent:
    """The content of one turn: commitments now, durable blobs before the append citing them."""

    recorder: ContentRecorder
    turn_id: str
    pending: list[asyncio.Future[Any]] = field(default_factory=list)
    made: list[Commitment] = field(default_factory=list)
    is_closed: bool = False
    decision_inputs: list[tuple[str, str]] = field(default_factory=list)  # (stage, commitment)

    async def commit(self, *items: bytes | tuple[bytes, str]) -> list[str]:
        """Salted commitments to ``items`` — bytes, or (bytes, their SHA-256 hex) when already
        hashed — computed off the event loop; their blobs are written in the background and
        their salts recorded with the turn's last event."""
        loop = asyncio.get_running_loop()
        pairs = [item if isinstance(item, tuple) else (item, None) for item in items]
        made = await loop.run_in_executor(self.recorder.executor, _commit_all, pairs)
        for (data, _), c in zip(pairs, made, strict=True):
            self._store(loop, data, c)
        return [c.commitment for c in made]

    def commit_now(self, data: bytes) -> str:
        """A salted commitment to ``data`` computed here, on the loop (for the few KiB to
        hundreds of KiB an oversized event field holds: hashing is microseconds); its blob is
        written in the background and made durable before the next append like every other."""
        (made,) = _commit_all([(data, None)])
        self._store(asyncio.get_running_loop(), data, made)
        return made.commitment

    def _store(self, loop: asyncio.AbstractEventLoop, data: bytes, c: Commitment) -> None:
        put = partial(self.recorder.commitments.blobs.put, data, c.digest)
        self.pending.append(loop.run_in_executor(self.recorder.executor, put))
        self.made.append(c)

    async def request(self, parsed: ParsedRequest) -> StoredRequest:
        """Commit to the request as it arrived, its prompt, every image the turn works on and
        every non-image input."""
        images = [(i.data, i.sha256) for i in parsed.edited_images]  # hashed while parsing
        documents = [(d.data, d.sha256) for d in parsed.documents]
        request_c, prompt_c, *content_cs = await self.commit(
            parsed.body, parsed.prompt.encode(), *images, *documents
        )
        image_cs, document_cs = content_cs[: len(images)], content_cs[len(images) :]
        return StoredRequest(request_c, prompt_c if parsed.prompt else None, image_cs, document_cs)

    async def decision_input(self, stage: str, document: dict[str, Any]) -> dict[str, Any]:
        """Keep the full input a decision was made on (for replay) as a blob, like any content:
        the event and the ``decision_inputs`` row hold only its commitment (it has the prompt)."""
        data = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
        commitment = (await self.commit(data))[0]
        self.decision_inputs.append((stage, commitment))
        return {"input": commitment}

    async def upstream_response(self, result: UpstreamResult) -> dict[str, Any]:
        """Commit to the upstream's answer exactly as it arrived (unsigned images included)."""
        raw = result.body if not result.events else b"\n".join(result.events)
        if not raw:
            return {}
        return {"response": (await self.commit(raw))[0], "response_bytes": len(raw)}

    async def signed_output(self, output: SignedOutput) -> dict[str, Any]:
        """Keep the released file and its manifest (the signer already hashed both)."""
        manifest, signed_file = await self.commit(
            (output.manifest, output.manifest_sha256), (output.data, output.sha256)
        )
        return {"manifest": manifest, "signed_file": signed_file}

    async def rejected_body(self, body: bytes) -> dict[str, Any]:
        """A request refused before parsing is kept too: bad input is recorded, never lost."""
        if not body:
            return {}
        return {"request": (await self.commit(body))[0], "request_bytes": len(body)}

    async def durable_rows(self) -> list[SideRows]:
        """Wait until every blob committed so far is durable, then return the salts of those
        commitments, to commit in the same transaction as the append that refers to them."""
        pending, self.pending = self.pending, []
        if pending:
            await asyncio.gather(*pending)
        made, self.made = self.made, []
        return [self.recorder.commitments.side_rows(made)] if made else []

    async def closing_rows(
        self,
        principal: Principal,
        request: TurnRequest,
        parsed: ParsedRequest | None,
        summary: ResponseSummary | None,
        signed: list[SignedItem],
        *,
        status: str,
        outcome: str,
        first_index: int | None,
        timings: dict[str, float],
        upstream_label: str,
        upstream_status: int | None,
        error: str | None = None,
    ) -> list[SideRows]:
        """Wait for every blob of the turn, then return its salts and index rows (turns,
        turn_images, decision_inputs) to commit in the same transaction as the turn's last event
        (``turn.released`` or ``turn.failed``): the index can never disagree with the ledger.
        Call ``closed`` once that append succeeded; after it, this returns nothing more."""
        if self.is_closed:
            return []
        salts = await self.durable_rows()
        row = _turn_row(
            self.turn_id,
            principal,
            request,
            parsed,
            summary,
            status=status,
            outcome=outcome,
            first_index=first_index,
            timings=timings,
            upstream_label=upstream_label,
            upstream_status=upstream_status,
            error=error,
        )
        images = _image_rows(self.turn_id, parsed, signed)
        return [
            *salts,
            SideRows("turns", TURN_COLUMNS, [tuple(row[c] for c in TURN_COLUMNS)]),
            SideRows(
                "turn_images", IMAGE_COLUMNS, [tuple(r[c] for c in IMAGE_COLUMNS) for r in images]
            ),
            SideRows(
                "decision_inputs",
                INPUT_COLUMNS,
                [
                    (self.turn_id, stage, commitment, row["created_ms"])
                    for stage, commitment in self.decision_inputs
                ],
            ),
        ]

    def closed(self) -> None:
        """The turn's last append (with the rows of ``closing_rows``) is durable."""
        self.made = []
        self.decision_inputs = []
        self.is_closed = True


def _commit_all(items: list[tuple[bytes, str | None]]) -> list[Commitment]:
    out = []
    for data, known in items:
        salt = new_salt()
        raw = bytes.fromhex(known) if known else hashlib.sha256(data).digest()
        out.append(Commitment(commit_digest(raw, salt), raw.hex(), salt))
    return out


class ContentRecorder:
    """Commitments and blob writes for turns; one per process."""

    def __init__(self, commitments: Commitments, executor: Any) -> None:
        self.commitments = commitments
        self.executor = executor

    def begin(self, turn_id: str) -> TurnContent:
        return TurnContent(self, turn_id)


TURN_COLUMNS = (
    "turn_id",
    "tenant",
    "actor",
    "session_id",
    "model",
    "api_version",
    "method",
    "status",
    "outcome",
    "prompt_sha256",
    "request_sha256",
    "response_sha256",
    "upstream",
    "upstream_status",
    "model_version",
    "finish_reason",
    "block_reason",
    "error",
    "usage_json",
    "timings_json",
    "first_entry_index",
    "created_ms",
    "finished_ms",
)
IMAGE_COLUMNS = (
    "turn_id",
    "direction",
    "role",
    "content_index",
    "part_index",
    "mime_type",
    "sha256",
    "size",
    "width",
    "height",
    "signed_sha256",
    "manifest_sha256",
)


INPUT_COLUMNS = ("turn_id", "stage", "input_commitment", "created_ms")


def _turn_row(
    turn_id: str,
    principal: Principal,
    request: TurnRequest,
    parsed: ParsedRequest | None,
    summary: ResponseSummary | None,
    *,
    status: str,
    outcome: str,
    first_index: int | None,
    timings: dict[str, float],
    upstream_label: str,
    upstream_status: int | None,
    error: str | None,
) -> dict[str, Any]:
    now = int(time.time() * 1000)
    started = now - int(timings.get("total_ms", 0))
    return {
        "turn_id": turn_id,
        "tenant": principal.tenant,
        "actor": principal.actor,
        "session_id": request.headers.get("x-custody-session"),
        "model": request.model,
        "api_version": request.api_version,
        "method": request.method,
        "status": status,
        "outcome": outcome,
        # Plain hashes live only in this erasable index, never in ledger leaves.
        "prompt_sha256": hashlib.sha256(parsed.prompt.encode()).hexdigest() if parsed else None,
        "request_sha256": hashlib.sha256(request.body).hexdigest(),
        "response_sha256": None,
        "upstream": upstream_label,
        "upstream_status": upstream_status,
        "model_version": summary.model_version if summary else None,
        "finish_reason": (
            summary.finish_reasons[0] if summary and summary.finish_reasons else None
        ),
        "block_reason": summary.block_reason if summary else None,
        "error": error,
        "usage_json": orjson.dumps(summary.usage).decode() if summary and summary.usage else None,
        "timings_json": orjson.dumps(timings).decode(),
        "first_entry_index": first_index,
        "created_ms": started,
        "finished_ms": now,
    }


def _image_rows(
    turn_id: str, parsed: ParsedRequest | None, signed: list[SignedItem]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for img in parsed.edited_images if parsed else []:
        rows.append(
            {
                "turn_id": turn_id,
                "direction": "input",
                "role": img.role,
                "content_index": img.content_index,
                "part_index": img.part_index,
                "mime_type": img.mime_type,
                "sha256": img.sha256,
                "size": len(img.data),
                "width": img.width,
                "height": img.height,
                "signed_sha256": None,
                "manifest_sha256": None,
            }
        )
    for item in signed:
        chunk, candidate, part = item.position
        rows.append(
            {
                "turn_id": turn_id,
                "direction": "output",
                "role": "output",
                "content_index": candidate,
                "part_index": part if chunk == 0 else chunk * 1000 + part,
                "mime_type": item.output.mime_type,
                "sha256": item.upstream_sha256,
                "size": len(item.output.data),
                "width": None,
                "height": None,
                "signed_sha256": item.output.sha256,
                "manifest_sha256": item.output.manifest_sha256,
            }
        )
    return rows
