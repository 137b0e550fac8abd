"""Portraits and likeness through the real google-genai SDK, against the local Gemini server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from PIL import Image
from sqlalchemy import inspect, select, text, update

from portrait_pipeline import images
from portrait_pipeline.audit import records as audit
from portrait_pipeline.audit.models import Player, PlayerImageAsset, PlayerLikeness
from portrait_pipeline.defs.resources import DatabaseResource, GeminiResource, ImageStorageResource, LikenessResource
from portrait_pipeline.generation.player import ImageGenerationService
from portrait_pipeline.model_registry import DEFAULT_IMAGE_MODEL, DEFAULT_VISION_MODEL
from portrait_pipeline.prompts import SYSTEM_PROMPT_VERSION
from portrait_pipeline.storage import LocalImageStorage, sha256_hex
from tests.helpers import (
    gemini_for,
    generate_requests,
    materialize_likeness,
    materialize_portraits,
    resources_for,
)
from tests.servers import gemini as fake
from tests.servers.files import FileServer

API_KEY = "AIzaTEST-secret-key-0123456789abcdef"
IMAGE_MODEL = DEFAULT_IMAGE_MODEL
VISION_MODEL = DEFAULT_VISION_MODEL


@pytest.fixture
def gemini(server: fake.GeminiTestServer) -> GeminiResource:
    return gemini_for(server, API_KEY, max_concurrency=1)


@pytest.fixture
def reference_png() -> bytes:
    buffer = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((300, 360)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def references(reference_png: bytes) -> Iterator[FileServer]:
    with FileServer({"/ref/player1.png": ("image/png", reference_png)}) as served:
        yield served


def image_requests(server: fake.GeminiTestServer) -> list[fake.RecordedRequest]:
    return generate_requests(server, IMAGE_MODEL)


def assets_of(database: DatabaseResource) -> list[PlayerImageAsset]:
    with database.session() as db:
        return list(db.scalars(select(PlayerImageAsset).order_by(PlayerImageAsset.player_id)))


def test_partition_is_generated_through_the_sdk_with_the_seed_request(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    result = materialize_portraits(
        resources_for(roster_loaded, storage_resource, gemini), ("2025", "vector"), {"player_ids": [1, 2, 3, 4, 5]}
    )
    assert result.success
    requests = image_requests(server)
    assert len(requests) == 5 and all(request.api_key == API_KEY for request in requests)
    body = requests[0].body
    assert body["generationConfig"]["responseModalities"] == ["IMAGE"]
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": "4:5", "imageSize": "1K"}
    system = body["systemInstruction"]["parts"][0]["text"]
    assert "#4A7FB8" in system and "VECTOR" in system and "no text" in system.lower()
    assert "Marcus Okafor" in json.dumps([request.body for request in requests])

    metadata = result.asset_materializations_for_node("player_portraits")[0].metadata
    assert metadata["token_cost_usd"].value == pytest.approx(5 * fake.IMAGE_TOKENS * 120 / 1_000_000)
    assert metadata["cost_usd"].value == pytest.approx(5 * 0.134)
    storage = storage_resource.get_storage()
    for asset in assets_of(roster_loaded):
        assert asset.status == "succeeded" and asset.model == IMAGE_MODEL
        assert asset.cost_usd == Decimal("0.1340") and asset.output_tokens == fake.IMAGE_TOKENS
        assert asset.prompt_tokens and asset.total_tokens
        data = storage.get(asset.s3_key or "")
        info = images.inspect(data)
        assert (info.width, info.height, info.format) == (800, 1000, "PNG")  # 896x1152 cropped to 4:5
        provenance = images.png_text(data)
        assert provenance["portrait:model"] == IMAGE_MODEL and provenance["portrait:player_id"] == str(asset.player_id)
        assert provenance["portrait:prompt_version"] == SYSTEM_PROMPT_VERSION


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (fake.safety_reply("IMAGE_SAFETY"), "finish reason IMAGE_SAFETY"),
        (fake.safety_reply("SAFETY"), "finish reason SAFETY"),
        (fake.blocked_reply("SAFETY"), "blocked the prompt (SAFETY)"),
        (fake.text_reply("I can only describe players."), "text only"),
        (fake.error_reply(400, "Invalid image size."), "400 INVALID_ARGUMENT after 1 attempt(s)"),
    ],
)
def test_an_answer_without_image_fails_that_player_and_the_rest_go_on(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
    reply: fake.Reply,
    reason: str,
) -> None:
    server.enqueue(reply)
    config = {"player_ids": [1, 2, 3]}
    result = materialize_portraits(resources_for(roster_loaded, storage_resource, gemini), ("2025", "default"), config)
    assert result.success
    assets = assets_of(roster_loaded)
    assert [asset.status for asset in assets] == ["failed", "succeeded", "succeeded"]
    assert reason in (assets[0].error_message or "")
    assert not assets[0].is_current and assets[0].s3_key is None
    assert len(image_requests(server)) == 3  # a 4xx is not retried
    metadata = result.asset_materializations_for_node("player_portraits")[0].metadata
    assert metadata["failed"].value == 1 and reason in str(metadata["failures"].value)


def test_512_is_generated_at_1k_and_downscaled(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    config = {"player_ids": [1], "image_size": "512"}
    assert materialize_portraits(
        resources_for(roster_loaded, storage_resource, gemini), ("2025", "comic"), config
    ).success
    assert image_requests(server)[0].body["generationConfig"]["imageConfig"]["imageSize"] == "1K"
    asset = assets_of(roster_loaded)[0]
    assert (asset.width, asset.height) == (400, 500)
    assert images.inspect(storage_resource.get_storage().get(asset.s3_key or "")).width == 400


def test_rate_limit_answer_is_retried_after_the_servers_delay(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    server.enqueue(fake.rate_limited_reply(0.7), fake.internal_error_reply(), fake.unavailable_reply())
    result = materialize_portraits(
        resources_for(roster_loaded, storage_resource, gemini), ("2025", "retro"), {"player_ids": [1]}
    )
    assert result.success
    requests = image_requests(server)
    assert [request.status for request in requests] == [429, 500, 503, 200]
    # RetryInfo said 0.7 s; our own backoff starts at 0.05 s, so only the server's hint explains the gap.
    assert requests[1].started - requests[0].started >= 0.7
    assert requests[2].started - requests[1].started < 0.7
    assert assets_of(roster_loaded)[0].status == "succeeded"


def test_a_hung_call_times_out_and_is_retried(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    server: fake.GeminiTestServer,
    gemini: GeminiResource,
) -> None:
    server.enqueue(fake.hang_reply())
    # A new resource: Dagster builds a run's resources from their config, which `model_copy` leaves as it was.
    quick = GeminiResource(**{**gemini.model_dump(), "timeout_s": 1.0})
    result = materialize_portraits(
        resources_for(roster_loaded, storage_resource, quick), ("2025", "default"), {"player_ids": [1]}
    )
    assert result.success
    assert [request.status for request in image_requests(server)] == [None, 200]
    assert assets_of(roster_loaded)[0].status == "succeeded"


def test_retries_are_bounded_and_the_last_reason_is_stored(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    server: fake.GeminiTestServer,
    gemini: GeminiResource,
) -> None:
    server.enqueue(*[fake.internal_error_reply()] * 5)
    result = materialize_portraits(
        resources_for(roster_loaded, storage_resource, gemini), ("2025", "default"), {"player_ids": [1]}
    )
    assert not result.success  # every player of the run failed: the run says so
    assert len(image_requests(server)) == 5
    assert "500 INTERNAL after 5 attempt(s)" in (assets_of(roster_loaded)[0].error_message or "")


def test_reference_is_described_once_and_only_words_reach_the_image_model(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
    references: FileServer,
    reference_png: bytes,
) -> None:
    url = references.url("/ref/player1.png")
    with roster_loaded.session() as db:
        db.execute(update(Player).where(Player.id == 1).values(reference_image_url=url))
    resources = resources_for(
        roster_loaded, storage_resource, gemini, LikenessResource(allow_hosts=references.host_port)
    )
    instance = dg.DagsterInstance.ephemeral()

    first = materialize_likeness(resources, "2025", instance=instance)
    second = materialize_likeness(resources, "2025", instance=instance)
    assert first.success and second.success
    assert first.asset_materializations_for_node("likeness_descriptions")[0].metadata["described_now"].value == 1
    assert second.asset_materializations_for_node("likeness_descriptions")[0].metadata["reused"].value == 1
    vision = generate_requests(server, VISION_MODEL)
    assert len(vision) == 1
    sent = vision[0].body["contents"][0]["parts"][0]["inlineData"]["data"]
    assert base64.urlsafe_b64decode(sent) == reference_png  # the vision model does see the photo
    with roster_loaded.session() as db:
        stored = db.scalars(select(PlayerLikeness)).one()
    assert stored.reference_sha256 == sha256_hex(reference_png) and stored.description == fake.DEFAULT_DESCRIPTION

    config = {"player_ids": [1, 2], "fetch_likeness": True}
    assert materialize_portraits(resources, ("2025", "default"), config, instance).success
    bodies = [json.dumps(request.body) for request in image_requests(server)]
    assert fake.DEFAULT_DESCRIPTION in bodies[0]
    fingerprints = [base64.b64encode(reference_png)[40:120], base64.urlsafe_b64encode(reference_png)[40:120]]
    for body in bodies:  # the image model gets words only, never the reference photo
        assert "inlineData" not in body and not any(mark.decode() in body for mark in fingerprints)
    assert len(generate_requests(server, VISION_MODEL)) == 1
    with_likeness, without = assets_of(roster_loaded)
    assert with_likeness.used_likeness_ref and with_likeness.reference_sha256 == stored.reference_sha256
    assert with_likeness.likeness_description == fake.DEFAULT_DESCRIPTION and url == with_likeness.reference_image_url
    assert not without.used_likeness_ref and without.status == "succeeded"


@pytest.mark.parametrize(
    "bad_url",
    ["http://169.254.169.254/latest/meta-data/iam", "http://10.0.0.7/photo.jpg", "http://127.0.0.1:9/photo.png"],
)
def test_refused_reference_is_a_reason_on_the_players_row_not_a_crash(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
    bad_url: str,
) -> None:
    with roster_loaded.session() as db:
        db.execute(update(Player).where(Player.id == 2).values(reference_image_url=bad_url))
    resources = resources_for(roster_loaded, storage_resource, gemini)
    likeness = materialize_likeness(resources, "2025")
    assert likeness.success
    assert likeness.asset_materializations_for_node("likeness_descriptions")[0].metadata["refused"].value == 1
    config = {"player_ids": [1, 2], "fetch_likeness": True}
    assert materialize_portraits(resources, ("2025", "default"), config).success
    refused = assets_of(roster_loaded)[1]
    assert (
        refused.status == "failed"
        and "is " in (refused.error_message or "")
        and bad_url in (refused.error_message or "")
    )
    assert not generate_requests(server, VISION_MODEL)


def test_api_key_never_reaches_logs_metadata_or_the_database(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server.enqueue(fake.error_reply(403, "Permission denied for this API key."), fake.internal_error_reply())
    instance = dg.DagsterInstance.ephemeral()
    config = {"player_ids": [1, 2, 3], "run_key": "secret-check"}
    result = materialize_portraits(
        resources_for(roster_loaded, storage_resource, gemini), ("2025", "default"), config, instance
    )
    assert result.success
    assert {request.api_key for request in server.requests} == {API_KEY}  # it was really used

    events = json.dumps([str(entry) for entry in instance.all_logs(result.run_id)])
    assert API_KEY not in events and API_KEY not in caplog.text
    with roster_loaded.session() as db:
        tables = inspect(db.get_bind()).get_table_names()
        dump = json.dumps([[list(map(str, row)) for row in db.execute(text(f"SELECT * FROM {t}"))] for t in tables])
    assert API_KEY not in dump and "Permission denied" in dump
    run_config: Any = instance.get_run_by_id(result.run_id)
    assert run_config is not None and API_KEY not in str(run_config.run_config)


def test_a_paid_answer_that_cannot_be_stored_keeps_its_cost_on_the_failed_row(
    roster_loaded: DatabaseResource, gemini: GeminiResource, server: fake.GeminiTestServer, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the image folder should be")
    service = ImageGenerationService(gemini.renderer(), LocalImageStorage(blocker / "images"))
    with roster_loaded.session() as db:
        player = db.get_one(Player, 1)
        snapshot = audit.start_snapshot(db, snapshot_spec())
        db.commit()
        asset = asyncio.run(service.generate_for_player(db=db, player=player, snapshot=snapshot, style="default"))
    assert len(image_requests(server)) == 1  # Gemini answered, so the image was paid for
    assert asset.status == "failed" and "cannot write" in (asset.error_message or "")
    assert asset.cost_usd == Decimal("0.134") and asset.output_tokens == fake.IMAGE_TOKENS
    assert not asset.is_current and asset.s3_key is None


def snapshot_spec() -> audit.SnapshotSpec:
    return audit.SnapshotSpec(
        run_key="paid-failure",
        style="default",
        cohort="draft_2025",
        draft_year=2025,
        population_size=1,
        system_prompt="",
        system_prompt_version="v2.1",
        image_size="1K",
        model=IMAGE_MODEL,
        estimated_cost_usd=Decimal("0.134"),
    )
