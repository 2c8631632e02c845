"""``custody keys create | list | revoke | rotate``: API keys, each step a ledger event.

Only ``create`` may make an installation (saying so on stderr); ``list``, ``revoke`` and
``rotate`` act on keys that exist, so where there is no installation they refuse and say where
they looked. Writers append to the same ledger as a running gateway (appends from several
processes are safe: ``storage.ledger.log``). A revoke here is refused by a running gateway on
its next request (``governance.auth.keys.KeyRing``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from governance.auth.principal import ROLES
from governance.settings import Settings

if TYPE_CHECKING:
    from governance.auth.lifecycle import KeyInfo, KeyLifecycle, Operator


def article(word: str) -> str:
    """The indefinite article and the word: "an editor", "an admin", "a reviewer"."""
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cli_operator(args: argparse.Namespace) -> Operator:
    from governance.auth.lifecycle import Operator

    return Operator(actor=args.by or f"cli:{getpass.getuser()}", via="cli")


def _run(
    command: str, step: Callable[[KeyLifecycle, argparse.Namespace], int], args: argparse.Namespace
) -> int:
    from governance.auth.keys import KeyError_
    from governance.auth.lifecycle import KeyLifecycle, KeyLifecycleError
    from governance.state import open_state, open_state_or_create

    settings = Settings()
    if command != "create":  # list, revoke and rotate need keys that exist: never a new install
        state = open_state(settings, create=False)
    else:
        state = open_state_or_create(
            settings,
            command=f"keys {command}",
            warning="A gateway refuses this key unless it uses the same data directory",
        )
    try:
        return step(KeyLifecycle(state.engine, state.ledger), args)
    except (KeyError_, KeyLifecycleError) as exc:
        print(f"custody keys {command}: {exc}", file=sys.stderr)
        return 2
    finally:
        state.close()


def _create(keys: KeyLifecycle, args: argparse.Namespace) -> int:
    from governance.auth.lifecycle import parse_expiry_ms

    made = keys.create(
        tenant=args.tenant,
        actor=args.actor or f"{args.role}@{args.tenant}",
        roles=[args.role, *(args.also or [])],
        label=args.label,
        expires_ms=parse_expiry_ms(expires_in=args.expires_in, expires=args.expires),
        by=_cli_operator(args),
    )
    expiry = f", expiring {_when(made.info.expires_ms)}" if made.info.expires_ms else ""
    print(
        f"Created {article(args.role)} key {made.info.key_id} for tenant {args.tenant!r}"
        f"{expiry}. It is shown once; keep it safe:"
    )
    print(made.key)
    return 0


def _refused_from(key: KeyInfo) -> int | None:
    """When a usable key stops working: its expiry, or the end of a rotation's grace period."""
    ends = [key.expires_ms]
    if key.state() == "rotating":
        ends.append(key.revoked_ms)
    known = [t for t in ends if t is not None]
    return min(known) if known else None


def _list(keys: KeyLifecycle, args: argparse.Namespace) -> int:
    listed = keys.list_keys(tenant=args.tenant)
    if args.json:
        print(json.dumps([k.to_json() for k in listed], indent=2))
        return 0
    if not listed:
        where = f" for tenant {args.tenant!r}" if args.tenant else ""
        print(f"No keys{where}. Create one with `custody keys create`.")
        return 0
    head = ("ID", "TENANT", "ACTOR", "ROLES", "LABEL", "STATE", "CREATED", "EXPIRES", "LAST USED")
    rows = [
        (
            k.key_id,
            k.tenant,
            k.actor,
            ",".join(k.roles),
            k.label or "-",
            k.state(),
            _when(k.created_ms),
            _when(_refused_from(k)),
            _when(k.last_used_ms),
        )
        for k in listed
    ]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _revoke(keys: KeyLifecycle, args: argparse.Namespace) -> int:
    info = keys.revoke(args.key_id, by=_cli_operator(args), reason=args.reason)
    print(f"Revoked key {info.key_id} ({info.actor}, tenant {info.tenant!r}); it is refused now.")
    return 0


def _grace_ms(value: str) -> int:
    from governance.auth.lifecycle import parse_duration_ms

    return 0 if value.strip() in ("0", "0s") else parse_duration_ms(value)


def _rotate(keys: KeyLifecycle, args: argparse.Namespace) -> int:
    grace = _grace_ms(args.grace)
    made = keys.rotate(args.key_id, by=_cli_operator(args), grace_ms=grace)
    until = "now" if not grace else f"at {_when(made.info.created_ms + grace)}"
    print(
        f"Rotated key {args.key_id} to {made.info.key_id}; the old key is revoked {until}."
        " The new key is shown once; keep it safe:"
    )
    print(made.key)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``custody keys`` and its subcommands."""
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys", required=True)

    def command(
        name: str, help_: str, step: Callable[[KeyLifecycle, argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = keys.add_parser(name, help=help_)
        parser.set_defaults(func=lambda args: _run(name, step, args))
        return parser

    create = command("create", "create an API key (printed alone on the last line)", _create)
    create.add_argument("--role", required=True, choices=list(ROLES))
    create.add_argument("--also", action="append", choices=list(ROLES), help="an extra role")
    create.add_argument("--tenant", required=True)
    create.add_argument("--actor", default="", help="who holds the key (default role@tenant)")
    create.add_argument("--label", default="")
    expiry = create.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", help="lifetime: 90s, 15m, 12h, 30d, 2w")
    expiry.add_argument("--expires", help="expiry time, ISO 8601 (UTC unless a zone is given)")

    listing = command("list", "list keys (never their secrets)", _list)
    listing.add_argument("--tenant", default=None, help="only this tenant's keys")
    listing.add_argument("--json", action="store_true", help="print JSON")

    revoke = command("revoke", "revoke a key now, in every process", _revoke)
    revoke.add_argument("key_id", metavar="KEY_ID")
    revoke.add_argument("--reason", default="", help="why (recorded in the ledger)")

    rotate = command("rotate", "replace a key (new key printed alone on the last line)", _rotate)
    rotate.add_argument("key_id", metavar="KEY_ID")
    rotate.add_argument(
        "--grace", default="0", help="how long the old key keeps working: seconds or 15m, 1h"
    )

    for parser in (create, revoke, rotate):
        parser.add_argument("--by", default="", help="who does this (default cli:<user>)")
