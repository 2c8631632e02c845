"""The console's navigation: one entry per page, shown to the roles that may open it.

Pages added later (the review queue, a task) append their entry to ``NAV`` where their router is
defined; ``base.html`` shows the entries the signed-in person's roles admit, in list order.
"""

from __future__ import annotations

from dataclasses import dataclass

from governance.auth.principal import Principal

# Who may open the console at all: an editor-only account may not (it has nothing to do here).
CONSOLE_ROLES = ("reviewer", "auditor", "operator")
# Readers of the ledger and of verification, as on the native API (tenant_scope.require_reader).
READER_ROLES = ("auditor", "operator")


@dataclass(frozen=True)
class NavEntry:
    path: str
    label: str
    roles: tuple[str, ...]  # any of these admits (admins hold every tenant role)

    def admits(self, principal: Principal) -> bool:
        return any(principal.has_role(r) for r in self.roles)


NAV: list[NavEntry] = [
    NavEntry("/console/", "Overview", CONSOLE_ROLES),
    NavEntry("/console/ledger", "Ledger", READER_ROLES),
    NavEntry("/console/verify", "Verify an image", READER_ROLES),
]


def entries_for(principal: Principal) -> list[NavEntry]:
    return [e for e in NAV if e.admits(principal)]
