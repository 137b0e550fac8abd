"""Alembic migrations on SQLite and PostgreSQL: up, down, up again, our own version table, models == schema."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from portrait_pipeline.audit import db
from portrait_pipeline.audit.models import Base
from portrait_pipeline.errors import ConfigurationError, DatabaseNotMigrated

APP_TABLES = {
    "players",
    "player_image_snapshots",
    "player_image_assets",
    "player_likeness",
    "generation_leases",
    "batch_jobs",
}


def _tables(url: str) -> set[str]:
    return set(inspect(db.engine_for(url)).get_table_names())


def test_upgrade_creates_every_table_and_our_own_version_table(database_url: str) -> None:
    db.upgrade(database_url)
    tables = _tables(database_url)
    assert tables == APP_TABLES | {"portrait_alembic_version"}
    assert "alembic_version" not in tables
    assert set(Base.metadata.tables) == APP_TABLES


def test_upgrade_leaves_the_database_at_head(database_url: str) -> None:
    db.upgrade(database_url)
    engine = db.engine_for(database_url)
    assert db.current_revision(engine) == db.head_revision()
    db.check_migrated(engine)


def test_upgrade_twice_is_harmless(database_url: str) -> None:
    db.upgrade(database_url)
    db.upgrade(database_url)
    assert db.current_revision(db.engine_for(database_url)) == db.head_revision()


def test_downgrade_removes_every_app_table_and_upgrade_works_again(database_url: str) -> None:
    db.upgrade(database_url)
    db.downgrade(database_url)
    assert _tables(database_url) & APP_TABLES == set()
    assert db.current_revision(db.engine_for(database_url)) is None

    db.upgrade(database_url)
    assert _tables(database_url) >= APP_TABLES
    db.check_migrated(db.engine_for(database_url))


def test_check_migrated_tells_to_upgrade_an_empty_database(database_url: str) -> None:
    with pytest.raises(DatabaseNotMigrated) as caught:
        db.check_migrated(db.engine_for(database_url))
    message = str(caught.value)
    assert "is at revision none" in message
    assert db.head_revision() in message
    assert "run `portrait-pipeline db upgrade`" in message


def test_check_migrated_tells_to_upgrade_a_database_behind_head(database_url: str) -> None:
    db.upgrade(database_url, "b2c3d4e5f6a7")
    with pytest.raises(DatabaseNotMigrated, match=r"is at revision b2c3d4e5f6a7, not .*portrait-pipeline db upgrade"):
        db.check_migrated(db.engine_for(database_url))


def test_check_migrated_reports_an_unreachable_database_without_its_password() -> None:
    engine = db.engine_for("postgresql://portrait:s3cret@127.0.0.1:1/portraits")
    try:
        with pytest.raises(ConfigurationError, match="cannot open the database") as caught:
            db.check_migrated(engine)
        assert not isinstance(caught.value, DatabaseNotMigrated)
        assert "s3cret" not in str(caught.value)
    finally:
        engine.dispose()


def test_models_match_the_migrated_schema(database_url: str) -> None:
    db.upgrade(database_url)
    with db.engine_for(database_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": db.VERSION_TABLE})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []
