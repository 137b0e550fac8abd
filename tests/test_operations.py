"""What an operator meets: database timeouts, an unreachable server, a downgrade that drops everything.

The `portrait-pipeline` console script runs as a subprocess against a temp database and instance.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from portrait_pipeline.audit import db
from portrait_pipeline.audit.models import Base
from portrait_pipeline.roster import import_roster, read_roster

CLI = str(Path(sys.executable).with_name("portrait-pipeline"))
APP_TABLES = set(Base.metadata.tables)
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    base = {key: value for key, value in os.environ.items() if not key.startswith(("GEMINI_", "S3_", "DAGSTER_"))}
    base.update(DAGSTER_HOME=str(tmp_path / "dagster_home"), IMAGE_LOCAL_DIR=str(tmp_path / "images"))

    def run(*args: str, database_url: str, stdin: int | None = None) -> subprocess.CompletedProcess[str]:
        env = {**base, "DATABASE_URL": database_url}
        return subprocess.run([CLI, *args], env=env, stdin=stdin, capture_output=True, text=True, timeout=60)

    return run


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The CLI's own error lines; anything else on stderr would be a traceback or noise."""
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("portrait-pipeline:")]


def test_db_upgrade_against_an_unreachable_server_is_one_line_and_exit_2(run: Run) -> None:
    result = run("db", "upgrade", database_url="postgresql://postgres:Unseen-pw@127.0.0.1:1/test")
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result)
    assert "cannot open the database postgresql+psycopg://postgres:***@127.0.0.1:1/test" in line
    assert "Connection refused" in line and "check DATABASE_URL and that the server is running" in line
    assert len(result.stderr.strip().splitlines()) <= 2  # the line, and at most Dagster's no-dagster.yaml notice
    assert "Unseen-pw" not in result.stdout + result.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the confirmation is the same on both
def test_db_downgrade_asks_first_and_drops_nothing_without_yes(run: Run, database_url: str) -> None:
    db.upgrade(database_url)

    refused = run("db", "downgrade", database_url=database_url, stdin=subprocess.DEVNULL)
    assert refused.returncode == 2
    [line] = error_lines(refused)
    migrations = len(list(ScriptDirectory.from_config(db.alembic_config(database_url)).walk_revisions()))
    assert f"db downgrade to base would undo {migrations} migration(s)" in line and "every table of the app" in line
    assert "0001_players players table" in line and "Run again with --yes" in line
    assert set(inspect(db.engine_for(database_url)).get_table_names()) >= APP_TABLES

    # At a terminal it asks; anything but "yes" keeps the tables.
    primary, secondary = pty.openpty()
    os.write(primary, b"no\n")
    declined = run("db", "downgrade", database_url=database_url, stdin=secondary)
    for descriptor in (primary, secondary):
        os.close(descriptor)
    assert declined.returncode == 2
    assert "Type yes to drop them" in declined.stdout
    assert error_lines(declined) == ["portrait-pipeline: error: db downgrade not confirmed: nothing was dropped"]
    assert set(inspect(db.engine_for(database_url)).get_table_names()) >= APP_TABLES

    confirmed = run("db", "downgrade", "--yes", database_url=database_url, stdin=subprocess.DEVNULL)
    assert confirmed.returncode == 0, confirmed.stderr
    assert "database at revision none" in confirmed.stdout
    assert set(inspect(db.engine_for(database_url)).get_table_names()) & APP_TABLES == set()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite has no row locks
def test_a_row_lock_held_elsewhere_fails_the_command_within_the_lock_timeout(
    run: Run, database_url: str, demo_roster: Path, tmp_path: Path
) -> None:
    db.upgrade(database_url)
    with db.session_scope(db.engine_for(database_url)) as session:
        import_roster(session, read_roster(demo_roster))
        # Every app connection carries the timeouts, whatever else the URL's options set (here search_path).
        assert session.execute(text("SHOW lock_timeout")).scalar() == "30s"
        assert session.execute(text("SHOW statement_timeout")).scalar() == "5min"

    roster = tmp_path / "roster.csv"
    roster.write_text("name,draft_year,position,school\nMarcus Okafor,2025,PF,Kentucky\n", encoding="utf-8")
    url = make_url(database_url)
    quick = url.update_query_dict({"options": f"{url.query['options']} -c lock_timeout=1s"})
    with psycopg.connect(database_url) as holder:  # a transaction elsewhere holding Marcus Okafor's row
        holder.execute("SELECT id FROM players WHERE slug = 'marcus-okafor' FOR UPDATE")
        started = time.monotonic()
        result = run("players", "import", str(roster), database_url=quick.render_as_string(hide_password=False))
        elapsed = time.monotonic() - started
        holder.rollback()

    assert result.returncode == 1, result.stdout + result.stderr
    [line] = error_lines(result)
    assert "database error: LockNotAvailable: canceling statement due to lock timeout" in line
    assert "another session holds the lock; lock_timeout is 30s unless DATABASE_URL sets" in line
    assert elapsed < 15  # 1 s of waiting plus the CLI's start-up, not for ever
    with db.session_scope(db.engine_for(database_url)) as session:  # nothing was changed
        assert session.execute(text("SELECT school FROM players WHERE slug = 'marcus-okafor'")).scalar() == "Duke"
