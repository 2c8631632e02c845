"""Who is calling: the tenant, the actor and the roles an API key maps to."""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("editor", "reviewer", "auditor", "admin")


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    key_id: str
    tenant: str
    actor: str
    roles: frozenset[str]

    def has_role(self, role: str) -> bool:
        """Admins hold every role; everyone else holds exactly the roles on their key."""
        return role in self.roles or "admin" in self.roles
