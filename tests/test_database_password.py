"""The DATABASE_URL password never reaches Dagster's storage, its UI or the CLI's output.

Dagster stores a resource's configured values in the job snapshot (a zlib-compressed blob in the run storage)
and shows them on the resource page and the launchpad; a plain string setting would put the password there.
A known password is embedded in a PostgreSQL URL (the test server's trust authentication ignores it), runs go
through the CLI and through `dagster asset materialize` on the definitions, and everything they left behind
is searched for it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_representation.external_data import RepositorySnap, ResourceConfigEnvVarSnap
from sqlalchemy.engine import make_url

from portrait_pipeline.audit.db import engine_for, session_scope, upgrade
from portrait_pipeline.roster import import_roster, read_roster

BIN = Path(sys.executable).parent
DEFINITIONS = "portrait_pipeline.defs.definitions"
# What the webserver gets from the code location for the resource page and the launchpad.
SHOWN = f"""
import dagster as dg
from dagster._core.remote_representation.external_data import RepositorySnap
from {DEFINITIONS} import defs
print(dg.serialize_value(RepositorySnap.from_def(defs.get_repository_def())))
"""


def unzipped(data: bytes) -> bytes:
    """Dagster's compressed snapshot blobs, opened; other bytes as they are."""
    try:
        return zlib.decompress(data)
    except zlib.error:
        return data


def stored_texts(home: Path) -> Iterator[bytes]:
    """Every file under DAGSTER_HOME as bytes, and every cell of every SQLite table, decompressed where zlib."""
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        data = path.read_bytes()
        yield data
        if not data.startswith(b"SQLite format 3\x00"):
            continue
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for row in connection.execute(f'SELECT * FROM "{table}"'):
                    for cell in row:
                        if isinstance(cell, bytes):
                            yield cell
                            yield unzipped(cell)
                        elif isinstance(cell, str):
                            yield cell.encode()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # a password needs a server
def test_the_database_password_is_never_stored_nor_shown(database_url: str, demo_roster: Path, tmp_path: Path) -> None:
    password = f"Kn0wn-{secrets.token_hex(8)}"
    url = make_url(database_url).set(password=password).render_as_string(hide_password=False)
    upgrade(url)
    with session_scope(engine_for(url)) as db:
        import_roster(db, read_roster(demo_roster))
    home = tmp_path / "dagster_home"
    base = {key: value for key, value in os.environ.items() if not key.startswith(("GEMINI_", "S3_", "DAGSTER_"))}
    env = {
        **base,
        "DATABASE_URL": url,
        "DAGSTER_HOME": str(home),
        "IMAGE_LOCAL_DIR": str(tmp_path / "images"),
        "PORTRAIT_RENDERER": "offline",
        "CURRENT_DRAFT_YEAR": "2025",
    }

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    generated = run(str(BIN / "portrait-pipeline"), "generate", "--draft-year", "2025", "--limit", "2")
    materialized = run(
        *(str(BIN / "dagster"), "asset", "materialize", "-m", DEFINITIONS),
        *("--select", "player_portraits", "--partition", "2025|vector", "--config-json"),
        # In process: the multiprocess executor's step process would add 20 s and no new place to look.
        '{"execution": {"config": {"in_process": {}}}, "ops": {"player_portraits": {"config": {"player_ids": [1]}}}}',
    )
    shown = run(sys.executable, "-c", SHOWN)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 2 and all(done.status == dg.DagsterRunStatus.SUCCESS for done in runs)
        logs = [dg.serialize_value(entry) for done in runs for entry in instance.all_logs(done.run_id)]
    said = [generated.stdout, generated.stderr, materialized.stdout, materialized.stderr, shown.stdout, *logs]
    assert all(password not in text for text in said)
    stored = list(stored_texts(home))
    assert any(b"ASSET_MATERIALIZATION" in data for data in stored)  # the search does reach the event log
    assert all(password.encode() not in data for data in stored)

    # The resource page, the launchpad and the stored job snapshot name the variable instead.
    snapshot = dg.deserialize_value(shown.stdout, RepositorySnap)
    database = next(resource for resource in snapshot.resources or () if resource.name == "database")
    assert database.configured_values["url"] == ResourceConfigEnvVarSnap(name="DATABASE_URL")
    assert any(b'{\\"env\\": \\"DATABASE_URL\\"}' in data for data in stored)
