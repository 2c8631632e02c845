"""The session stage: a turn's place in its session, from receipt to its closing append.

After parsing, ``link`` settles the turn's ``Lineage`` (a native-API hint as given, or a
Gemini-route chat recognised by the hashes of the images it resends: ``governance.sessions
.linking``); every later event of the turn carries that session id. Before signing, each output
gets its version id (``allocate``), so its manifest names it. The closing append carries
``lineage.recorded`` and the session's index rows with the turn's own rows: one transaction.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import orjson

from governance.pipeline.errors import TurnError
from governance.pipeline.parse import ParsedRequest
from governance.pipeline.turn_types import SignedItem, TurnRequest, TurnState
from governance.sessions.lineage import Lineage, OutputVersion
from governance.sessions.linking import SeenImage, link_chat_turn, link_hinted_turn
from governance.sessions.records import (
    image_added_body,
    lineage_bodies,
    session_created_body,
    turn_rows,
)
from governance.upstream.client import UpstreamResult
from storage.ledger.events import SideRows
from storage.sessions import SessionStore, session_side_rows

ROLLBACK_MODEL_VERSION = "custody-rollback"  # what a rollback's "answer" names as its model


def is_rollback(request: TurnRequest) -> bool:
    return request.hint is not None and request.hint.kind == "rollback"


def rollback_result(parsed: ParsedRequest) -> UpstreamResult:
    """A rollback's answer, made here without any upstream call: the earlier version (the
    turn's parent image, as the native API sent it) returned unchanged, to be re-signed."""
    parent = next((i for i in parsed.edited_images if i.role == "parent"), None)
    if parent is None:
        raise TurnError(400, "A rollback needs the version to roll back to.", reason="NO_TARGET")
    document = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {
                            "inlineData": {
                                "mimeType": parent.mime_type,
                                "data": base64.b64encode(parent.data).decode(),
                            }
                        }
                    ],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "modelVersion": ROLLBACK_MODEL_VERSION,
    }
    return UpstreamResult(status=200, body=orjson.dumps(document), headers={}, elapsed_ms=0.0)


class SessionLinker:
    """Attaches turns to sessions; reads the session index, writes only through the ledger."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store

    def link(self, state: TurnState) -> Lineage:
        """The turn's lineage (blocking: it reads the index)."""
        parsed, stored = state.parsed, state.stored
        assert parsed is not None and stored is not None
        committed = {
            (img.content_index, img.part_index): c
            for img, c in zip(parsed.edited_images, stored.image_commitments, strict=True)
        }
        seen = [
            SeenImage(
                sha256=img.sha256,
                role=img.role,
                commitment=committed.get((img.content_index, img.part_index)),
                mime_type=img.mime_type,
                width=img.width,
                height=img.height,
            )
            for img in parsed.images
        ]
        hint = state.request.hint
        if hint is not None:
            return link_hinted_turn(self.store, hint, seen)
        principal = state.principal
        return link_chat_turn(
            self.store,
            tenant=principal.tenant,
            actor=principal.actor,
            client_key=state.request.session,
            images=seen,
        )

    @staticmethod
    def opening_events(lineage: Lineage, turn_id: str) -> list[tuple[str, Any]]:
        """What the turn adds to its session on receipt: a new session, a new image."""
        events: list[tuple[str, Any]] = []
        if lineage.new_session:
            events.append(
                ("session.created", session_created_body(lineage.origin, lineage.client_key))
            )
        if lineage.new_image is not None:
            events.append(("session.image_added", image_added_body(lineage.new_image, turn_id)))
        return events

    @staticmethod
    def allocate(lineage: Lineage, images: list[bytes]) -> list[OutputVersion]:
        """One version per output image, in order (hashing: run off the loop)."""
        return [lineage.output_for(hashlib.sha256(data).hexdigest()) for data in images]

    @staticmethod
    def signed(out: OutputVersion, item: SignedItem, ref: dict[str, str]) -> None:
        out.sha256, out.commitment = item.output.sha256, ref["signed_file"]
        out.mime_type = item.output.mime_type

    @staticmethod
    def closing_bodies(lineage: Lineage, turn_id: str, status: str) -> list[Any]:
        return list(lineage_bodies(lineage, turn_id, status))

    @staticmethod
    def closing_rows(state: TurnState, status: str, error: str | None) -> list[SideRows]:
        lineage = state.lineage
        if lineage is None:
            return []
        rows = turn_rows(
            lineage,
            tenant=state.principal.tenant,
            actor=state.principal.actor,
            turn_id=state.turn_id,
            status=status,
            error=error,
            now=int(time.time() * 1000),
        )
        return session_side_rows(rows)
