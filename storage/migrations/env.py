"""Alembic environment: runs Custody's migrations online against the configured URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

config = context.config
url: str = config.get_main_option("sqlalchemy.url") or ""
assert url, "sqlalchemy.url must be set by storage.db.alembic_config"


def run_migrations_online() -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # Two replicas starting at once must not both run the same migration.
            connection.execute(text("SELECT pg_advisory_lock(727274)"))
            connection.commit()
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_unlock(727274)"))
            connection.commit()
    engine.dispose()


run_migrations_online()
