"""Reading the session graph (``storage.schema.sessions``) and building its rows.

Writers never insert here directly: every row is a side row of the ledger append that states
it (``SideRows``), so the graph and the ledger cannot disagree. Readers look up versions by the
SHA-256 of their bytes, always within one tenant and one actor: two users sending the same public
image never meet in one session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, Table, or_, select

from storage.ledger.events import SideRows
from storage.schema.sessions import (
    EDIT_SESSIONS,
    SESSION_IMAGES,
    SESSION_TURN_ITEMS,
    SESSION_TURNS,
    SESSION_VERSIONS,
    VERSION_LABELS,
)


def _columns(table: Table, *, skip: tuple[str, ...] = ("id",)) -> tuple[str, ...]:
    return tuple(c.name for c in table.columns if c.name not in skip)


SESSION_COLUMNS = _columns(EDIT_SESSIONS)
IMAGE_COLUMNS = _columns(SESSION_IMAGES)
VERSION_COLUMNS = _columns(SESSION_VERSIONS)
TURN_COLUMNS = _columns(SESSION_TURNS)
ITEM_COLUMNS = _columns(SESSION_TURN_ITEMS)
LABEL_COLUMNS = _columns(VERSION_LABELS)
_TABLE_COLUMNS = {
    "edit_sessions": SESSION_COLUMNS,
    "session_images": IMAGE_COLUMNS,
    "session_versions": VERSION_COLUMNS,
    "session_turns": TURN_COLUMNS,
    "session_turn_items": ITEM_COLUMNS,
    "version_labels": LABEL_COLUMNS,
}


def session_side_rows(rows: Mapping[str, Sequence[dict[str, Any]]]) -> list[SideRows]:
    """Side rows for ``rows`` (table name → row dicts), in an order foreign to no constraint."""
    out: list[SideRows] = []
    for table, columns in _TABLE_COLUMNS.items():
        given = rows.get(table) or []
        if given:
            values = [tuple(r[c] for c in columns) for r in given]
            # A session a client key names may be created by two concurrent first turns: its
            # id is derived from the key, so both carry the same row and one is skipped.
            out.append(SideRows(table, columns, values, ignore_conflicts=table == "edit_sessions"))
    return out


class SessionStore:
    """Read access to sessions; every lookup is scoped to the caller's tenant (and actor)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _all(self, query: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def session(self, session_id: str) -> dict[str, Any] | None:
        found = self._all(select(EDIT_SESSIONS).where(EDIT_SESSIONS.c.session_id == session_id))
        return found[0] if found else None

    def session_ids_for(self, tenant: str, ref: str) -> set[str]:
        """The sessions of ``tenant`` that ``ref`` names: Custody's session id itself, or a
        client's ``x-custody-session`` value (one session per actor who sent it). ``ref`` is kept
        too, for turns recorded before sessions, whose events carry the client's value."""
        t = EDIT_SESSIONS
        rows = self._all(
            select(t.c.session_id).where(
                t.c.tenant == tenant, or_(t.c.session_id == ref, t.c.client_key == ref)
            )
        )
        return {ref, *(r["session_id"] for r in rows)}

    def versions_by_sha256(
        self, tenant: str, actor: str, digests: Sequence[str]
    ) -> list[dict[str, Any]]:
        """This actor's versions whose bytes have one of ``digests``, newest first."""
        if not digests:
            return []
        t = SESSION_VERSIONS
        query = (
            select(t)
            .where(t.c.tenant == tenant, t.c.actor == actor, t.c.sha256.in_(list(set(digests))))
            .order_by(t.c.created_ms.desc(), t.c.version_id)
        )
        return self._all(query)

    def version_digests(self, session_id: str) -> list[tuple[str, str, str]]:
        """(sha256, version id, image id) of every version of the session, oldest first: one
        narrow query, whatever the size of the graph."""
        t = SESSION_VERSIONS
        query = (
            select(t.c.sha256, t.c.version_id, t.c.image_id)
            .where(t.c.session_id == session_id)
            .order_by(t.c.created_ms, t.c.version_id)
        )
        with self.engine.connect() as conn:
            return [(str(a), str(b), str(c)) for a, b, c in conn.execute(query)]

    def version(self, version_id: str) -> dict[str, Any] | None:
        t = SESSION_VERSIONS
        found = self._all(select(t).where(t.c.version_id == version_id))
        return found[0] if found else None

    def image(self, image_id: str) -> dict[str, Any] | None:
        t = SESSION_IMAGES
        found = self._all(select(t).where(t.c.image_id == image_id))
        return found[0] if found else None

    def sessions_of(self, tenant: str, actor: str | None = None) -> list[dict[str, Any]]:
        t = EDIT_SESSIONS
        query = select(t).where(t.c.tenant == tenant)
        if actor is not None:
            query = query.where(t.c.actor == actor)
        return self._all(query.order_by(t.c.created_ms.desc(), t.c.session_id))

    def graph_rows(self, session_id: str) -> dict[str, list[dict[str, Any]]]:
        """Every row of one session: images, versions, turns, their items, labels."""
        turns = self._all(
            select(SESSION_TURNS)
            .where(SESSION_TURNS.c.session_id == session_id)
            .order_by(SESSION_TURNS.c.created_ms, SESSION_TURNS.c.turn_id)
        )
        turn_ids = [t["turn_id"] for t in turns]
        items = (
            self._all(
                select(SESSION_TURN_ITEMS)
                .where(SESSION_TURN_ITEMS.c.turn_id.in_(turn_ids))
                .order_by(SESSION_TURN_ITEMS.c.id)
            )
            if turn_ids
            else []
        )
        return {
            "images": self._all(
                select(SESSION_IMAGES)
                .where(SESSION_IMAGES.c.session_id == session_id)
                .order_by(SESSION_IMAGES.c.created_ms, SESSION_IMAGES.c.image_id)
            ),
            "versions": self._all(
                select(SESSION_VERSIONS)
                .where(SESSION_VERSIONS.c.session_id == session_id)
                .order_by(SESSION_VERSIONS.c.created_ms, SESSION_VERSIONS.c.version_id)
            ),
            "turns": turns,
            "items": items,
            "labels": self._all(
                select(VERSION_LABELS)
                .where(VERSION_LABELS.c.session_id == session_id)
                .order_by(VERSION_LABELS.c.id)
            ),
        }
