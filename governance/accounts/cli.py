"""``custody accounts create | list | disable | set-password``: people who use the console.

Passwords are read from a prompt (asked twice) or from ``--password-file`` (its first line), never
from the command line, where other users' ``ps`` and the shell history would see them. Each step
is a ledger event (``governance.accounts.store``); writers open the installation as
``custody keys`` does and append to the same ledger as a running gateway.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from governance.auth.cli import article
from governance.auth.principal import ROLES
from governance.settings import Settings

if TYPE_CHECKING:
    from governance.accounts.store import Accounts
    from governance.auth.lifecycle import Operator


class _NoPassword(Exception):
    pass


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _by(args: argparse.Namespace) -> Operator:
    from governance.auth.lifecycle import Operator

    return Operator(actor=args.by or f"cli:{getpass.getuser()}", via="cli")


def read_password(args: argparse.Namespace) -> str:
    """The new password: the first line of ``--password-file``, else asked twice on the tty."""
    if args.password_file:
        try:
            lines = Path(args.password_file).read_text().splitlines()
        except OSError as exc:
            raise _NoPassword(f"cannot read --password-file {args.password_file}: {exc}") from exc
        if not lines or not lines[0]:
            raise _NoPassword(f"--password-file {args.password_file} is empty")
        return lines[0]
    if not sys.stdin.isatty():
        raise _NoPassword(
            "no terminal to ask for the password on: give --password-file FILE (its first line)"
        )
    first = getpass.getpass("New password: ")
    if getpass.getpass("Repeat it: ") != first:
        raise _NoPassword("the two passwords differ; nothing was changed")
    return first


def _run(
    command: str, step: Callable[[Accounts, argparse.Namespace], int], args: argparse.Namespace
) -> int:
    from governance.accounts.store import AccountError, Accounts
    from governance.state import open_state, open_state_or_create

    settings = Settings()
    if command != "create":  # only creating may make an installation
        state = open_state(settings, create=False)
    else:
        state = open_state_or_create(
            settings,
            command=f"accounts {command}",
            warning="A gateway knows this account only if it uses the same data directory",
        )
    try:
        return step(Accounts(state.engine, state.ledger), args)
    except (AccountError, _NoPassword) as exc:
        print(f"custody accounts {command}: {exc}", file=sys.stderr)
        return 2
    finally:
        state.close()


def _create(accounts: Accounts, args: argparse.Namespace) -> int:
    roles = [args.role, *(args.also or [])]
    made = accounts.create(
        tenant=args.tenant,
        username=args.username,
        password=read_password(args),
        roles=roles,
        groups=[g.strip() for g in (args.groups or "").split(",") if g.strip()],
        display_name=args.display_name,
        by=_by(args),
    )
    print(
        f"Created {article(args.role)} account {made.username!r} for tenant {made.tenant!r}"
        f" (roles {', '.join(made.roles)}; groups {', '.join(made.groups) or 'none'})."
        f" Sign in at /console/sign-in."
    )
    return 0


def _list(accounts: Accounts, args: argparse.Namespace) -> int:
    listed = accounts.list_accounts(tenant=args.tenant)
    if args.json:
        print(json.dumps([a.to_json() for a in listed], indent=2))
        return 0
    if not listed:
        where = f" for tenant {args.tenant!r}" if args.tenant else ""
        print(f"No accounts{where}. Create one with `custody accounts create`.")
        return 0
    head = ("TENANT", "USERNAME", "NAME", "ROLES", "GROUPS", "STATE", "CREATED", "PASSWORD SET")
    rows = [
        (
            a.tenant,
            a.username,
            a.display_name,
            ",".join(a.roles),
            ",".join(a.groups) or "-",
            "disabled" if a.disabled else "active",
            _when(a.created_ms),
            _when(a.password_changed_ms or a.created_ms),
        )
        for a in listed
    ]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _disable(accounts: Accounts, args: argparse.Namespace) -> int:
    account = accounts.disable(args.tenant, args.username, by=_by(args), reason=args.reason)
    print(
        f"Disabled account {account.username!r} of {account.tenant!r}; its sessions are ended"
        " and it can no longer sign in."
    )
    return 0


def _set_password(accounts: Accounts, args: argparse.Namespace) -> int:
    accounts.require(args.tenant, args.username)  # before asking for a password
    account = accounts.set_password(args.tenant, args.username, read_password(args), by=_by(args))
    print(
        f"Changed the password of {account.username!r} of {account.tenant!r}; its sessions are"
        " ended."
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``custody accounts`` and its subcommands."""
    accounts = sub.add_parser("accounts", help="manage console accounts (people)").add_subparsers(
        dest="accounts", required=True
    )

    def command(
        name: str, help_: str, step: Callable[[Accounts, argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = accounts.add_parser(name, help=help_)
        parser.set_defaults(func=lambda args: _run(name, step, args))
        return parser

    create = command(
        "create", "create a console account (password asked, or --password-file)", _create
    )
    create.add_argument("--tenant", required=True)
    create.add_argument("--username", required=True)
    create.add_argument("--role", required=True, choices=list(ROLES))
    create.add_argument("--also", action="append", choices=list(ROLES), help="an extra role")
    create.add_argument("--groups", default="", help="reviewer groups, comma-separated")
    create.add_argument("--display-name", default="", help="the name pages show (default username)")

    listing = command("list", "list accounts (never their password hashes)", _list)
    listing.add_argument("--tenant", default=None, help="only this tenant's accounts")
    listing.add_argument("--json", action="store_true", help="print JSON")

    disable = command("disable", "disable an account now and end its sessions", _disable)
    disable.add_argument("--reason", default="", help="why (recorded in the ledger)")

    set_password = command(
        "set-password",
        "set a new password (asked, or --password-file); ends its sessions",
        _set_password,
    )

    for parser in (disable, set_password):
        parser.add_argument("--tenant", required=True)
        parser.add_argument("--username", required=True)
    for parser in (create, set_password):
        parser.add_argument("--password-file", default=None, help="read the password from FILE")
    for parser in (create, disable, set_password):
        parser.add_argument("--by", default="", help="who does this (default cli:<user>)")
