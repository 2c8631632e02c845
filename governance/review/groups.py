"""Reviewer groups: which actors of a tenant decide for which group.

Membership is by actor (the name an API key or a console account authenticates as), so a
person's key and their console sign-in review for the same groups. A tenant's admin manages its
own tenant's groups, an operator any tenant's; each change is a ledger event
(``review.member_added``, ``review.member_removed``) naming who made it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select

from governance.auth.keys import now_ms
from governance.ledger_vocabulary import ledger_event
from governance.review.errors import ReviewError
from governance.review.terms import GROUP_NAME
from storage.ledger.log import Ledger
from storage.schema.reviews import REVIEW_GROUP_MEMBERS as MEMBERS


@dataclass(frozen=True)
class Member:
    tenant: str
    group: str
    actor: str
    added_ms: int
    added_by: str

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "group": self.group,
            "actor": self.actor,
            "added_ms": self.added_ms,
            "added_by": self.added_by,
        }


def is_member(conn: Connection, *, tenant: str, group: str, actor: str) -> bool:
    """Whether ``actor`` reviews for ``group`` of ``tenant`` (read on ``conn``, inside the
    caller's transaction)."""
    found = conn.execute(
        select(MEMBERS.c.actor).where(
            MEMBERS.c.tenant == tenant, MEMBERS.c.group_name == group, MEMBERS.c.actor == actor
        )
    ).first()
    return found is not None


def insert_membership(conn: Connection, member: Member) -> None:
    """The membership row of ``member`` (inside the caller's transaction; its event is the
    caller's to append)."""
    conn.execute(
        insert(MEMBERS).values(
            tenant=member.tenant,
            group_name=member.group,
            actor=member.actor,
            added_ms=member.added_ms,
            added_by=member.added_by,
        )
    )


def check_group_name(group: str) -> str:
    if not GROUP_NAME.match(group):
        raise ReviewError(
            400,
            f"{group!r} is not a group name: 1-128 letters, digits and . _ : @ -, starting with"
            " a letter or digit.",
            "BAD_GROUP",
        )
    return group


class ReviewGroups:
    """Add, remove and list the members of reviewer groups, each change recorded."""

    def __init__(
        self, engine: Engine, ledger: Ledger, *, clock: Callable[[], int] = now_ms
    ) -> None:
        self.engine = engine
        self.ledger = ledger
        self.clock = clock

    def members(self, tenant: str | None, group: str | None = None) -> list[Member]:
        """Members of ``tenant`` (every tenant when None), of one group when given."""
        query = select(MEMBERS).order_by(MEMBERS.c.tenant, MEMBERS.c.group_name, MEMBERS.c.actor)
        if tenant is not None:
            query = query.where(MEMBERS.c.tenant == tenant)
        if group is not None:
            query = query.where(MEMBERS.c.group_name == group)
        with self.engine.connect() as conn:
            return [
                Member(r.tenant, r.group_name, r.actor, int(r.added_ms), r.added_by)
                for r in conn.execute(query)
            ]

    def add(self, *, tenant: str, group: str, actor: str, by: str) -> Member:
        check_group_name(group)
        if not actor or len(actor) > 256:
            raise ReviewError(400, "An actor is 1 to 256 characters.", "BAD_ACTOR")
        member = Member(tenant, group, actor, self.clock(), by)
        with self.engine.begin() as conn:
            if is_member(conn, tenant=tenant, group=group, actor=actor):
                raise ReviewError(
                    409, f"{actor!r} is already a member of {group!r}.", "ALREADY_MEMBER"
                )
            insert_membership(conn, member)
        self._record("review.member_added", member, by)
        return member

    def remove(self, *, tenant: str, group: str, actor: str, by: str) -> None:
        with self.engine.begin() as conn:
            gone = conn.execute(
                delete(MEMBERS).where(
                    MEMBERS.c.tenant == tenant,
                    MEMBERS.c.group_name == group,
                    MEMBERS.c.actor == actor,
                )
            ).rowcount
        if not gone:
            raise ReviewError(
                404, f"{actor!r} is not a member of group {group!r}.", "MEMBER_NOT_FOUND"
            )
        self._record("review.member_removed", Member(tenant, group, actor, self.clock(), by), by)

    def _record(self, type_: str, member: Member, by: str) -> None:
        body = {"group": member.group, "member": member.actor, "by": by}
        self.ledger.append([ledger_event(type_, body, tenant=member.tenant, actor=by)])
