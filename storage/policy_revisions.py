"""The policy revision every replica on one database should decide with (``policy_revisions``).

Whichever replica loads a revision — at start-up, or on a hot reload of changed files —
publishes it as ``active``; every replica compares its own revision with it on each reload tick
and re-reads its policy files when they differ, so replicas that read the same files converge
to one revision, and one that cannot (its files differ) is told apart: it reports itself not
ready (``/readyz``) and in ``/metrics``, and its decisions still record the revision they ran on.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, text

ACTIVE = "active"

_PUBLISH = text(
    """
    INSERT INTO policy_revisions (name, revision, recorded_ms, recorded_by)
    VALUES (:name, :revision, :now, :by)
    ON CONFLICT (name) DO UPDATE SET revision = excluded.revision,
      recorded_ms = excluded.recorded_ms, recorded_by = excluded.recorded_by
    """
)
_READ = text("SELECT revision, recorded_ms, recorded_by FROM policy_revisions WHERE name = :name")


@dataclass(frozen=True)
class ActiveRevision:
    revision: str
    recorded_ms: int
    recorded_by: str


def publish(engine: Engine, revision: str, *, by: str, now_ms: int) -> None:
    """Make ``revision`` the active one (the newest load wins)."""
    with engine.begin() as conn:
        conn.execute(_PUBLISH, {"name": ACTIVE, "revision": revision, "now": now_ms, "by": by})


def active(engine: Engine) -> ActiveRevision | None:
    """The active revision, or None before any replica published one."""
    with engine.connect() as conn:
        row = conn.execute(_READ, {"name": ACTIVE}).first()
    return ActiveRevision(row.revision, int(row.recorded_ms), row.recorded_by) if row else None
