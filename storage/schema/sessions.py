"""Editing sessions: images, their version graphs, the turns that made each version, labels.

Created by ``0008_sessions``. A session holds images; each image has versions (an upload, then
edits and rollbacks, each naming its parent version: branches are versions sharing a parent). A
session turn names its targets, masks and references (``session_turn_items``) and the versions it
produced. Every row here is written in the same transaction as the ledger event that states it
(side rows of the append), and the ledger events alone rebuild the graph
(``governance.sessions.graph.rebuild_from_ledger``). Rows hold ids, digests and commitments,
never content.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, String, Table, Text
from sqlmodel import Field, SQLModel


class EditSession(SQLModel, table=True):
    """One editing session of one actor in one tenant."""

    __tablename__ = "edit_sessions"
    __table_args__ = (Index("ix_edit_sessions_key", "tenant", "actor", "client_key"),)

    session_id: str = Field(sa_column=Column(String(40), primary_key=True))
    tenant: str = Field(sa_column=Column(String(128), nullable=False))
    actor: str = Field(sa_column=Column(String(256), nullable=False))
    origin: str = Field(sa_column=Column(String(16), nullable=False))  # api | chat
    client_key: str | None = Field(default=None, sa_column=Column(String(256)))
    title: str | None = Field(default=None, sa_column=Column(String(256)))
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class SessionImage(SQLModel, table=True):
    """One image of a session, with the provenance facts its uploader stated."""

    __tablename__ = "session_images"
    __table_args__ = (Index("ix_session_images_session", "session_id"),)

    image_id: str = Field(sa_column=Column(String(40), primary_key=True))
    session_id: str = Field(sa_column=Column(String(40), nullable=False))
    source: str = Field(sa_column=Column(String(256), nullable=False))
    rights_holder: str | None = Field(default=None, sa_column=Column(String(256)))
    licence: str | None = Field(default=None, sa_column=Column(String(256)))
    identifiable_people: bool | None = Field(default=None, sa_column=Column(Boolean))
    consent: str | None = Field(default=None, sa_column=Column(String(32)))
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class SessionVersion(SQLModel, table=True):
    """One version of an image: its bytes (by digest and commitment) and where it came from."""

    __tablename__ = "session_versions"
    __table_args__ = (
        Index("ix_session_versions_session", "session_id"),
        Index("ix_session_versions_sha256", "tenant", "actor", "sha256"),
    )

    version_id: str = Field(sa_column=Column(String(40), primary_key=True))
    session_id: str = Field(sa_column=Column(String(40), nullable=False))
    image_id: str = Field(sa_column=Column(String(40), nullable=False))
    tenant: str = Field(sa_column=Column(String(128), nullable=False))
    actor: str = Field(sa_column=Column(String(256), nullable=False))
    parent_version: str | None = Field(default=None, sa_column=Column(String(40)))
    turn_id: str | None = Field(default=None, sa_column=Column(String(40)))
    kind: str = Field(sa_column=Column(String(16), nullable=False))  # upload | edit | rollback
    sha256: str = Field(sa_column=Column(String(64), nullable=False))  # of the bytes as released
    commitment: str = Field(sa_column=Column(String(80), nullable=False))
    mime_type: str = Field(sa_column=Column(String(64), nullable=False))
    width: int | None = Field(default=None, sa_column=Column(Integer))
    height: int | None = Field(default=None, sa_column=Column(Integer))
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class SessionTurn(SQLModel, table=True):
    """A turn of a session: released or failed, and the intent a linked edit shares."""

    __tablename__ = "session_turns"
    __table_args__ = (Index("ix_session_turns_session", "session_id", "created_ms"),)

    turn_id: str = Field(sa_column=Column(String(40), primary_key=True))
    session_id: str = Field(sa_column=Column(String(40), nullable=False))
    actor: str = Field(sa_column=Column(String(256), nullable=False))
    kind: str = Field(sa_column=Column(String(16), nullable=False))  # edit | rollback
    intent_id: str | None = Field(default=None, sa_column=Column(String(40)))
    status: str = Field(sa_column=Column(String(16), nullable=False))  # released | failed
    error: str | None = Field(default=None, sa_column=Column(Text))
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class SessionTurnItem(SQLModel, table=True):
    """What a session turn worked on or made: a target, mask, reference or output."""

    __tablename__ = "session_turn_items"
    __table_args__ = (Index("ix_session_turn_items_turn", "turn_id"),)

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    turn_id: str = Field(sa_column=Column(String(40), nullable=False))
    role: str = Field(sa_column=Column(String(16), nullable=False))  # target|mask|reference|output
    version_id: str | None = Field(default=None, sa_column=Column(String(40)))
    commitment: str | None = Field(default=None, sa_column=Column(String(80)))
    position: int = Field(sa_column=Column(Integer, nullable=False))


class VersionLabel(SQLModel, table=True):
    """A label on a version ("StudioStyle1", "approved for campaign")."""

    __tablename__ = "version_labels"
    __table_args__ = (Index("ix_version_labels_session", "session_id"),)

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    session_id: str = Field(sa_column=Column(String(40), nullable=False))
    version_id: str = Field(sa_column=Column(String(40), nullable=False))
    label: str = Field(sa_column=Column(String(128), nullable=False))
    actor: str = Field(sa_column=Column(String(256), nullable=False))
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


EDIT_SESSIONS: Table = EditSession.__table__  # type: ignore[attr-defined]
SESSION_IMAGES: Table = SessionImage.__table__  # type: ignore[attr-defined]
SESSION_VERSIONS: Table = SessionVersion.__table__  # type: ignore[attr-defined]
SESSION_TURNS: Table = SessionTurn.__table__  # type: ignore[attr-defined]
SESSION_TURN_ITEMS: Table = SessionTurnItem.__table__  # type: ignore[attr-defined]
VERSION_LABELS: Table = VersionLabel.__table__  # type: ignore[attr-defined]
