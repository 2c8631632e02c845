"""The turn index: one ``turns`` row per closed turn, its images, its policy decisions' inputs.

Created by ``0001_core``, ``0003_decision_inputs`` and ``0004_decision_input_commitments``; the
compliance queries' indexes by ``0010_query_indexes``; ``turn_labels`` by ``0014_turn_labels``.
These rows are written in the same transaction as the turn's closing ledger event (side rows of
the append) and ``custody ledger verify`` checks each against the leaves; they hold digests and
commitments, never content. ``turn_labels`` is the exception to the check: a turn's
``x-custody-labels`` pairs are in no leaf (they reach the policy, whose committed decision input
holds them); a version label is, in its ``version.labelled`` event.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, String, Table, Text
from sqlmodel import Field, SQLModel


class Turn(SQLModel, table=True):
    """A turn's summary: who, which model, what came of it, where its ledger events start."""

    __tablename__ = "turns"
    __table_args__ = (
        Index("ix_turns_tenant_created", "tenant", "created_ms"),
        Index("ix_turns_actor_created", "tenant", "actor", "created_ms"),
        # 0010_query_indexes: one per compliance filter, ending in the paging key.
        Index("ix_turns_q_tenant", "tenant", "created_ms", "turn_id"),
        Index("ix_turns_q_actor", "tenant", "actor", "created_ms", "turn_id"),
        Index("ix_turns_q_session", "tenant", "session_id", "created_ms", "turn_id"),
        Index("ix_turns_q_model", "tenant", "model", "created_ms", "turn_id"),
        Index("ix_turns_q_status", "tenant", "status", "created_ms", "turn_id"),
        Index("ix_turns_q_outcome", "tenant", "outcome", "created_ms", "turn_id"),
    )

    turn_id: str = Field(sa_column=Column(String(40), primary_key=True))
    tenant: str = Field(sa_column=Column(String(128), nullable=False))
    actor: str = Field(sa_column=Column(String(256), nullable=False))
    session_id: str | None = Field(default=None, sa_column=Column(String(128)))
    model: str = Field(sa_column=Column(String(256), nullable=False))
    api_version: str = Field(sa_column=Column(String(16), nullable=False))
    method: str = Field(sa_column=Column(String(64), nullable=False))
    status: str = Field(sa_column=Column(String(32), nullable=False))
    outcome: str | None = Field(default=None, sa_column=Column(String(64)))
    prompt_sha256: str | None = Field(default=None, sa_column=Column(String(64)))
    request_sha256: str | None = Field(default=None, sa_column=Column(String(64)))
    response_sha256: str | None = Field(default=None, sa_column=Column(String(64)))
    upstream: str = Field(sa_column=Column(String(256), nullable=False))
    upstream_status: int | None = Field(default=None, sa_column=Column(Integer))
    model_version: str | None = Field(default=None, sa_column=Column(String(256)))
    finish_reason: str | None = Field(default=None, sa_column=Column(String(64)))
    block_reason: str | None = Field(default=None, sa_column=Column(String(64)))
    error: str | None = Field(default=None, sa_column=Column(Text))
    usage_json: str | None = Field(default=None, sa_column=Column(Text))
    timings_json: str | None = Field(default=None, sa_column=Column(Text))
    first_entry_index: int | None = Field(default=None, sa_column=Column(BigInteger))
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    finished_ms: int | None = Field(default=None, sa_column=Column(BigInteger))


class TurnImage(SQLModel, table=True):
    """One input or output image of a turn: its place in the request, its hashes, its size."""

    __tablename__ = "turn_images"
    __table_args__ = (
        Index("ix_turn_images_turn", "turn_id"),
        Index("ix_turn_images_sha256", "sha256"),
        Index("ix_turn_images_signed", "signed_sha256"),
    )

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    turn_id: str = Field(sa_column=Column(String(40), ForeignKey("turns.turn_id"), nullable=False))
    direction: str = Field(sa_column=Column(String(8), nullable=False))  # input | output
    # parent | reference | mask | output
    role: str = Field(sa_column=Column(String(16), nullable=False))
    content_index: int = Field(sa_column=Column(Integer, nullable=False))
    part_index: int = Field(sa_column=Column(Integer, nullable=False))
    mime_type: str = Field(sa_column=Column(String(64), nullable=False))
    sha256: str = Field(sa_column=Column(String(64), nullable=False))
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    width: int | None = Field(default=None, sa_column=Column(Integer))
    height: int | None = Field(default=None, sa_column=Column(Integer))
    signed_sha256: str | None = Field(default=None, sa_column=Column(String(64)))
    manifest_sha256: str | None = Field(default=None, sa_column=Column(String(64)))


class DecisionInput(SQLModel, table=True):
    """The commitment to one policy decision's full input (the blob holds the input: it may
    hold the prompt, so it stays erasable), for ``custody policy diff --replay``."""

    __tablename__ = "decision_inputs"
    __table_args__ = (
        Index("ix_decision_inputs_turn", "turn_id"),
        Index("ix_decision_inputs_created", "created_ms"),
    )

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    turn_id: str = Field(sa_column=Column(String(40), nullable=False))
    stage: str = Field(sa_column=Column(String(16), nullable=False))  # request | response
    input_commitment: str = Field(sa_column=Column(String(80), nullable=False))
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class TurnLabel(SQLModel, table=True):
    """One label of a turn, for the compliance queries' ``label`` filter.

    ``name``/``value`` are a pair of the turn's ``x-custody-labels`` header (name lowercased, as
    the policy reads it), or ``@version`` and the text of a label put on a version the turn
    made (``version.labelled``; ``@`` is outside the header's key alphabet, so the two never
    clash). ``tenant`` and ``created_ms`` repeat the turn's, so a page of one label's turns is
    read from ``ix_turn_labels_q`` alone, newest first, like every other turn filter.
    """

    __tablename__ = "turn_labels"
    __table_args__ = (
        Index("ix_turn_labels_q", "tenant", "name", "value", "created_ms", "turn_id"),
    )

    turn_id: str = Field(sa_column=Column(String(40), primary_key=True))
    name: str = Field(sa_column=Column(String(64), primary_key=True))
    value: str = Field(sa_column=Column(String(256), primary_key=True))
    tenant: str = Field(sa_column=Column(String(128), nullable=False))
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


TURNS: Table = Turn.__table__  # type: ignore[attr-defined]
TURN_IMAGES: Table = TurnImage.__table__  # type: ignore[attr-defined]
DECISION_INPUTS: Table = DecisionInput.__table__  # type: ignore[attr-defined]
TURN_LABELS: Table = TurnLabel.__table__  # type: ignore[attr-defined]
LABEL_COLUMNS = ("turn_id", "name", "value", "tenant", "created_ms")
VERSION_LABEL = "@version"  # the name of a version label in ``turn_labels``


def columns_written(model: type[SQLModel]) -> tuple[str, ...]:
    """The columns a side row of ``model``'s table supplies: all but an autoincrement row id."""
    table = model.__table__  # type: ignore[attr-defined]
    return tuple(c.name for c in table.columns if not (c.primary_key and c.name == "id"))
