"""The preflight: the models a run calls are asked for (models.get, real SDK) before the first paid call.

The local Gemini server is started with the registry's current models, like the real catalogue: any other id gets
Google's 404 NOT_FOUND on every endpoint.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import select

from portrait_pipeline.audit.db import engine_for, session_scope, upgrade
from portrait_pipeline.audit.models import PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.defs.resources import DatabaseResource, GeminiResource, ImageStorageResource
from portrait_pipeline.errors import ConfigurationError
from portrait_pipeline.model_registry import DEFAULT_IMAGE_MODEL, DEFAULT_VISION_MODEL
from portrait_pipeline.roster import import_roster, read_roster
from tests import helpers
from tests.helpers import (
    generate_requests,
    materialize_likeness,
    materialize_portraits,
    resources_for,
    run_cli,
)
from tests.servers import gemini as fake

API_KEY = "preflight-test-key"
RETIRED = "gemini-3-pro-image-preview"  # in the registry, shut down on 2026-06-25
NEW_MODEL = "gemini-9-image"  # not in the registry; the API has it in the tests that add it


def gemini_for(server: fake.GeminiTestServer, **settings: Any) -> GeminiResource:
    """A fresh resource (Dagster rebuilds a run's resources from their config, which `model_copy` does not change)."""
    return helpers.gemini_for(server, API_KEY, **{"max_concurrency": 1, **settings})


@pytest.fixture
def gemini(server: fake.GeminiTestServer) -> GeminiResource:
    return gemini_for(server)  # one call at a time: a model retired mid-run fails the calls after it


def snapshots(database: DatabaseResource) -> list[PlayerImageSnapshot]:
    with database.session() as db:
        return list(db.scalars(select(PlayerImageSnapshot)))


def assets_of(database: DatabaseResource) -> list[PlayerImageAsset]:
    with database.session() as db:
        return list(db.scalars(select(PlayerImageAsset).order_by(PlayerImageAsset.player_id)))


def failure_of(result: dg.ExecuteInProcessResult, node: str = "player_portraits") -> str:
    failure = result.failure_data_for_node(node)
    assert failure is not None and failure.user_failure_data is not None
    return failure.user_failure_data.description or ""


# --- the check itself --------------------------------------------------------------------------------------


def test_the_defaults_pass_with_one_metadata_request_per_model(
    gemini: GeminiResource, server: fake.GeminiTestServer
) -> None:
    assert (gemini.image_model, gemini.vision_model) == (DEFAULT_IMAGE_MODEL, DEFAULT_VISION_MODEL)
    assert gemini.preflight(image_size="1K", vision=True) == []
    assert gemini.preflight(image_size="4K", vision=True) == []  # asked again: answered from the resource
    assert server.request_counts == {"get_model": 2}
    assert {request.model for request in server.requests} == {DEFAULT_IMAGE_MODEL, DEFAULT_VISION_MODEL}


def test_the_runs_of_one_process_ask_once_per_model_and_a_refusal_is_asked_again(server: fake.GeminiTestServer) -> None:
    """Each Dagster run builds its own resource (the CLI's partition runs too): a model that passed is not asked
    again in this process for a while; one that was refused is, since the API may serve it by then."""
    server.remove_model(DEFAULT_IMAGE_MODEL)
    for _ in range(2):
        with pytest.raises(ConfigurationError, match="is not served by the API"):
            gemini_for(server).preflight(image_size="1K")
    assert server.request_counts == {"get_model": 2}
    server.add_model(fake.ModelInfo(DEFAULT_IMAGE_MODEL, kind="image"))
    for _ in range(3):
        assert gemini_for(server).preflight(image_size="1K", judge=True) == []
    assert server.request_counts == {"get_model": 4}  # the image model again, the judge's once: then both cached


def test_a_model_shut_down_by_the_registrys_date_is_refused_without_a_request(
    gemini: GeminiResource, server: fake.GeminiTestServer
) -> None:
    retired = gemini_for(server, image_model=RETIRED)
    with pytest.raises(ConfigurationError) as caught:
        retired.preflight(image_size="1K")
    assert str(caught.value) == (
        f"GEMINI_IMAGE_MODEL={RETIRED} was shut down on 2026-06-25; use {DEFAULT_IMAGE_MODEL} instead"
    )
    assert server.requests == []


def test_a_model_the_api_lacks_is_refused_with_its_reason_and_replacement(server: fake.GeminiTestServer) -> None:
    server.remove_model("gemini-3.1-flash-image")  # deprecated in the registry, now gone from the API too
    gemini = GeminiResource(api_key=API_KEY, base_url=server.base_url, image_model="gemini-3.1-flash-image")
    for _ in range(2):  # the refusal is remembered: one request per model per run
        with pytest.raises(ConfigurationError) as caught:
            gemini.preflight(image_size="1K")
        message = str(caught.value)
        assert message.startswith("GEMINI_IMAGE_MODEL=gemini-3.1-flash-image is not served by the API (Gemini answered")
        assert "404 NOT_FOUND" in message and "models/gemini-3.1-flash-image is not found" in message
        assert message.endswith("; use gemini-nano-banana-2.1 instead") and "\n" not in message
    assert server.request_counts == {"get_model": 1}


def test_a_shutdown_within_30_days_is_a_warning() -> None:
    with fake.GeminiTestServer(api_key=API_KEY, models=[DEFAULT_IMAGE_MODEL, "gemini-2.5-flash"]) as old_catalogue:
        gemini = GeminiResource(api_key=API_KEY, base_url=old_catalogue.base_url, vision_model="gemini-2.5-flash")
        warnings = gemini.preflight(vision=True, today=date(2026, 11, 15))
    assert warnings == [
        "GEMINI_VISION_MODEL=gemini-2.5-flash shuts down on 2026-12-01 (in 16 days); use gemini-3.5-flash-lite instead"
    ]


def test_a_portraits_run_without_likeness_does_not_need_the_vision_model(
    gemini: GeminiResource, server: fake.GeminiTestServer
) -> None:
    dead_vision = gemini_for(server, vision_model="gemini-2.5-flash-lite-preview")
    assert dead_vision.preflight(image_size="1K") == []
    with pytest.raises(ConfigurationError, match=r"^GEMINI_VISION_MODEL=gemini-2\.5-flash-lite-preview is not served"):
        dead_vision.preflight(image_size="1K", vision=True)


def test_offline_there_is_nothing_to_check() -> None:
    assert GeminiResource(renderer_choice="offline", image_model=RETIRED).preflight(image_size="1K", vision=True) == []


# --- through the assets (the UI, the sensor and the schedules launch these) -----------------------------------


def test_a_retired_default_stops_the_run_before_anything_is_generated_or_written(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
    image_dir: Path,
) -> None:
    retired = gemini_for(server, image_model=RETIRED)
    result = materialize_portraits(resources_for(roster_loaded, storage_resource, retired), ("2025", "default"))
    assert not result.success
    assert failure_of(result) == (
        f"GEMINI_IMAGE_MODEL={RETIRED} was shut down on 2026-06-25; use {DEFAULT_IMAGE_MODEL} instead"
    )
    assert server.requests == [] and snapshots(roster_loaded) == [] and not image_dir.exists()


def test_a_model_gone_from_the_api_costs_one_metadata_request_and_nothing_else(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    server.remove_model(DEFAULT_IMAGE_MODEL)
    result = materialize_portraits(resources_for(roster_loaded, storage_resource, gemini), ("2025", "default"))
    assert not result.success and "is not served by the API" in failure_of(result)
    assert server.request_counts == {"get_model": 1} and snapshots(roster_loaded) == []


def test_the_likeness_asset_checks_the_vision_model_first(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    server.remove_model(DEFAULT_VISION_MODEL)
    result = materialize_likeness(resources_for(roster_loaded, storage_resource, gemini), "2025")
    assert not result.success
    assert failure_of(result, "likeness_descriptions").startswith(
        f"GEMINI_VISION_MODEL={DEFAULT_VISION_MODEL} is not served by the API"
    )
    assert server.request_counts == {"get_model": 1}


def test_a_model_outside_the_registry_runs_at_its_configured_price(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    server.add_model(fake.ModelInfo(NEW_MODEL, kind="image"))
    priced = gemini_for(server, image_model=NEW_MODEL, image_price_usd=0.05)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_portraits(
        resources_for(roster_loaded, storage_resource, priced), ("2025", "default"), {"player_ids": [1, 2]}, instance
    )
    assert result.success
    assert [asset.cost_usd for asset in assets_of(roster_loaded)] == [Decimal("0.05"), Decimal("0.05")]
    assert {asset.model for asset in assets_of(roster_loaded)} == {NEW_MODEL}
    assert [snapshot.estimated_cost_usd for snapshot in snapshots(roster_loaded)] == [Decimal("0.1")]
    metadata = result.asset_materializations_for_node("player_portraits")[0].metadata
    assert metadata["cost_usd"].value == pytest.approx(0.10)
    assert metadata["token_cost_usd"].value == "unknown"  # no token price known: not a measured $0
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(f"GEMINI_IMAGE_MODEL={NEW_MODEL} is not in portrait_pipeline/model_registry.py" in m for m in logs)
    assert len(generate_requests(server, NEW_MODEL)) == 2


def test_a_model_outside_the_registry_without_a_price_does_not_run(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    server.add_model(fake.ModelInfo(NEW_MODEL, kind="image"))
    unpriced = gemini_for(server, image_model=NEW_MODEL)
    result = materialize_portraits(resources_for(roster_loaded, storage_resource, unpriced), ("2025", "default"))
    assert not result.success and "set GEMINI_IMAGE_PRICE_USD" in failure_of(result)
    assert server.requests == [] and snapshots(roster_loaded) == []


def test_a_model_retired_mid_run_fails_the_remaining_players_with_the_apis_reason(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    server.enqueue(fake.slow_reply(0.5))  # the first portrait answers late; meanwhile Google retires the model

    def retire_once_the_first_call_is_in_flight() -> None:
        deadline = time.monotonic() + 10
        while not generate_requests(server) and time.monotonic() < deadline:
            time.sleep(0.01)
        server.remove_model(DEFAULT_IMAGE_MODEL)

    retirer = threading.Thread(target=retire_once_the_first_call_is_in_flight)
    retirer.start()
    result = materialize_portraits(
        resources_for(roster_loaded, storage_resource, gemini), ("2025", "default"), {"player_ids": [1, 2, 3]}
    )
    retirer.join()
    assert result.success  # one portrait was made; the others are listed as failed, with the API's reason
    assert [request.status for request in generate_requests(server)] == [200, 404, 404]
    assets = assets_of(roster_loaded)
    assert [asset.status for asset in assets] == ["succeeded", "failed", "failed"]
    for asset in assets[1:]:
        reason = asset.error_message or ""
        assert "404 NOT_FOUND after 1 attempt(s)" in reason and f"models/{DEFAULT_IMAGE_MODEL} is not found" in reason
        assert asset.cost_usd == 0  # a 404 is not billed
    metadata = result.asset_materializations_for_node("player_portraits")[0].metadata
    assert metadata["failed"].value == 2


# --- the CLI (SQLite only: what is checked here is the exit code and the output, not the database) ----------


@pytest.fixture
def cli_env(tmp_path: Path, demo_roster: Path, server: fake.GeminiTestServer) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'portraits.db'}"
    upgrade(url)
    with session_scope(engine_for(url)) as db:
        import_roster(db, read_roster(demo_roster))
    base = {key: value for key, value in os.environ.items() if not key.startswith(("GEMINI_", "S3_", "DAGSTER_"))}
    return {
        **base,
        "DATABASE_URL": url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "IMAGE_LOCAL_DIR": str(tmp_path / "images"),
        "GEMINI_API_KEY": API_KEY,
        "GEMINI_BASE_URL": server.base_url,
        "CURRENT_DRAFT_YEAR": "2025",
    }


def cli(env: dict[str, str], *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["generate", "--draft-year", "2025", *args], {**env, **settings})


def test_the_cli_refuses_a_retired_model_with_exit_2_and_one_line(
    cli_env: dict[str, str], server: fake.GeminiTestServer
) -> None:
    done = cli(cli_env, "--limit", "2", GEMINI_IMAGE_MODEL=RETIRED)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"portrait-pipeline: error: GEMINI_IMAGE_MODEL={RETIRED} was shut down on 2026-06-25; "
        f"use {DEFAULT_IMAGE_MODEL} instead"
    )
    assert server.requests == [] and done.stdout == ""
    with session_scope(engine_for(cli_env["DATABASE_URL"])) as db:
        assert db.scalars(select(PlayerImageSnapshot)).first() is None


def test_the_dry_run_checks_the_model_warns_and_prices_both_lanes(
    cli_env: dict[str, str], server: fake.GeminiTestServer
) -> None:
    done = cli(cli_env, "--dry-run", "--size", "2K", GEMINI_IMAGE_MODEL="gemini-3.1-flash-image")
    assert done.returncode == 0, done.stderr
    assert server.request_counts == {"get_model": 1}
    [warning] = [line for line in done.stderr.splitlines() if "warning:" in line]
    assert warning.startswith("portrait-pipeline: warning: GEMINI_IMAGE_MODEL=gemini-3.1-flash-image is deprecated")
    assert warning.endswith("use gemini-nano-banana-2.1 instead")
    assert "$0.101 an image (batch $0.0505)" in done.stdout
    total = next(line for line in done.stdout.splitlines() if line.startswith("total"))
    assert total.split()[-2:] == ["$2.02", "$1.01"]  # 20 players of 2025


def test_the_dry_run_of_an_unpriced_new_model_says_unknown_never_zero(
    cli_env: dict[str, str], server: fake.GeminiTestServer
) -> None:
    server.add_model(fake.ModelInfo(NEW_MODEL, kind="image"))
    done = cli(cli_env, "--dry-run", GEMINI_IMAGE_MODEL=NEW_MODEL)
    assert done.returncode == 0, done.stderr
    total = next(line for line in done.stdout.splitlines() if line.startswith("total"))
    assert total.split()[-2:] == ["unknown", "unknown"] and "$0.00" not in done.stdout
    assert "set GEMINI_IMAGE_PRICE_USD to run it" in done.stdout
    refused = cli(cli_env, "--limit", "1", GEMINI_IMAGE_MODEL=NEW_MODEL)
    assert refused.returncode == 2 and "set GEMINI_IMAGE_PRICE_USD" in refused.stderr
    assert generate_requests(server) == []
