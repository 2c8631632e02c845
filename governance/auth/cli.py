"""``custody keys …``: create API keys."""

from __future__ import annotations

import argparse
import sys

from governance.auth.principal import ROLES
from governance.settings import Settings


def _create(args: argparse.Namespace) -> int:
    from governance.auth.keys import KeyError_, create_key
    from governance.state import open_engine

    engine = open_engine(Settings(), create=True)
    try:
        key = create_key(
            engine,
            tenant=args.tenant,
            actor=args.actor or f"{args.role}@{args.tenant}",
            roles=[args.role, *(args.also or [])],
            label=args.label,
        )
    except KeyError_ as exc:
        print(f"custody keys create: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"Created a {args.role} key for tenant {args.tenant!r}. It is shown once; keep it safe:")
    print(key)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``custody keys`` and its subcommands."""
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys", required=True)
    create = keys.add_parser("create", help="create an API key (printed alone on the last line)")
    create.add_argument("--role", required=True, choices=list(ROLES))
    create.add_argument("--also", action="append", help="an extra role (repeatable)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--actor", default="", help="who holds the key (default role@tenant)")
    create.add_argument("--label", default="")
    create.set_defaults(func=_create)
