"""The whole database in one ``MetaData``: every table the migrations create, as code.

The migrations (``storage/migrations/versions``) build the database; these definitions must
describe exactly what they build (``tests/test_schema_matches_migrations.py`` compares the two on
SQLite and PostgreSQL), and Alembic's autogenerate diffs against ``metadata`` to write the next
migration (docs/operations.md, "Changing the schema"). They never create tables themselves.

One import line per module (``import m as m``: re-exported, and each stays on its own line):
importing a module registers its tables on ``SQLModel.metadata``.
"""

from __future__ import annotations

from sqlmodel import SQLModel

from storage.schema import accounts as accounts
from storage.schema import blobs as blobs
from storage.schema import coordination as coordination
from storage.schema import fingerprints as fingerprints
from storage.schema import keys as keys
from storage.schema import ledger as ledger
from storage.schema import reviews as reviews
from storage.schema import sessions as sessions
from storage.schema import turns as turns
from storage.schema import witness as witness

metadata = SQLModel.metadata
