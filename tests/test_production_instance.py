"""The production instance (top-level dagster.yaml) on the real PostgreSQL: webserver + daemon, queued run."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from portrait_pipeline.audit import db
from portrait_pipeline.audit.models import PlayerImageAsset, PlayerImageSnapshot
from tests.dagster_dev import (
    REPO_ROOT,
    DagsterProcess,
    Webserver,
    demo_players_of,
    free_port,
    multipartition_tags,
    prepare_app_database,
    project_env,
    started,
    wait_until,
)

pytestmark = pytest.mark.slow

DAGSTER_SCHEMA = "dagster"  # dagster.yaml puts only this schema on Dagster's search_path
# A few of Dagster's tables, one per storage: runs, event log, schedules, pools.
DAGSTER_TABLES = {"runs", "event_logs", "jobs", "job_ticks", "concurrency_limits", "alembic_version"}


@dataclass(frozen=True)
class SharedDatabase:
    """A fresh PostgreSQL database shared the production way: app in `public`, Dagster in `dagster`."""

    name: str
    server_url: str

    @property
    def url(self) -> str:
        return make_url(self.server_url).set(database=self.name).render_as_string(hide_password=False)

    def dagster_settings(self) -> dict[str, str]:
        """The DAGSTER_PG_* variables dagster.yaml reads."""
        server = make_url(self.server_url)
        return {
            "DAGSTER_PG_USERNAME": server.username or "postgres",
            "DAGSTER_PG_PASSWORD": server.password or "",
            "DAGSTER_PG_HOST": server.host or "127.0.0.1",
            "DAGSTER_PG_PORT": str(server.port or 5432),
            "DAGSTER_PG_DB": self.name,
        }

    def tables(self) -> dict[str, set[str]]:
        with psycopg.connect(self.url) as connection:
            rows = connection.execute(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema IN ('public', %s)",
                (DAGSTER_SCHEMA,),
            ).fetchall()
        tables: dict[str, set[str]] = {"public": set(), DAGSTER_SCHEMA: set()}
        for schema, table in rows:
            tables[schema].add(table)
        return tables

    def app_revision(self) -> str | None:
        with psycopg.connect(self.url) as connection:
            row = connection.execute(f"SELECT version_num FROM public.{db.VERSION_TABLE}").fetchone()
        return row[0] if row else None


@pytest.fixture
def shared_database(postgres_url: str) -> Iterator[SharedDatabase]:
    """CREATE DATABASE plus the `dagster` schema for this test; dropped (connections and all) afterwards."""
    database = SharedDatabase(name=f"portrait_prod_{uuid.uuid4().hex[:12]}", server_url=postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{database.name}"')
    try:
        with psycopg.connect(database.url, autocommit=True) as connection:
            connection.execute(f'CREATE SCHEMA "{DAGSTER_SCHEMA}"')
        yield database
    finally:
        db.engine_for(database.url).dispose()
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')


def test_queued_run_on_the_postgres_instance_writes_images_and_audit_rows(
    tmp_path: Path, shared_database: SharedDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    images = tmp_path / "images"
    env = project_env(
        DAGSTER_HOME=str(home),
        DATABASE_URL=shared_database.url,
        IMAGE_LOCAL_DIR=str(images),
        PORTRAIT_RENDERER="offline",
        **shared_database.dagster_settings(),
    )
    prepare_app_database(env)
    revision = shared_database.app_revision()
    assert revision == db.head_revision()

    port = free_port()
    web = Webserver(port)
    with (
        started("dagster-daemon", ["dagster-daemon", "run", "-w", "workspace.yaml"], env, tmp_path) as daemon,
        started(
            "dagster-webserver",
            ["dagster-webserver", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
            env,
            tmp_path,
        ) as webserver,
    ):
        processes: list[DagsterProcess] = [daemon, webserver]
        wait_until("the code location to load", web.location_loaded, 90, processes)
        run = web.launch_asset_run("player_portraits", multipartition_tags("2025", "default"))
        assert run["status"] == "QUEUED", "submitted runs must wait in the queue for the daemon"
        status = web.wait_for_run(run["runId"], 120, processes)
        assert status == "SUCCESS", f"run {run['runId']} ended {status}\n{daemon.log_tail()}\n{webserver.log_tail()}"
    assert not daemon.leftovers() + webserver.leftovers(), "stopping left Dagster processes behind"

    for key, value in shared_database.dagster_settings().items():
        monkeypatch.setenv(key, value)
    assert_went_through_the_queue(home, run["runId"], daemon)
    assert_images_and_audit_rows(shared_database, images, run["runId"])
    assert_dagster_kept_to_its_schema(shared_database)
    assert shared_database.app_revision() == revision


def assert_went_through_the_queue(home: Path, run_id: str, daemon: DagsterProcess) -> None:
    """Enqueued by the webserver, launched by the daemon, holding a slot of the `gemini` pool."""
    daemon_lines = daemon.log_tail(lines=1000).splitlines()
    assert any("QueuedRunCoordinatorDaemon" in line and "Launched 1 runs" in line for line in daemon_lines)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        dagster_run = instance.get_run_by_id(run_id)
        assert dagster_run is not None and dagster_run.tags["dagster/partition"] == "2025|default"
        events = [record.event_log_entry.dagster_event_type for record in instance.get_records_for_run(run_id).records]
        queued, starting = dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING
        assert queued in events and starting in events and events.index(queued) < events.index(starting)
        # No limit of its own: the pool took dagster.yaml's default, two Gemini partitions at once.
        assert instance.event_log_storage.get_concurrency_info("gemini").slot_count == 2


def assert_images_and_audit_rows(database: SharedDatabase, images: Path, run_id: str) -> None:
    players = demo_players_of("2025")
    assert len(list((images / "players").glob("*_default.png"))) == players
    with db.session_scope(db.engine_for(database.url)) as session:
        snapshot = session.scalars(
            select(PlayerImageSnapshot).where(PlayerImageSnapshot.dagster_run_id == run_id)
        ).one()
        assert (snapshot.draft_year, snapshot.style, snapshot.success_count) == (2025, "default", players)
        statuses = session.scalars(select(PlayerImageAsset.status).where(PlayerImageAsset.snapshot_id == snapshot.id))
        assert list(statuses) == ["succeeded"] * players


def assert_dagster_kept_to_its_schema(database: SharedDatabase) -> None:
    tables = database.tables()
    assert tables[DAGSTER_SCHEMA] >= DAGSTER_TABLES
    assert not tables["public"] & DAGSTER_TABLES, "Dagster wrote outside its schema"
    assert {db.VERSION_TABLE, "players"} <= tables["public"]
    assert not tables[DAGSTER_SCHEMA] & {db.VERSION_TABLE, "players"}
