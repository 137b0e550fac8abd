"""Alembic migrations on SQLite and PostgreSQL: up, down, up again, our own version table, models == schema."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

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
    "call_pacing",
    "image_quality_scores",
    "prompt_experiments",
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


def _asset_columns(url: str) -> set[str]:
    return {column["name"] for column in inspect(db.engine_for(url)).get_columns("player_image_assets")}


def test_review_state_migration_approves_existing_images_and_downgrades_keeping_rows(database_url: str) -> None:
    db.upgrade(database_url, "d4e5f6a7b8c9")
    engine = db.engine_for(database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO players (id, slug, display_name, first_name, last_name, nba_active, created_at,"
                " updated_at) VALUES (1, 'a-b', 'A B', 'A', 'B', false, :now, :now)"
            ),
            {"now": "2026-01-01 00:00:00"},
        )
        connection.execute(
            text(
                "INSERT INTO player_image_snapshots (id, run_key, version, is_current, style, cohort, population_size,"
                " success_count, failure_count, skipped_count, system_prompt, system_prompt_version, image_size, model,"
                " estimated_cost_usd, status, created_at)"
                " VALUES (:id, 'k', :id, false, 'default', 'c', 1, 1, 0, 0, 's', 'v', '1K', 'm', 0, 'succeeded', :now)"
            ),
            [{"id": snapshot, "now": "2026-01-01 00:00:00"} for snapshot in (1, 2, 3)],
        )
        connection.execute(
            text(
                "INSERT INTO player_image_assets (id, snapshot_id, player_id, style, status, is_current,"
                " used_likeness_ref, model, system_prompt_version, cost_usd, created_at)"
                " VALUES (1, 1, 1, 'default', 'succeeded', true, false, 'm', 'v', 0, :now)"
            ),
            {"now": "2026-01-01 00:00:00"},
        )
    db.upgrade(database_url)
    review_columns = {"review_status", "reviewed_by", "reviewed_at", "review_reason", "guidance", "replaces_asset_id"}
    assert _asset_columns(database_url) >= review_columns
    with engine.connect() as connection:
        assert connection.execute(text("SELECT review_status FROM player_image_assets")).scalar_one() == "approved"

    db.downgrade(database_url, "d4e5f6a7b8c9")
    assert _asset_columns(database_url) & review_columns == set()
    with engine.begin() as connection:
        assert connection.execute(text("SELECT count(*) FROM player_image_assets")).scalar_one() == 1
        # The rebuilt table (SQLite batch mode) keeps "one current image per player and style": a second current
        # row is refused, a second non-current one is not.
        insert = (
            "INSERT INTO player_image_assets (id, snapshot_id, player_id, style, status, is_current, used_likeness_ref,"
            " model, system_prompt_version, cost_usd, created_at)"
            " VALUES (:id, :id, 1, 'default', 'succeeded', :current, false, 'm', 'v', 0, '2026-01-01 00:00:00')"
        )
        connection.execute(text(insert), {"id": 2, "current": False})
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(text(insert), {"id": 3, "current": True})
