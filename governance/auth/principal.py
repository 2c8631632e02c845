"""Who is calling: the tenant, the actor and the roles an API key maps to."""

from __future__ import annotations

from dataclasses import dataclass

# Tenant roles, then "operator": the installation's operator, the only cross-tenant reader. A
# tenant's admin holds every tenant role of its own tenant, never "operator".
TENANT_ROLES = ("editor", "reviewer", "auditor", "admin")
ROLES = (*TENANT_ROLES, "operator")


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    key_id: str
    tenant: str
    actor: str
    roles: frozenset[str]

    def has_role(self, role: str) -> bool:
        """Admins hold every tenant role; everyone else holds exactly the roles on their key."""
        return role in self.roles or ("admin" in self.roles and role in TENANT_ROLES)

    @property
    def is_operator(self) -> bool:
        """The installation's operator: may read across tenants."""
        return "operator" in self.roles
