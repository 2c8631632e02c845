"""Requests refused under overload, recorded per tenant in aggregate (``requests.shed``).

A 503 + ``Retry-After`` under overload (the in-flight limit, ``governance.api.request_limits``;
the ledger's full append queue, ``storage.ledger.LedgerPushback``) must show in the tenant's
ledger, but one entry per refusal would add load to the very thing that is overloaded — and a
ledger push-back means the ledger is what is full. So refusals are counted in memory, per tenant,
and every ``CUSTODY_SHED_RECORD_MS`` one ``requests.shed`` event per tenant says how many, why,
by which keys and between when: a bounded number of appends per period however hard the
gateway is pushed. A flush the ledger refuses keeps its counts for the next one; a graceful
shutdown flushes; a crash loses at most one period's counts (the refusals were answered, and
nothing was recorded or released for them).

Only a refusal whose caller is known is counted here: a ledger push-back comes after
authentication; the in-flight limit refuses before the route runs, so it attributes by a key whose
identity the key cache already holds (secret digest compared, no database read: a shed request
must cost nothing more). Connection-level refusals (the guard's evictions and full-table 503s)
come before a header is read and have no tenant: they are in ``custody_connections_cut`` only.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from governance.ledger_vocabulary import ledger_event

if TYPE_CHECKING:
    from governance.auth.principal import Principal
    from storage.ledger import Ledger
    from storage.ledger.events import LedgerEvent

MAX_KEYS_PER_RECORD = 64  # the keys with most refusals; the rest are counted under "other"


@dataclass
class _TenantTally:
    since_ms: int
    until_ms: int
    refused: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    keys: dict[str, int] = field(default_factory=dict)

    def merge(self, other: _TenantTally) -> None:
        self.since_ms = min(self.since_ms, other.since_ms)
        self.until_ms = max(self.until_ms, other.until_ms)
        self.refused += other.refused
        for name, n in other.reasons.items():
            self.reasons[name] = self.reasons.get(name, 0) + n
        for name, n in other.keys.items():
            self.keys[name] = self.keys.get(name, 0) + n


class ShedTally:
    """Counts refusals per tenant until ``flush`` writes them (module docstring). Thread-safe:
    the event loop counts, the background job flushes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tenants: dict[str, _TenantTally] = {}

    def count(self, principal: Principal, reason: str) -> None:
        now = int(time.time() * 1000)
        with self._lock:
            tally = self._tenants.get(principal.tenant)
            if tally is None:
                tally = self._tenants[principal.tenant] = _TenantTally(now, now)
            tally.until_ms = now
            tally.refused += 1
            tally.reasons[reason] = tally.reasons.get(reason, 0) + 1
            tally.keys[principal.key_id] = tally.keys.get(principal.key_id, 0) + 1

    def pending(self) -> int:
        """Refusals counted and not yet written."""
        with self._lock:
            return sum(t.refused for t in self._tenants.values())

    def flush(self, ledger: Ledger) -> int:
        """Append one ``requests.shed`` per tenant with refusals since the last flush; how many
        refusals were written. If the append fails (a push-back included) the counts are kept
        for the next flush and the error is raised."""
        with self._lock:
            taken, self._tenants = self._tenants, {}
        if not taken:
            return 0
        try:
            ledger.append([shed_event(tenant, tally) for tenant, tally in sorted(taken.items())])
        except BaseException:
            with self._lock:
                for tenant, tally in taken.items():
                    newer = self._tenants.get(tenant)
                    if newer is not None:
                        tally.merge(newer)
                    self._tenants[tenant] = tally
            raise
        return sum(t.refused for t in taken.values())


def shed_event(tenant: str, tally: _TenantTally) -> LedgerEvent:
    """The ``requests.shed`` event of one tenant's tally."""
    keys = sorted(tally.keys.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = dict(keys[:MAX_KEYS_PER_RECORD])
    if len(keys) > MAX_KEYS_PER_RECORD:
        shown["other"] = sum(n for _, n in keys[MAX_KEYS_PER_RECORD:])
    return ledger_event(
        "requests.shed",
        {
            "since_ms": tally.since_ms,
            "until_ms": tally.until_ms,
            "refused": tally.refused,
            "reasons": dict(sorted(tally.reasons.items())),
            "keys": shown,
        },
        tenant=tenant,
        actor="custody",
    )
