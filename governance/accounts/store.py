"""Console accounts — created, disabled, re-passworded, signed in — each step a ledger event.

A person signs in with tenant, username and password; only an argon2id hash (``argon2-cffi``'s
``PasswordHasher`` defaults, RFC 9106's second recommended profile) is stored. Events
(``account.created``, ``account.disabled``, ``account.password_changed``, ``console.signed_in``,
``console.sign_in_failed``, ``console.signed_out``) say which account, who did it and why; never a
password, its hash, or a session's cookie value.

Failed sign-ins are counted on the account's row, so every gateway process on the database
throttles the same account: after ``max_failures`` in a row it is refused for ``lockout_ms``,
doubling with each further failure (capped at an hour). Disabling an account or changing its
password revokes its sessions at once. An account row is inserted in its own transaction before
its event (a duplicate name must fail alone, not a group-committed ledger batch), and removed
again if the event cannot be written: no account exists that the ledger does not know.

An account's reviewer groups are its actor's memberships in ``review_group_members``, the one
table the review desk checks: ``create(groups=...)`` adds those memberships (each a
``review.member_added`` event beside ``account.created``), and an account read back lists the
memberships its actor holds now, however they were added or removed. (The ``groups`` column of
``console_accounts`` from migration 0007 is no longer written or read.)
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, Engine, insert, select, text
from sqlalchemy.exc import IntegrityError

from governance.auth.keys import now_ms
from governance.auth.lifecycle import Operator
from governance.auth.principal import ROLES, Principal
from governance.ledger_vocabulary import ledger_event
from governance.refusal_error import Refusal
from governance.review.groups import Member, check_group_name, insert_membership
from storage.ledger.events import LedgerEvent
from storage.ledger.log import Ledger
from storage.schema.accounts import CONSOLE_ACCOUNTS, SIGN_IN_MISSES
from storage.schema.reviews import REVIEW_GROUP_MEMBERS as MEMBERS

MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 hashes anything; a megabyte "password" is only a way to burn CPU
MAX_LOCKOUT_MS = 3_600_000
MISSES_KEPT_MS = 24 * 3_600_000  # a name that matched no account is forgotten a day after
_MISS = text(
    """
    INSERT INTO console_sign_in_misses (name_sha256, failed_sign_ins, throttled_until_ms,
                                        last_failed_ms)
    VALUES (:name, 1, NULL, :now)
    ON CONFLICT (name_sha256) DO UPDATE SET
      failed_sign_ins = console_sign_in_misses.failed_sign_ins + 1, last_failed_ms = :now
    RETURNING failed_sign_ins
    """
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
_HASHER = PasswordHasher()
# Verified against when the account does not exist, so an unknown name costs what a known one does.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


class AccountError(Refusal):
    """An account step that cannot be done. ``code`` is the HTTP status an API answers with."""


@dataclass(frozen=True)
class Account:
    """An account as listings show it: everything but the password hash."""

    account_id: str
    tenant: str
    username: str
    display_name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    created_ms: int
    password_changed_ms: int | None
    disabled_ms: int | None

    @property
    def disabled(self) -> bool:
        return self.disabled_ms is not None

    def principal(self) -> Principal:
        """The same principal an API key of these roles gives: the same walls apply."""
        return Principal(
            key_id=f"account:{self.account_id}",
            tenant=self.tenant,
            actor=self.username,
            roles=frozenset(self.roles),
        )

    def summary(self) -> dict[str, Any]:
        """What a ledger event says about an account (no password, no hash)."""
        return {
            "id": self.account_id,
            "tenant": self.tenant,
            "username": self.username,
            "display_name": self.display_name,
            "roles": list(self.roles),
            "groups": list(self.groups),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "created_ms": self.created_ms,
            "password_changed_ms": self.password_changed_ms,
            "disabled_ms": self.disabled_ms,
            "state": "disabled" if self.disabled else "active",
        }


@dataclass(frozen=True)
class SignInResult:
    """The outcome of one sign-in attempt: the account when it succeeded, else why not."""

    account: Account | None
    reason: str  # "ok" | "unknown_account" | "bad_password" | "disabled" | "throttled"
    retry_after_ms: int = 0


_LISTED = [c for c in CONSOLE_ACCOUNTS.c if c.name != "password_hash"]


def _split(value: str) -> tuple[str, ...]:
    return tuple(v for v in value.split(",") if v)


def _memberships(conn: Connection, tenant: str | None) -> dict[tuple[str, str], tuple[str, ...]]:
    """``(tenant, actor) -> groups`` from the review desk's membership table."""
    query = select(MEMBERS.c.tenant, MEMBERS.c.actor, MEMBERS.c.group_name)
    if tenant is not None:
        query = query.where(MEMBERS.c.tenant == tenant)
    found: dict[tuple[str, str], list[str]] = {}
    for r in conn.execute(query):
        found.setdefault((r.tenant, r.actor), []).append(r.group_name)
    return {k: tuple(sorted(v)) for k, v in found.items()}


def _groups_of(conn: Connection, tenant: str, actor: str) -> tuple[str, ...]:
    rows = conn.execute(
        select(MEMBERS.c.group_name).where(MEMBERS.c.tenant == tenant, MEMBERS.c.actor == actor)
    )
    return tuple(sorted(r.group_name for r in rows))


def _account(row: Any, groups: tuple[str, ...]) -> Account:
    return Account(
        account_id=row.account_id,
        tenant=row.tenant,
        username=row.username,
        display_name=row.display_name,
        roles=_split(row.roles),
        groups=groups,
        created_ms=int(row.created_ms),
        password_changed_ms=row.password_changed_ms,
        disabled_ms=row.disabled_ms,
    )


def check_password(password: str) -> None:
    """A new password's length rule (``AccountError`` 400 when broken)."""
    if len(password) < MIN_PASSWORD:
        raise AccountError(
            400, f"A password needs at least {MIN_PASSWORD} characters.", "WEAK_PASSWORD"
        )
    if len(password) > MAX_PASSWORD:
        raise AccountError(400, f"A password is at most {MAX_PASSWORD} characters.", "BAD_PASSWORD")


def check_name(what: str, value: str) -> str:
    if not _NAME.match(value):
        raise AccountError(
            400,
            f"{what} {value!r} is not valid: 1 to 128 letters, digits and . _ @ + - (starting"
            " with a letter or digit).",
            "BAD_ACCOUNT_NAME",
        )
    return value


def _groups(groups: list[str]) -> str:
    for group in groups:
        check_group_name(group)  # the review desk's rule, since these are its memberships
    column = ",".join(sorted(set(groups)))
    if len(column) > 1024:
        raise AccountError(400, "An account's groups are at most 1024 characters.", "BAD_GROUPS")
    return column


def _roles(roles: list[str]) -> str:
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise AccountError(
            400, f"Unknown role(s) {bad or roles}; choose from {', '.join(ROLES)}.", "BAD_ROLE"
        )
    return ",".join(sorted(set(roles)))


class Accounts:
    """Create, list, disable and re-password accounts; check sign-ins. Each step is recorded."""

    def __init__(
        self,
        engine: Engine,
        ledger: Ledger,
        *,
        max_failures: int = 5,
        lockout_ms: int = 60_000,
    ) -> None:
        self.engine = engine
        self.ledger = ledger
        self.max_failures = max_failures
        self.lockout_ms = lockout_ms

    # --- reading --------------------------------------------------------------------------------

    def list_accounts(self, *, tenant: str | None = None) -> list[Account]:
        query = select(*_LISTED).order_by(CONSOLE_ACCOUNTS.c.tenant, CONSOLE_ACCOUNTS.c.username)
        if tenant is not None:
            query = query.where(CONSOLE_ACCOUNTS.c.tenant == tenant)
        with self.engine.connect() as conn:
            groups = _memberships(conn, tenant)
            return [
                _account(r, groups.get((r.tenant, r.username), ())) for r in conn.execute(query)
            ]

    def get(self, account_id: str) -> Account | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(*_LISTED).where(CONSOLE_ACCOUNTS.c.account_id == account_id)
            ).first()
            return (
                None if row is None else _account(row, _groups_of(conn, row.tenant, row.username))
            )

    def find(self, tenant: str, username: str) -> Account | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(*_LISTED).where(
                    CONSOLE_ACCOUNTS.c.tenant == tenant, CONSOLE_ACCOUNTS.c.username == username
                )
            ).first()
            return None if row is None else _account(row, _groups_of(conn, tenant, username))

    def require(self, tenant: str, username: str) -> Account:
        account = self.find(tenant, username)
        if account is None:
            raise AccountError(
                404,
                f"Tenant {tenant!r} has no account {username!r}; `custody accounts list` shows"
                " the accounts.",
                "ACCOUNT_NOT_FOUND",
            )
        return account

    # --- changing -------------------------------------------------------------------------------

    def create(
        self,
        *,
        tenant: str,
        username: str,
        password: str,
        roles: list[str],
        by: Operator,
        display_name: str = "",
        groups: list[str] | None = None,
    ) -> Account:
        """A new account; its row, then its ``account.created`` event (see the module)."""
        check_name("The tenant", tenant)
        check_name("The username", username)
        check_password(password)
        if len(display_name) > 256:
            raise AccountError(400, "A display name is at most 256 characters.", "BAD_NAME")
        account = Account(
            account_id=secrets.token_hex(8),
            tenant=tenant,
            username=username,
            display_name=display_name or username,
            roles=_split(_roles(roles)),
            groups=_split(_groups(groups or [])),
            created_ms=now_ms(),
            password_changed_ms=None,
            disabled_ms=None,
        )
        row = {
            "account_id": account.account_id,
            "tenant": tenant,
            "username": username,
            "display_name": account.display_name,
            "roles": ",".join(account.roles),
            "groups": "",  # memberships live in review_group_members (see the module)
            "password_hash": _HASHER.hash(password),
            "created_ms": account.created_ms,
            "failed_sign_ins": 0,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(CONSOLE_ACCOUNTS).values(**row))
                held = set(_groups_of(conn, tenant, username))
                added = [g for g in account.groups if g not in held]
                for group in added:
                    member = Member(tenant, group, username, account.created_ms, by.actor)
                    insert_membership(conn, member)
        except IntegrityError:
            raise AccountError(
                409, f"Tenant {tenant!r} already has an account {username!r}.", "ACCOUNT_EXISTS"
            ) from None
        events = [
            ledger_event(
                "account.created",
                {"account": account.summary(), "by": by.body()},
                tenant=tenant,
                actor=by.actor,
            ),
            *(
                ledger_event(
                    "review.member_added",
                    {"group": group, "member": username, "by": by.actor},
                    tenant=tenant,
                    actor=by.actor,
                )
                for group in added
            ),
        ]
        try:
            self.ledger.append(events)
        except Exception:
            with self.engine.begin() as conn:  # the ledger does not know it: it never existed
                conn.execute(
                    CONSOLE_ACCOUNTS.delete().where(
                        CONSOLE_ACCOUNTS.c.account_id == account.account_id
                    )
                )
                for group in added:
                    conn.execute(
                        MEMBERS.delete().where(
                            MEMBERS.c.tenant == tenant,
                            MEMBERS.c.group_name == group,
                            MEMBERS.c.actor == username,
                        )
                    )
            raise
        return account

    def disable(self, tenant: str, username: str, *, by: Operator, reason: str = "") -> Account:
        """Refuse the account from now on and end its sessions; then ``account.disabled``."""
        now = now_ms()
        account = self.require(tenant, username)
        with self.engine.begin() as conn:
            changed = conn.execute(
                text(
                    "UPDATE console_accounts SET disabled_ms = :now, disabled_by = :by"
                    " WHERE account_id = :a AND disabled_ms IS NULL"
                ),
                {"now": now, "by": by.actor, "a": account.account_id},
            ).rowcount
            self._end_sessions(conn, account.account_id, now)
        if not changed:
            raise AccountError(
                409, f"Account {username!r} of {tenant!r} is already disabled.", "ACCOUNT_DISABLED"
            )
        body = {"account": account.summary(), "by": by.body(), "reason": reason}
        self._append_after_change(
            ledger_event("account.disabled", body, tenant=tenant, actor=by.actor),
            f"Account {username!r} is disabled",
        )
        return self.require(tenant, username)

    def set_password(self, tenant: str, username: str, password: str, *, by: Operator) -> Account:
        """A new password; the account's sessions end; then ``account.password_changed``."""
        check_password(password)
        account = self.require(tenant, username)
        now = now_ms()
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE console_accounts SET password_hash = :h, password_changed_ms = :now,"
                    " failed_sign_ins = 0, throttled_until_ms = NULL WHERE account_id = :a"
                ),
                {"h": _HASHER.hash(password), "now": now, "a": account.account_id},
            )
            ended = self._end_sessions(conn, account.account_id, now)
        body = {"account": account.summary(), "by": by.body(), "sessions_ended": ended}
        self._append_after_change(
            ledger_event("account.password_changed", body, tenant=tenant, actor=by.actor),
            f"The password of {username!r} is changed",
        )
        return self.require(tenant, username)

    @staticmethod
    def _end_sessions(conn: Any, account_id: str, now: int) -> int:
        return int(
            conn.execute(
                text(
                    "UPDATE console_sessions SET revoked_ms = :now"
                    " WHERE account_id = :a AND revoked_ms IS NULL"
                ),
                {"now": now, "a": account_id},
            ).rowcount
        )

    def _append_after_change(self, event: LedgerEvent, done: str) -> None:
        try:
            self.ledger.append([event])
        except Exception as exc:
            raise AccountError(
                500,
                f"{done}, but its {event.type} ledger event could not be written ({exc}). Check"
                " the database and the ledger (`custody ledger verify`).",
                "LEDGER_WRITE_FAILED",
            ) from exc

    # --- signing in -----------------------------------------------------------------------------

    def check_sign_in(self, tenant: str, username: str, password: str) -> SignInResult:
        """Whether this password opens this account now (throttling counted on the row).

        The password is verified even for an unknown or throttled account, so the answer's
        timing does not say which accounts exist.
        """
        now = now_ms()
        password = password[:MAX_PASSWORD]
        with self.engine.connect() as conn:
            row = conn.execute(
                select(CONSOLE_ACCOUNTS).where(
                    CONSOLE_ACCOUNTS.c.tenant == tenant, CONSOLE_ACCOUNTS.c.username == username
                )
            ).first()
        stored = row.password_hash if row is not None else _DUMMY_HASH
        matches: bool
        try:
            matches = _HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            matches = False
        if row is None:
            return self._missed(tenant, username, now)
        with self.engine.connect() as conn:
            account = _account(row, _groups_of(conn, tenant, username))
        if row.throttled_until_ms is not None and row.throttled_until_ms > now:
            return SignInResult(account, "throttled", int(row.throttled_until_ms) - now)
        if account.disabled:
            return SignInResult(account, "disabled")
        if not matches:
            until = self._lockout_until(int(row.failed_sign_ins) + 1, now)
            with self.engine.begin() as conn:
                conn.execute(
                    text(
                        "UPDATE console_accounts SET failed_sign_ins = failed_sign_ins + 1,"
                        " throttled_until_ms = :until WHERE account_id = :a"
                    ),
                    {"until": until, "a": account.account_id},
                )
            return SignInResult(account, "bad_password", (until - now) if until else 0)
        return self._opened(account, stored, password)

    def _lockout_until(self, failures: int, now: int) -> int | None:
        """When an account (or a name) with ``failures`` failed sign-ins in a row may try again."""
        if failures < self.max_failures:
            return None
        doublings = min(failures - self.max_failures, 16)
        return now + min(self.lockout_ms * 2**doublings, MAX_LOCKOUT_MS)

    def _missed(self, tenant: str, username: str, now: int) -> SignInResult:
        """A failed sign-in under a name that matches no account, counted and throttled by
        the same rule as an account's, so that a 429 does not say the account exists."""
        name = hashlib.sha256(f"{tenant}\0{username}".encode()).hexdigest()
        with self.engine.begin() as conn:
            conn.execute(
                SIGN_IN_MISSES.delete().where(
                    SIGN_IN_MISSES.c.last_failed_ms < now - MISSES_KEPT_MS
                )
            )
            until = conn.execute(
                select(SIGN_IN_MISSES.c.throttled_until_ms).where(
                    SIGN_IN_MISSES.c.name_sha256 == name
                )
            ).scalar()
            if until is not None and until > now:
                return SignInResult(None, "throttled", int(until) - now)
            failures = int(conn.execute(_MISS, {"name": name, "now": now}).scalar_one())
            until = self._lockout_until(failures, now)
            if until is not None:
                conn.execute(
                    SIGN_IN_MISSES.update()
                    .where(SIGN_IN_MISSES.c.name_sha256 == name)
                    .values(throttled_until_ms=until)
                )
        return SignInResult(None, "unknown_account", (until - now) if until else 0)

    def _opened(self, account: Account, stored: str, password: str) -> SignInResult:
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE console_accounts SET failed_sign_ins = 0, throttled_until_ms = NULL"
                    " WHERE account_id = :a"
                ),
                {"a": account.account_id},
            )
        if _HASHER.check_needs_rehash(stored):
            with self.engine.begin() as conn:
                conn.execute(
                    text("UPDATE console_accounts SET password_hash = :h WHERE account_id = :a"),
                    {"h": _HASHER.hash(password), "a": account.account_id},
                )
        return SignInResult(account, "ok")
