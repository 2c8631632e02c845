"""What the native API writes into sessions outside a turn: a new session, an upload, a label.

Each write is one ledger append whose side rows are the index rows it states (both or neither).
A turn's own session rows go with the turn's closing append instead (``pipeline.lineage``).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from governance.ledger_vocabulary import ledger_event
from governance.sessions.lineage import NewImage, Provenance, new_id
from governance.sessions.records import (
    image_added_body,
    image_row,
    label_body,
    session_created_body,
    session_row,
    upload_version_row,
)
from storage.blobs import Commitments
from storage.ledger import Ledger
from storage.ledger.events import SideRows
from storage.schema.sessions import SESSION_VERSIONS
from storage.schema.turns import LABEL_COLUMNS, TURNS, VERSION_LABEL
from storage.sessions import session_side_rows


def _now() -> int:
    return int(time.time() * 1000)


class SessionDesk:
    """Records native-API session writes (blocking: run it off the event loop)."""

    def __init__(self, ledger: Ledger, commitments: Commitments) -> None:
        self.ledger = ledger
        self.commitments = commitments

    def create(self, *, tenant: str, actor: str, title: str | None = None) -> str:
        """A new session of ``actor``; returns its id."""
        session_id = new_id("ses")
        row = session_row(
            session_id, tenant=tenant, actor=actor, origin="api", client_key=None, now=_now()
        )
        row["title"] = title
        event = ledger_event(
            "session.created",
            session_created_body("api", None),
            tenant=tenant,
            actor=actor,
            session=session_id,
        )
        self.ledger.append([event], session_side_rows({"edit_sessions": [row]}))
        return session_id

    def upload(
        self,
        *,
        tenant: str,
        actor: str,
        session_id: str,
        data: bytes,
        mime_type: str,
        width: int | None,
        height: int | None,
        provenance: Provenance,
    ) -> NewImage:
        """A new image of the session whose first version is ``data`` as uploaded."""
        made = self.commitments.put_committed(data)  # durable, salt recorded, before the leaf
        image = NewImage(
            image_id=new_id("img"),
            provenance=provenance,
            version_id=new_id("ver"),
            sha256=made.digest,
            commitment=made.commitment,
            mime_type=mime_type,
            width=width,
            height=height,
        )
        now = _now()
        event = ledger_event(
            "session.image_added",
            image_added_body(image, None),
            tenant=tenant,
            actor=actor,
            session=session_id,
        )
        rows = {
            "session_images": [image_row(session_id, image, now)],
            "session_versions": [
                upload_version_row(
                    session_id, image, tenant=tenant, actor=actor, turn=None, now=now
                )
            ],
        }
        self.ledger.append([event], session_side_rows(rows))
        return image

    def label(
        self, *, tenant: str, actor: str, session_id: str, version_id: str, label: str
    ) -> None:
        """Label one version of the session."""
        event = ledger_event(
            "version.labelled",
            label_body(version_id, label),
            tenant=tenant,
            actor=actor,
            session=session_id,
        )
        row = {
            "session_id": session_id,
            "version_id": version_id,
            "label": label,
            "actor": actor,
            "created_ms": _now(),
        }
        side = session_side_rows({"version_labels": [row]})
        turn = self._turn_of(version_id)
        if turn is not None:
            # The turn that made the version carries the label too (the compliance queries'
            # ``label`` filter); labelled twice, the second row is skipped, not a failure.
            labelled = (turn["turn_id"], VERSION_LABEL, label, turn["tenant"], turn["created_ms"])
            side.append(SideRows("turn_labels", LABEL_COLUMNS, [labelled], ignore_conflicts=True))
        self.ledger.append([event], side)

    def _turn_of(self, version_id: str) -> dict[str, Any] | None:
        """The ``turns`` row of the turn that made this version (None for an upload)."""
        v, t = SESSION_VERSIONS.c, TURNS.c
        query = (
            select(t.turn_id, t.tenant, t.created_ms)
            .select_from(SESSION_VERSIONS.join(TURNS, t.turn_id == v.turn_id))
            .where(v.version_id == version_id)
        )
        with self.ledger.engine.connect() as conn:
            found = conn.execute(query).first()
        return dict(found._mapping) if found is not None else None
