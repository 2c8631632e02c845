"""SQLModel models of Custody's tables: one schema source, created by the Alembic migrations."""

from sqlmodel import SQLModel

metadata = SQLModel.metadata

from storage.schema import accounts  # noqa: E402, F401
