"""``custody db revision -m "..." [--autogenerate]``: write the next schema migration.

The models in ``storage/schema`` are the one description of the database; a schema change edits
them, then this command writes the migration that brings a database from the current head to
them. By default it diffs against a scratch SQLite database migrated to head in a temporary
directory, so it needs no installation and touches none; ``--database-url`` diffs against another
database instead (which must be at head, e.g. a PostgreSQL one, for a change only it shows).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def _revision(args: argparse.Namespace) -> int:
    from alembic.util import CommandError

    from storage.db import alembic_config, migrate, new_revision

    try:
        with tempfile.TemporaryDirectory(prefix="custody-revision-") as scratch:
            url = args.database_url
            if url is None:
                url = f"sqlite:///{Path(scratch) / 'head.db'}"
                if args.autogenerate:
                    migrate(url)
            written = new_revision(
                alembic_config(url), args.message, autogenerate=args.autogenerate
            )
    except (CommandError, ValueError) as exc:
        print(f"custody db revision: {exc}", file=sys.stderr)
        return 2
    if written is None:
        print("The models match the migrations: no migration written.")
        return 0
    print(f"Wrote {written}: review it (and add what autogenerate cannot see) before committing.")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``custody db revision``."""
    db = sub.add_parser("db", help="the database schema (migrations)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    revision = db_sub.add_parser(
        "revision", help="write the next migration (from the models with --autogenerate)"
    )
    revision.add_argument("-m", "--message", required=True, help="what the migration does")
    revision.add_argument(
        "--autogenerate",
        action="store_true",
        help="fill it with the difference between storage/schema and the migrations' head",
    )
    revision.add_argument(
        "--database-url",
        default=None,
        help="diff against this database (at head) instead of a scratch SQLite one",
    )
    revision.set_defaults(func=_revision)
