"""Every example of the seed's "CLI Examples" section, through the CLI's `main` and the real SDK.

The Gemini API is the local test server; each command runs in this process (`run_cli`, the console script's own
code) against a temp database, Dagster instance and image folder.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select, update

from portrait_pipeline import images
from portrait_pipeline.audit.db import engine_for, session_scope, upgrade
from portrait_pipeline.audit.models import Player, PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.model_registry import DEFAULT_IMAGE_MODEL
from portrait_pipeline.roster import import_roster, read_roster
from tests.helpers import current_catalogue, generate_requests, run_cli
from tests.servers import gemini as fake
from tests.servers.files import FileServer

API_KEY = "cli-test-key-7f3a"
IMAGE_MODEL = DEFAULT_IMAGE_MODEL
LIKENESS_PLAYER = 3  # De'Andre Whitfield, 2025
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def server() -> Iterator[fake.GeminiTestServer]:
    with fake.GeminiTestServer(api_key=API_KEY, models=current_catalogue()) as running:
        yield running


@pytest.fixture
def references() -> Iterator[FileServer]:
    buffer = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((240, 300)).save(buffer, format="JPEG")
    with FileServer({"/player-photo.jpg": ("image/jpeg", buffer.getvalue())}) as served:
        yield served


@pytest.fixture
def env(
    tmp_path: Path, database_url: str, demo_roster: Path, server: fake.GeminiTestServer, references: FileServer
) -> dict[str, str]:
    upgrade(database_url)
    with session_scope(engine_for(database_url)) as db:
        import_roster(db, read_roster(demo_roster))
        db.execute(
            update(Player)
            .where(Player.id == LIKENESS_PLAYER)
            .values(reference_image_url=references.url("/player-photo.jpg"))
        )
    base = {key: value for key, value in os.environ.items() if not key.startswith(("GEMINI_", "S3_", "DAGSTER_"))}
    return {
        **base,
        "DATABASE_URL": database_url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "IMAGE_LOCAL_DIR": str(tmp_path / "images"),
        "GEMINI_API_KEY": API_KEY,
        "GEMINI_BASE_URL": server.base_url,
        "LIKENESS_FETCH_ALLOW_HOSTS": references.host_port,
        "CURRENT_DRAFT_YEAR": "2025",
        "GEMINI_REQUESTS_PER_MINUTE": "6000",  # pacing is tested in test_pacing.py; at 60 a class takes 20 s
    }


@pytest.fixture
def run(env: dict[str, str]) -> Run:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(["generate", *args], env)

    return run


def image_requests(server: fake.GeminiTestServer) -> list[fake.RecordedRequest]:
    return generate_requests(server, IMAGE_MODEL)


def assets(env: dict[str, str]) -> list[PlayerImageAsset]:
    with session_scope(engine_for(env["DATABASE_URL"])) as db:
        return list(db.scalars(select(PlayerImageAsset).order_by(PlayerImageAsset.id)))


def snapshots(env: dict[str, str]) -> list[PlayerImageSnapshot]:
    with session_scope(engine_for(env["DATABASE_URL"])) as db:
        return list(db.scalars(select(PlayerImageSnapshot).order_by(PlayerImageSnapshot.id)))


def test_generate_for_2025_draft_class_with_run_key(
    run: Run, env: dict[str, str], server: fake.GeminiTestServer
) -> None:
    first = run("--draft-year", "2025", "--run-key", "draft_2025_v1")
    assert first.returncode == 0, first.stderr
    assert len(image_requests(server)) == 20
    assert "2025|default" in first.stdout and "20" in first.stdout
    second = run("--draft-year", "2025", "--run-key", "draft_2025_v1", "--notes", "second pass", "--limit", "1")
    assert second.returncode == 0, second.stderr
    assert [(s.run_key, s.version, s.notes) for s in snapshots(env)] == [
        ("draft_2025_v1", 1, None),
        ("draft_2025_v1", 2, "second pass"),
    ]


def test_generate_for_current_nba_players_missing_only(
    run: Run, env: dict[str, str], server: fake.GeminiTestServer
) -> None:
    first = run("--cohort", "current_nba", "--missing-only")
    assert first.returncode == 0, first.stderr
    assert len(image_requests(server)) == 5  # the five nba_active players, over their draft years
    assert {s.cohort for s in snapshots(env)} == {"current_nba"}
    again = run("--cohort", "current_nba", "--missing-only")
    assert again.returncode == 0, again.stderr
    assert len(image_requests(server)) == 5  # nothing regenerated, nothing paid
    assert "skipped" in again.stdout


def test_generate_for_specific_player_with_reference_image_for_likeness(
    run: Run, env: dict[str, str], server: fake.GeminiTestServer
) -> None:
    result = run("--player-id", str(LIKENESS_PLAYER), "--fetch-likeness")
    assert result.returncode == 0, result.stderr
    vision = [request for request in generate_requests(server) if request.model != IMAGE_MODEL]
    assert len(vision) == 1
    [request] = image_requests(server)
    assert fake.DEFAULT_DESCRIPTION in json.dumps(request.body) and "inlineData" not in json.dumps(request.body)
    [asset] = assets(env)
    assert asset.used_likeness_ref and asset.likeness_description == fake.DEFAULT_DESCRIPTION


def test_use_explicit_reference_url_for_a_player(
    run: Run, env: dict[str, str], server: fake.GeminiTestServer, references: FileServer
) -> None:
    url = references.url("/player-photo.jpg")
    result = run("--player-id", "1", "--likeness-url", url)
    assert result.returncode == 0, result.stderr
    [asset] = assets(env)
    assert asset.player_id == 1 and asset.used_likeness_ref and asset.reference_image_url == url
    assert references.hits == ["/player-photo.jpg"]


def test_cost_conscious_batch_smaller_size(run: Run, env: dict[str, str], server: fake.GeminiTestServer) -> None:
    result = run("--cohort", "current_draft", "--size", "512")
    assert result.returncode == 0, result.stderr
    requests = image_requests(server)
    assert len(requests) == 20
    assert {r.body["generationConfig"]["imageConfig"]["imageSize"] for r in requests} == {"1K"}
    stored = Path(env["IMAGE_LOCAL_DIR"]) / "players"
    sizes = {images.inspect(path.read_bytes()).width for path in stored.glob("*_default.png")}
    assert sizes == {400}
    assert {s.image_size for s in snapshots(env)} == {"512"}


def test_dry_run_to_preview_and_estimate_costs(run: Run, env: dict[str, str], server: fake.GeminiTestServer) -> None:
    result = run("--all", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert [request.kind for request in server.requests] == ["get_model"]  # with a key: the model is checked
    assert snapshots(env) == []
    assert IMAGE_MODEL in result.stdout
    total = next(line for line in result.stdout.splitlines() if line.startswith("total"))
    assert total.split()[-2:] == ["$5.36", "$2.68"]  # 40 players x $0.134 standard, x $0.067 batch
    assert not Path(env["IMAGE_LOCAL_DIR"]).exists()


def test_limit_to_5_players_for_testing(run: Run, env: dict[str, str], server: fake.GeminiTestServer) -> None:
    result = run("--draft-year", "2025", "--limit", "5")
    assert result.returncode == 0, result.stderr
    assert len(image_requests(server)) == 5 and len(assets(env)) == 5


def test_some_players_failing_exits_1_and_lists_them(
    run: Run, env: dict[str, str], server: fake.GeminiTestServer
) -> None:
    server.enqueue(fake.safety_reply())
    result = run("--draft-year", "2025", "--limit", "3")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED" in result.stdout and "IMAGE_SAFETY" in result.stdout
    assert sorted(asset.status for asset in assets(env)) == ["failed", "succeeded", "succeeded"]
