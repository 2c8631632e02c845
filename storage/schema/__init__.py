"""The database's tables as SQLModel models; the migrations in ``storage/migrations`` build them."""

from __future__ import annotations

from sqlmodel import SQLModel

from storage.schema import reviews  # noqa: F401

metadata = SQLModel.metadata
