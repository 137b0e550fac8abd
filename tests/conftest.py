"""Shared fixtures: every database test runs on SQLite and on the real PostgreSQL on 127.0.0.1:5432."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from dagster._core.storage.defs_state.base import _current_storage
from sqlalchemy.engine import make_url

from portrait_pipeline.audit import db
from portrait_pipeline.defs import resources as resource_module
from portrait_pipeline.defs.resources import DatabaseResource, GeminiResource, ImageStorageResource, PortraitSettings
from portrait_pipeline.roster import import_roster, read_roster
from portrait_pipeline.storage import LocalImageStorage
from tests.helpers import current_catalogue, gemini_for
from tests.servers import gemini as fake

POSTGRES_URL = os.environ.get("PORTRAIT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ON_CI = os.environ.get("CI", "").lower() == "true"


def postgres_available() -> bool:
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(autouse=True)
def _dagster_defs_state_isolated() -> Iterator[None]:
    """`with DagsterInstance` leaves its defs-state storage set after exit (dagster 1.13): a later test would
    then load definitions through a dead instance. Each test gets the state it started with back."""
    _current_storage.set(None)
    yield
    _current_storage.set(None)


@pytest.fixture(autouse=True)
def _model_checks_forgotten() -> None:
    """Each test's servers are new: a model that passed the preflight on an earlier test's server (whose port a
    later server may reuse) must not count as checked."""
    resource_module._PASSED.clear()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test PostgreSQL; under CI a missing server fails the run instead of skipping."""
    if postgres_available():
        return POSTGRES_URL
    if ON_CI:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} does not answer (CI=true: required)")
    pytest.skip(f"PostgreSQL at {POSTGRES_URL} does not answer")


def _schema_url(base_url: str, schema: str) -> str:
    url = make_url(base_url)
    return url.set(query={**url.query, "options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'portraits.db'}"
        yield url
        db.engine_for(url).dispose()
        return
    base = request.getfixturevalue("postgres_url")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    url = _schema_url(base, schema)
    try:
        yield url
    finally:
        db.engine_for(url).dispose()
        with psycopg.connect(base, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def database(database_url: str) -> DatabaseResource:
    """A migrated database behind the project's own resource."""
    db.upgrade(database_url)
    return DatabaseResource(url=database_url)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    return tmp_path / "images"


@pytest.fixture
def storage_resource(image_dir: Path) -> ImageStorageResource:
    return ImageStorageResource(local=True, local_dir=str(image_dir))


@pytest.fixture
def local_storage(image_dir: Path) -> LocalImageStorage:
    return LocalImageStorage(image_dir)


@pytest.fixture
def api_key(request: pytest.FixtureRequest) -> str:
    """The test module's `API_KEY`: each module's servers accept only its own key."""
    return str(getattr(request.module, "API_KEY", "test-key"))


@pytest.fixture
def server(api_key: str) -> Iterator[fake.GeminiTestServer]:
    """The local Gemini as the real API is today: the registry's current models, every other id 404s. A module that
    needs other behaviour (latency, batch timing) defines its own `server`."""
    with fake.GeminiTestServer(api_key=api_key, models=current_catalogue()) as running:
        yield running


@pytest.fixture
def gemini(server: fake.GeminiTestServer, api_key: str) -> GeminiResource:
    return gemini_for(server, api_key)


@pytest.fixture
def offline_gemini() -> GeminiResource:
    return GeminiResource(renderer_choice="offline")


@pytest.fixture
def settings() -> PortraitSettings:
    return PortraitSettings(current_draft_year=2025)


@pytest.fixture
def demo_roster() -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "demo_roster.csv"


@pytest.fixture
def roster_loaded(database: DatabaseResource, demo_roster: Path) -> DatabaseResource:
    """A migrated database holding the demo roster (40 players, 2025 and 2026 classes, five active pros)."""
    with database.session() as session:
        import_roster(session, read_roster(demo_roster))
    return database
