"""The life of an API key — created, revoked, rotated, expired — each step a ledger event.

Events (``key.created``, ``key.revoked``, ``key.rotated``, ``key.expired``) carry the key's id,
tenant, actor, roles, label and expiry, who did it and why; never the secret nor its hash (see
``key_summary``: the only view of a key that goes into a leaf). A new key's row is inserted in
the same transaction as its ``key.created`` event, so no key exists that the ledger does not
know. Revocation and rotation first change the key's row (the key is refused from that moment,
in every process: see ``governance.auth.keys.KeyRing``), then append their event; an append that
fails after a revocation leaves the key revoked and says so.

The CLI and the admin API both come here; any number of processes may append to the same
ledger (``storage.ledger.log``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select, text

from governance.auth.keys import check_key_fields, new_key_material, now_ms
from governance.ledger_vocabulary import ledger_event
from governance.refusal_error import Refusal
from storage.ledger.events import LedgerEvent, SideRows
from storage.ledger.log import Ledger
from storage.schema.keys import API_KEYS

KEY_COLUMNS = (
    "key_id",
    "secret_sha256",
    "tenant",
    "actor",
    "roles",
    "label",
    "created_ms",
    "expires_ms",
    "rotated_from",
)


class KeyLifecycleError(Refusal):
    """A lifecycle step that cannot be done. ``code`` is the HTTP status an API answers with."""


@dataclass(frozen=True)
class Operator:
    """Who performs a lifecycle step: an API caller (with their key) or a CLI user."""

    actor: str
    via: str  # "api" | "cli" | "custody" (a background job)
    key_id: str | None = None
    tenant: str | None = None

    def body(self) -> dict[str, Any]:
        return {"actor": self.actor, "via": self.via, "key": self.key_id, "tenant": self.tenant}


CUSTODY_JOB = Operator(actor="custody", via="custody")


@dataclass(frozen=True)
class KeyInfo:
    """A key as listings show it: everything but the secret and its hash."""

    key_id: str
    tenant: str
    actor: str
    roles: tuple[str, ...]
    label: str
    created_ms: int
    expires_ms: int | None
    revoked_ms: int | None
    revoked_by: str | None
    revoke_reason: str | None
    rotated_to: str | None
    rotated_from: str | None
    last_used_ms: int | None

    def state(self, now: int | None = None) -> str:
        """``active``, ``rotating`` (rotated, valid until its grace ends), ``rotated``,
        ``revoked`` or ``expired``."""
        now = now_ms() if now is None else now
        if self.revoked_ms is not None and self.revoked_ms <= now:
            return "rotated" if self.rotated_to else "revoked"
        if self.expires_ms is not None and self.expires_ms <= now:
            return "expired"
        return "rotating" if self.rotated_to else "active"

    def to_json(self, now: int | None = None) -> dict[str, Any]:
        return {
            "id": self.key_id,
            "tenant": self.tenant,
            "actor": self.actor,
            "roles": list(self.roles),
            "label": self.label,
            "state": self.state(now),
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "revoked_ms": self.revoked_ms,
            "revoked_by": self.revoked_by,
            "revoke_reason": self.revoke_reason,
            "rotated_to": self.rotated_to,
            "rotated_from": self.rotated_from,
            "last_used_ms": self.last_used_ms,
        }


def key_summary(info: KeyInfo) -> dict[str, Any]:
    """What a ledger event says about a key (no secret, no secret hash)."""
    return {
        "id": info.key_id,
        "tenant": info.tenant,
        "actor": info.actor,
        "roles": list(info.roles),
        "label": info.label,
        "created_ms": info.created_ms,
        "expires_ms": info.expires_ms,
    }


@dataclass(frozen=True)
class NewKey:
    """A key just made: its description, and the full key, which is shown this once."""

    info: KeyInfo
    key: str


_LISTED = [c for c in API_KEYS.c if c.name not in ("secret_sha256", "expiry_recorded_ms")]


def _info(row: Any) -> KeyInfo:
    return KeyInfo(
        key_id=row.key_id,
        tenant=row.tenant,
        actor=row.actor,
        roles=tuple(r for r in row.roles.split(",") if r),
        label=row.label,
        created_ms=int(row.created_ms),
        expires_ms=row.expires_ms,
        revoked_ms=row.revoked_ms,
        revoked_by=row.revoked_by,
        revoke_reason=row.revoke_reason,
        rotated_to=row.rotated_to,
        rotated_from=row.rotated_from,
        last_used_ms=row.last_used_ms,
    )


class KeyLifecycle:
    """Create, list, revoke, rotate and expire keys, recording each step in the ledger."""

    def __init__(self, engine: Engine, ledger: Ledger) -> None:
        self.engine = engine
        self.ledger = ledger

    # --- reading --------------------------------------------------------------------------------

    def list_keys(self, *, tenant: str | None = None) -> list[KeyInfo]:
        """Every key (of ``tenant`` when given), oldest first."""
        query = select(*_LISTED).order_by(API_KEYS.c.created_ms, API_KEYS.c.key_id)
        if tenant is not None:
            query = query.where(API_KEYS.c.tenant == tenant)
        with self.engine.connect() as conn:
            return [_info(row) for row in conn.execute(query)]

    def get(self, key_id: str) -> KeyInfo | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(*_LISTED).where(API_KEYS.c.key_id == key_id)).first()
        return None if row is None else _info(row)

    def require(self, key_id: str) -> KeyInfo:
        info = self.get(key_id)
        if info is None:
            raise KeyLifecycleError(
                404,
                f"There is no key {key_id!r}. List the keys with `custody keys list` or"
                " GET /api/v1/keys.",
                "KEY_NOT_FOUND",
            )
        return info

    # --- creating -------------------------------------------------------------------------------

    def create(
        self,
        *,
        tenant: str,
        actor: str,
        roles: list[str],
        by: Operator,
        label: str = "",
        expires_ms: int | None = None,
        rotated_from: str | None = None,
    ) -> NewKey:
        """Make a key; its row and its ``key.created`` event commit together."""
        roles_column = check_key_fields(tenant=tenant, actor=actor, roles=roles)
        created = now_ms()
        if expires_ms is not None and expires_ms <= created:
            raise KeyLifecycleError(
                400, "The expiry is in the past: give a future time.", "BAD_EXPIRY"
            )
        if len(label) > 256:
            raise KeyLifecycleError(400, "A label is at most 256 characters.", "BAD_LABEL")
        key_id, key, digest = new_key_material()
        info = KeyInfo(
            key_id,
            tenant,
            actor,
            tuple(roles_column.split(",")),
            label,
            created,
            expires_ms,
            None,
            None,
            None,
            None,
            rotated_from,
            None,
        )
        row = (
            key_id,
            digest,
            tenant,
            actor,
            roles_column,
            label,
            created,
            expires_ms,
            rotated_from,
        )
        body: dict[str, Any] = {"key": key_summary(info), "by": by.body()}
        if rotated_from:
            body["rotated_from"] = rotated_from
        self.ledger.append(
            [ledger_event("key.created", body, tenant=tenant, actor=by.actor)],
            [SideRows("api_keys", KEY_COLUMNS, [row])],
        )
        return NewKey(info, key)

    # --- revoking and rotating ------------------------------------------------------------------

    def _refusal(self, key_id: str, doing: str) -> KeyLifecycleError:
        info = self.require(key_id)
        state = info.state()
        hint = {
            "revoked": "it is already revoked",
            "rotated": f"it was already rotated to {info.rotated_to}",
            "rotating": f"it was already rotated to {info.rotated_to} (revoked when the grace"
            " period ends; revoke it to end it now)",
            "expired": "it has expired",
        }.get(state, f"it is {state}")
        return KeyLifecycleError(
            409, f"Key {key_id} cannot be {doing}: {hint}.", f"KEY_{state.upper()}"
        )

    def revoke(self, key_id: str, *, by: Operator, reason: str = "") -> KeyInfo:
        """Revoke now. Refused from this moment on; then ``key.revoked`` is appended."""
        now = now_ms()
        with self.engine.begin() as conn:
            changed = conn.execute(
                text(
                    "UPDATE api_keys SET revoked_ms = :now, revoked_by = :by,"
                    " revoke_reason = :why WHERE key_id = :k"
                    " AND (revoked_ms IS NULL OR revoked_ms > :now)"
                ),
                {"now": now, "by": by.actor, "why": reason, "k": key_id},
            ).rowcount
        if not changed:
            raise self._refusal(key_id, "revoked")
        info = self.require(key_id)
        body = {"key": key_summary(info), "by": by.body(), "reason": reason, "revoked_ms": now}
        self._append_after_change(
            ledger_event("key.revoked", body, tenant=info.tenant, actor=by.actor),
            f"Key {key_id} is revoked",
        )
        return info

    def rotate(self, key_id: str, *, by: Operator, grace_ms: int = 0) -> NewKey:
        """A new key with the old one's tenant, actor, roles, label (and lifetime); the old
        key is revoked now, or when ``grace_ms`` has passed. Records ``key.created`` for the
        new key and ``key.rotated`` for the old one, with the new key's row, in one append."""
        if grace_ms < 0:
            raise KeyLifecycleError(400, "The grace period cannot be negative.", "BAD_GRACE")
        old = self.require(key_id)
        if old.state() != "active":
            raise self._refusal(key_id, "rotated")
        now = now_ms()
        revoke_at = now + grace_ms
        new_id, key, digest = new_key_material()
        expires = None
        if old.expires_ms is not None:
            expires = now + (old.expires_ms - old.created_ms)
        with self.engine.begin() as conn:
            claimed = conn.execute(
                text(
                    "UPDATE api_keys SET rotated_to = :new, revoked_ms = :at, revoked_by = :by,"
                    " revoke_reason = :why WHERE key_id = :k AND rotated_to IS NULL"
                    " AND (revoked_ms IS NULL OR revoked_ms > :now)"
                    " AND (expires_ms IS NULL OR expires_ms > :now)"
                ),
                {
                    "new": new_id,
                    "at": revoke_at,
                    "by": by.actor,
                    "why": f"rotated to {new_id}",
                    "k": key_id,
                    "now": now,
                },
            ).rowcount
        if not claimed:
            raise self._refusal(key_id, "rotated")
        roles_column = ",".join(old.roles)
        info = KeyInfo(
            new_id,
            old.tenant,
            old.actor,
            old.roles,
            old.label,
            now,
            expires,
            None,
            None,
            None,
            None,
            key_id,
            None,
        )
        row = (new_id, digest, old.tenant, old.actor, roles_column, old.label, now, expires, key_id)
        events = [
            ledger_event(
                "key.created",
                {"key": key_summary(info), "by": by.body(), "rotated_from": key_id},
                tenant=old.tenant,
                actor=by.actor,
            ),
            ledger_event(
                "key.rotated",
                {
                    "key": key_summary(old),
                    "by": by.body(),
                    "rotated_to": new_id,
                    "grace_ms": grace_ms,
                    "old_key_revoked_ms": revoke_at,
                },
                tenant=old.tenant,
                actor=by.actor,
            ),
        ]
        try:
            self.ledger.append(events, [SideRows("api_keys", KEY_COLUMNS, [row])])
        except Exception:
            with self.engine.begin() as conn:  # the old key was never rotated: give it back
                conn.execute(
                    text(
                        "UPDATE api_keys SET rotated_to = NULL, revoked_ms = NULL,"
                        " revoked_by = NULL, revoke_reason = NULL"
                        " WHERE key_id = :k AND rotated_to = :new"
                    ),
                    {"k": key_id, "new": new_id},
                )
            raise
        return NewKey(info, key)

    def _append_after_change(self, event: LedgerEvent, done: str) -> None:
        try:
            self.ledger.append([event])
        except Exception as exc:
            raise KeyLifecycleError(
                500,
                f"{done}, but its {event.type} ledger event could not be written ({exc}). The"
                " key stays refused; check the database and the ledger (`custody ledger"
                " verify`).",
                "LEDGER_WRITE_FAILED",
            ) from exc

    # --- expiry and use -------------------------------------------------------------------------

    def record_expiries(self, now: int | None = None) -> list[str]:
        """Append one ``key.expired`` per key whose expiry passed since the last run; the key
        ids. Each key is claimed first (``expiry_recorded_ms``), so of several processes one
        writes the event; a failed append releases the claim for the next run."""
        now = now_ms() if now is None else now
        with self.engine.connect() as conn:
            due = [
                str(r[0])
                for r in conn.execute(
                    text(
                        "SELECT key_id FROM api_keys WHERE expires_ms <= :now"
                        " AND expiry_recorded_ms IS NULL ORDER BY expires_ms"
                    ),
                    {"now": now},
                )
            ]
        done = []
        for key_id in due:
            with self.engine.begin() as conn:
                claimed = conn.execute(
                    text(
                        "UPDATE api_keys SET expiry_recorded_ms = :now"
                        " WHERE key_id = :k AND expiry_recorded_ms IS NULL"
                    ),
                    {"now": now, "k": key_id},
                ).rowcount
            if not claimed:
                continue
            info = self.require(key_id)
            body = {"key": key_summary(info), "by": CUSTODY_JOB.body(), "state": info.state(now)}
            try:
                self.ledger.append(
                    [ledger_event("key.expired", body, tenant=info.tenant, actor="custody")]
                )
            except Exception:
                with self.engine.begin() as conn:
                    conn.execute(
                        text("UPDATE api_keys SET expiry_recorded_ms = NULL WHERE key_id = :k"),
                        {"k": key_id},
                    )
                raise
            done.append(key_id)
        return done

    def record_last_used(self, used: dict[str, int]) -> None:
        """Store when keys were last used (batched by the gateway's background job)."""
        if not used:
            return
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE api_keys SET last_used_ms = :t WHERE key_id = :k"
                    " AND (last_used_ms IS NULL OR last_used_ms < :t)"
                ),
                [{"k": k, "t": t} for k, t in used.items()],
            )


_UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_duration_ms(value: str) -> int:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` (or plain seconds) in milliseconds."""
    value = value.strip().lower()
    unit = value[-1:] if value[-1:] in _UNITS_MS else "s"
    number = value[:-1] if value[-1:] in _UNITS_MS else value
    if not number.isdigit() or int(number) <= 0:
        raise KeyLifecycleError(
            400,
            f"{value!r} is not a duration: write a positive whole number with s, m, h, d or w"
            " (e.g. 30d).",
            "BAD_EXPIRY",
        )
    return int(number) * _UNITS_MS[unit]


def parse_expiry_ms(*, expires_in: str | None, expires: str | None) -> int | None:
    """The expiry of a new key from ``--expires-in`` (a duration) or ``--expires`` (ISO 8601,
    UTC unless it names a zone); None when neither is given."""
    from datetime import UTC, datetime

    if expires_in and expires:
        raise KeyLifecycleError(
            400, "Give an expiry as a duration or as a time, not both.", "BAD_EXPIRY"
        )
    if expires_in:
        return now_ms() + parse_duration_ms(expires_in)
    if expires:
        try:
            when = datetime.fromisoformat(expires)
        except ValueError:
            raise KeyLifecycleError(
                400,
                f"{expires!r} is not an ISO 8601 time (e.g. 2027-01-31T00:00:00Z).",
                "BAD_EXPIRY",
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return int(when.timestamp() * 1000)
    return None
