"""Who may read what across tenants, and who may sign checkpoints: one place for the walls.

Every read route asks these functions instead of checking roles itself, so the rule is the same
everywhere: a caller sees their own tenant's records; an ``operator`` (the installation's
operator, never a tenant's admin) sees every tenant's; records of tenant ``*`` (installation-wide
events such as ``policy.reloaded``, which say which policy governed everyone's turns and carry no
tenant's content) are visible to every reader. Signing a checkpoint is an act of an admin or an
operator, never a side effect of an auditor's read.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends

from governance.api.deps import authenticate
from governance.api.errors import GeminiError
from governance.auth.principal import Principal

INSTALLATION_TENANT = "*"


def sees_tenant(principal: Principal, tenant: str) -> bool:
    """Whether ``principal`` may read the content of records of ``tenant``."""
    return principal.is_operator or tenant in (principal.tenant, INSTALLATION_TENANT)


def may_sign_checkpoints(principal: Principal) -> bool:
    """Admins and operators sign checkpoints; auditors only read them."""
    return principal.is_operator or principal.has_role("admin")


def require_any_role(*roles: str) -> Callable[[Principal], Principal]:
    """A dependency admitting callers who hold any of ``roles`` (admins hold every tenant role;
    ``operator`` must be named to be admitted)."""

    def _check(principal: Principal = Depends(authenticate)) -> Principal:  # noqa: B008
        if not any(principal.has_role(r) for r in roles):
            raise GeminiError(
                403,
                f"This route needs the {' or '.join(repr(r) for r in roles)} role; the key of"
                f" {principal.actor!r} has {', '.join(sorted(principal.roles))}. Ask your Custody"
                " administrator for a key with that role.",
                reason="ROLE_REQUIRED",
            )
        return principal

    return _check


# Readers of the ledger, proofs, verification and metrics; signers of checkpoints.
require_reader = require_any_role("auditor", "operator")
require_signer = require_any_role("admin", "operator")
