"""Database engines for SQLite (embedded default) and PostgreSQL, and schema migration with Alembic.

The migrations build the database; ``storage.schema`` describes what they build, and
``new_revision`` writes the next migration from the difference (docs/operations.md, "Changing the
schema").

SQLite runs in WAL mode with ``synchronous=FULL`` so an acknowledged commit survives power loss;
writers take the lock up front (``BEGIN IMMEDIATE``) so a read-then-append cannot interleave.
The SQLite file is created 0600 (its directory 0700) before the first connection: it holds the
ledger, key hashes and the turn index. SQLite gives its ``-wal`` and ``-shm`` files the database
file's mode.
"""

from __future__ import annotations

import re
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.pool import NullPool

from storage.private_files import create_private_file, tighten

if TYPE_CHECKING:  # alembic is imported where a migration or a revision is made: every
    # ``custody`` command migrates, and a database already at head needs none of it (~0.1 s)
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def is_sqlite(url: str) -> bool:
    """True when ``url`` names a SQLite database."""
    return url.startswith("sqlite")


def normalise_url(url: str) -> str:
    """Map ``postgresql://`` and ``postgres://`` onto the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite ``url``; None for an in-memory database or another dialect."""
    if not is_sqlite(url):
        return None
    path = url.split("///", 1)[-1].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def create_private_sqlite(url: str) -> None:
    """Make the SQLite file of ``url`` (mode 0600, directory 0700) before anything connects;
    an existing file and its WAL/SHM files lose group and other permissions."""
    path = sqlite_path(normalise_url(url))
    if path is None:
        return
    create_private_file(path)
    for suffix in ("-wal", "-shm", "-journal"):
        tighten(path.with_name(path.name + suffix))


def _configure_sqlite(engine: Engine, *, immediate: bool, flush_on_commit: bool) -> None:
    synchronous = "FULL" if flush_on_commit else "NORMAL"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's own BEGIN handling step aside: we issue BEGIN IMMEDIATE ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(
    url: str, *, pool_size: int = 10, immediate: bool = True, flush_on_commit: bool = True
) -> Engine:
    """An engine for ``url`` with Custody's durability settings applied.

    On SQLite every transaction of an ``immediate`` engine takes the write lock at BEGIN; pass
    ``immediate=False`` for an engine that only reads. ``flush_on_commit=False`` (SQLite only:
    ``synchronous=NORMAL``) lets a commit return before the WAL is fsynced; the next commit of a
    ``flush_on_commit`` engine on the file fsyncs the WAL and with it every commit before it.
    Only for rows whose writer always makes such a commit next (``storage.rate_counters``).
    """
    url = normalise_url(url)
    if is_sqlite(url):
        create_private_sqlite(url)
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=2 * pool_size,
            connect_args={"check_same_thread": False},
        )
        _configure_sqlite(engine, immediate=immediate, flush_on_commit=flush_on_commit)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def alembic_config(url: str) -> Config:
    """An Alembic configuration pointing at Custody's migrations and ``url``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    cfg.set_main_option("file_template", "%%(rev)s")  # versions/0006_reviews.py, as by hand
    return cfg


_REVISION = re.compile(r"""^revision\s*(?::[^=]*)?=\s*['"]([^'"]+)['"]\s*$""", re.M)
_DOWN_REVISION = re.compile(
    r"""^down_revision\s*(?::[^=]*)?=\s*(?:None|['"]([^'"]+)['"])\s*$""", re.M
)


def newest_revision() -> str | None:
    """The head of ``MIGRATIONS_DIR``, read from the files without Alembic: the one revision no
    other names as its ``down_revision``. None when the files are not that plain chain (two
    heads, a parent that is not there, a revision written otherwise): Alembic decides then."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        revision, down = _REVISION.search(source), _DOWN_REVISION.search(source)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        if down.group(1):
            parents.add(down.group(1))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 and parents <= revisions else None


def _at_head(url: str) -> bool:
    """True when the database at ``url`` records exactly the newest revision, where Alembic's
    upgrade would find nothing to do. Any doubt (no version table yet, a lock, a connection
    error) is False: Alembic's upgrade then runs, and raises what it raises."""
    head = newest_revision()
    if head is None:
        return False
    try:
        engine = create_engine(normalise_url(url), poolclass=NullPool)
        try:
            with engine.connect() as conn:
                recorded = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        finally:
            engine.dispose()
    except Exception:
        return False
    return [str(row[0]) for row in recorded] == [head]


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (idempotent, safe across replicas).

    A database that already records the newest revision is left as it is without loading
    Alembic (what its upgrade would do there); any other goes through Alembic's upgrade."""
    create_private_sqlite(url)
    if _at_head(url):
        return
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def next_revision_id(cfg: Config, message: str) -> str:
    """``NNNN_slug``: one more than the highest numbered revision, and the message in
    lower-case words (the form of every migration so far)."""
    from alembic.script import ScriptDirectory

    numbers = [
        int(m.group(1))
        for script in ScriptDirectory.from_config(cfg).walk_revisions()
        if (m := re.match(r"(\d+)_", script.revision))
    ]
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40].rstrip("_")
    if not slug:
        raise ValueError("a revision message needs at least one letter or digit")
    return f"{max(numbers, default=0) + 1:04d}_{slug}"


def _drop_if_empty(_context: MigrationContext, _rev: Any, directives: list[Any]) -> None:
    # An autogenerate run that finds the models equal to the database writes no file.
    from alembic.operations.ops import MigrationScript

    script = directives[0]
    if isinstance(script, MigrationScript) and all(
        ops.is_empty() for ops in script.upgrade_ops_list
    ):
        directives[:] = []


def new_revision(cfg: Config, message: str, *, autogenerate: bool) -> Path | None:
    """Write the next migration into the versions directory; its path.

    With ``autogenerate`` the body is the difference between ``storage.schema.metadata`` and the
    database of ``cfg`` (which must be at head); None when there is none, and no file is
    written. Without it, an empty migration to write by hand. Where ruff is installed (the
    ``test`` extra), the file is written in the repository's format.
    """
    from alembic import command

    if find_spec("ruff") is not None:
        cfg.set_section_option("post_write_hooks", "hooks", "ruff")
        cfg.set_section_option("post_write_hooks", "ruff.type", "module")
        cfg.set_section_option("post_write_hooks", "ruff.module", "ruff")
        cfg.set_section_option(
            "post_write_hooks", "ruff.options", "format REVISION_SCRIPT_FILENAME"
        )
    script = command.revision(
        cfg,
        message=message,
        autogenerate=autogenerate,
        rev_id=next_revision_id(cfg, message),
        process_revision_directives=_drop_if_empty if autogenerate else None,
    )
    if not script:
        return None
    assert not isinstance(script, list), "Custody's migrations have one head"
    return Path(script.path)
