"""The models in ``storage/schema`` describe exactly the database the migrations build.

On SQLite and PostgreSQL: a fresh database migrated to head shows no difference from
``storage.schema.metadata`` (what ``custody db revision --autogenerate`` would write is nothing),
and its primary keys, which Alembic does not compare, are the models'. A drift made on purpose
is seen, so the empty comparison means something. And the autogenerate path works end to end: a
model change becomes a numbered migration that brings a database to the models.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    Table,
    create_engine,
    inspect,
    text,
)
from sqlmodel.sql.sqltypes import AutoString

from governance.cli import main
from storage.db import (
    MIGRATIONS_DIR,
    alembic_config,
    migrate,
    new_revision,
    newest_revision,
    normalise_url,
)
from storage.schema import metadata


def _differences(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_server_default": True})
    return compare_metadata(context, metadata)


def _engine(url: str) -> Engine:
    return create_engine(normalise_url(url))


def test_models_match_the_migrated_database(db_url: str) -> None:
    migrate(db_url)
    engine = _engine(db_url)
    try:
        with engine.connect() as conn:
            assert _differences(conn) == []
            inspector = inspect(conn)
            for table in metadata.sorted_tables:
                reflected = inspector.get_pk_constraint(table.name)["constrained_columns"]
                assert reflected == [c.name for c in table.primary_key], table.name
    finally:
        engine.dispose()


def test_migrate_skips_alembic_only_for_a_database_at_alembics_head(db_url: str) -> None:
    """``migrate`` leaves a database recording the newest revision alone without loading
    Alembic; that revision, read from the files, is Alembic's head, and a database one revision
    behind is still upgraded to it."""
    import subprocess
    import sys

    cfg = alembic_config(db_url)
    scripts = ScriptDirectory.from_config(cfg)
    head = scripts.get_current_head()
    assert head is not None and newest_revision() == head
    previous = scripts.get_revision(head).down_revision
    assert isinstance(previous, str)
    command.upgrade(cfg, previous)
    migrate(db_url)
    engine = _engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [(head,)]
            assert _differences(conn) == []
    finally:
        engine.dispose()
    code = (
        f"import sys; from storage.db import migrate; migrate({db_url!r});"
        " print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_the_comparison_sees_a_drift(db_url: str) -> None:
    migrate(db_url)
    engine = _engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_turn_images_signed"))
            conn.execute(text("ALTER TABLE turns ADD COLUMN stray INTEGER"))
        with engine.connect() as conn:
            found = _differences(conn)
    finally:
        engine.dispose()
    kinds = {(d[0], d[1].name if d[0] == "add_index" else d[3].name) for d in found}
    assert kinds == {("add_index", "ix_turn_images_signed"), ("remove_column", "stray")}


def _next_number() -> int:
    names = [p.name for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*_*.py")]
    return max(int(n.split("_", 1)[0]) for n in names) + 1


def test_autogenerate_writes_the_migration_of_a_model_change(db_url: str, tmp_path: Path) -> None:
    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = alembic_config(db_url)
    cfg.set_main_option("script_location", str(scripts))
    command.upgrade(cfg, "head")
    assert new_revision(cfg, "nothing changed", autogenerate=True) is None

    scratch = Table(
        "scratch_notes",
        metadata,
        Column("note_id", AutoString(40), primary_key=True),
        Column("body", AutoString(200), nullable=False),
        Column("created_ms", BigInteger, nullable=False),
        Index("ix_scratch_notes_created", "created_ms"),
    )
    try:
        written = new_revision(cfg, "Scratch notes!", autogenerate=True)
        assert written is not None
        assert written.name == f"{_next_number():04d}_scratch_notes.py"
        source = written.read_text()
        assert re.search(r"op\.create_table\(\s*['\"]scratch_notes['\"]", source), source
        assert "sa.String(200)" in source and "sqlmodel" not in source
        command.upgrade(cfg, "head")
        engine = _engine(db_url)
        try:
            with engine.connect() as conn:
                assert _differences(conn) == []
        finally:
            engine.dispose()
    finally:
        metadata.remove(scratch)


def test_cli_writes_nothing_when_the_models_match(capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted((MIGRATIONS_DIR / "versions").glob("*.py"))
    assert main(["db", "revision", "-m", "check", "--autogenerate"]) == 0
    assert "no migration written" in capsys.readouterr().out
    assert sorted((MIGRATIONS_DIR / "versions").glob("*.py")) == before


def test_cli_diffs_against_a_given_database_only_at_head(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["db", "revision", "-m", "x", "--autogenerate", "--database-url", db_url]
    assert main(argv) == 2
    assert "not up to date" in capsys.readouterr().err
    migrate(db_url)
    assert main(argv) == 0
    assert "no migration written" in capsys.readouterr().out


def test_sqlite_migrates_in_one_transaction_and_processes_racing_on_one_file_all_succeed(
    tmp_path: Path,
) -> None:
    """The upgrade of a fresh SQLite file is one transaction (one commit, where each DDL
    statement used to commit and fsync on its own), and four processes migrating the same new
    file at once all succeed: the first takes the write lock, the others then find it at head."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'custody.db'}"
    code = f"from storage.db import migrate; migrate({url!r})"
    racers = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(4)]
    assert [p.wait(timeout=120) for p in racers] == [0, 0, 0, 0]
    with _engine(url).connect() as conn:
        assert not _differences(conn)

    commits: list[str] = []
    fresh = f"sqlite:///{tmp_path / 'counted.db'}"
    import sqlite3
    import sqlite3.dbapi2  # what SQLAlchemy's pysqlite dialect connects through

    real_connect = sqlite3.dbapi2.connect

    def counting_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(
            lambda sql: commits.append(sql) if sql.strip().upper().startswith("COMMIT") else None
        )
        return conn

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sqlite3.dbapi2, "connect", counting_connect)
        migrate(fresh)
    assert len(commits) == 1, commits
