"""The audit database: typed models in `models`, engines and sessions here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from portrait_pipeline.errors import ConfigurationError, DatabaseNotMigrated

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATABASE_URL = f"sqlite:///{REPO_ROOT / '.portraits' / 'portraits.db'}"
# Our own Alembic version table, so the app can share a PostgreSQL database with Dagster's storage.
VERSION_TABLE = "portrait_alembic_version"
# Every PostgreSQL connection of the app waits at most this long for a lock and runs a statement at most this
# long, so a lock held elsewhere fails a run with a clear error instead of blocking it forever. They go first in
# libpq's `options`, so the URL's own `?options=-c lock_timeout=5s` (a later -c) overrides them.
# https://www.postgresql.org/docs/current/runtime-config-client.html (lock_timeout, statement_timeout)
POSTGRES_TIMEOUTS = {"lock_timeout": "30s", "statement_timeout": "300s"}


def normalize_url(url: str) -> str:
    """Accept `postgresql://` URLs as people write them, and drive them with psycopg 3."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"DATABASE_URL is not a database URL: {exc}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def engine_for(url: str) -> Engine:
    """One engine (and connection pool) per database per process, however its URL is spelled."""
    return _engine(normalize_url(url))


@cache
def _engine(normalized: str) -> Engine:
    if normalized.startswith("sqlite"):
        database = make_url(normalized).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(normalized, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        normalized,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        connect_args={"options": postgres_options(normalized)},
    )


def dialect_insert(engine: Engine) -> Callable[[Any], postgresql.Insert | sqlite.Insert]:
    """The INSERT construct with ON CONFLICT of the engine's database (PostgreSQL's or SQLite's): the atomic
    claims and reservations are single upserts on both."""
    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


def postgres_options(url: str) -> str:
    """libpq's startup `options`: our timeouts, then whatever the URL sets (which wins where both set one)."""
    ours = " ".join(f"-c {name}={value}" for name, value in POSTGRES_TIMEOUTS.items())
    theirs = make_url(url).query.get("options")
    return " ".join([ours, *([theirs] if isinstance(theirs, str) else theirs or ())])


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL lets the webserver read while a run writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def alembic_config(url: str) -> AlembicConfig:
    config = AlembicConfig(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "alembic"))
    config.attributes["database_url"] = normalize_url(url)
    return config


@cache  # the migration scripts on disk do not change while the process runs; reading them takes ~50 ms
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config(DEFAULT_DATABASE_URL)).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def where(engine: Engine) -> str:
    """The database's URL for messages: never its password."""
    return engine.url.render_as_string(hide_password=True)


# SQLSTATEs of the two timeouts set on every connection, and what to tell about them.
# The SQLSTATEs of the two timeouts: which setting ended the statement, and why it usually does.
_TIMEOUTS = {"55P03": ("lock_timeout", "another session holds the lock"), "57014": ("statement_timeout", "")}


def describe_error(exc: SQLAlchemyError) -> str:
    """The driver's reason on one line (libpq's are several), without SQLAlchemy's statement and links."""
    reason = exc.orig if isinstance(exc, DBAPIError) else exc
    text = f"{type(reason).__name__}: {' '.join(str(reason).split())}"
    timeout = _TIMEOUTS.get(str(getattr(reason, "sqlstate", "")))
    if timeout:
        name, why = timeout
        setting = f"{name} is {POSTGRES_TIMEOUTS[name]} unless DATABASE_URL sets ?options=-c {name}=..."
        text += f" ({why}; {setting})" if why else f" ({setting})"
    return text


def checked_revision(engine: Engine) -> str | None:
    """The current revision, or a one-line ConfigurationError when the database cannot be opened."""
    try:
        return current_revision(engine)
    except SQLAlchemyError as exc:
        raise ConfigurationError(
            f"cannot open the database {where(engine)}: {describe_error(exc)}; check DATABASE_URL and that the "
            "server is running"
        ) from None


def check_migrated(engine: Engine) -> None:
    """Fail with a fix-it message unless the database is at the newest migration."""
    current = checked_revision(engine)
    if current != head_revision():
        raise DatabaseNotMigrated(
            f"database {where(engine)} is at revision {current or 'none'}, "
            f"not {head_revision()}: run `portrait-pipeline db upgrade` (or `make migrate`)"
        )


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade_steps(url: str, revision: str = "base") -> list[str]:
    """The migrations a downgrade to `revision` would undo, newest first: `id (what it added)`."""
    current = checked_revision(engine_for(url))
    if current is None:
        return []
    scripts = ScriptDirectory.from_config(alembic_config(url))
    return [f"{step.revision} {step.doc}" for step in scripts.iterate_revisions(current, revision)]


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    session = _sessionmaker(engine)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@cache
def _sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)
