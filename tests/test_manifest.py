"""The portrait manifest: its JSON names exactly the current images, and the asset writes it to storage."""

import json
from typing import Any

import dagster as dg
from sqlalchemy import select

from portrait_pipeline.audit.models import PlayerImageAsset
from portrait_pipeline.audit.serving import promote_asset
from portrait_pipeline.defs.manifest import build_manifest, portrait_manifest
from portrait_pipeline.defs.resources import DatabaseResource, GeminiResource, ImageStorageResource
from portrait_pipeline.generation.partition import Portrait, current_portraits
from portrait_pipeline.naming import MANIFEST_KEY
from portrait_pipeline.storage import ALIAS_CACHE_CONTROL, sha256_hex
from tests.helpers import materialize_portraits, resources_for
from tests.servers.s3_fixtures import SeaweedEnv, seaweed  # noqa: F401


def generate(
    database: DatabaseResource,
    storage: ImageStorageResource,
    gemini: GeminiResource,
    partition: tuple[str, str],
    config: dict[str, Any],
) -> None:
    assert materialize_portraits(resources_for(database, storage, gemini), partition, config).success


def portraits(
    database: DatabaseResource, storage: ImageStorageResource, *partitions: tuple[str, str]
) -> list[Portrait]:
    with database.session() as db:
        return [p for partition in partitions for p in current_portraits(db, storage.get_storage(), *partition)]


def manifest_of(database: DatabaseResource, storage: ImageStorageResource) -> dict[str, Any]:
    with database.session() as db:
        return build_manifest(db, storage.get_storage())


def entries(manifest: dict[str, Any]) -> dict[tuple[int, str], dict[str, Any]]:
    return {
        (player["player_id"], style): image
        for player in manifest["players"]
        for style, image in player["images"].items()
    }


def test_manifest_lists_exactly_the_current_images(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    generate(roster_loaded, storage_resource, offline_gemini, ("2025", "default"), {"player_ids": [1, 2, 3]})
    generate(roster_loaded, storage_resource, offline_gemini, ("2025", "comic"), {"player_ids": [1]})
    generate(roster_loaded, storage_resource, offline_gemini, ("2026", "retro"), {"limit": 2})
    manifest = manifest_of(roster_loaded, storage_resource)
    current = portraits(roster_loaded, storage_resource, ("2025", "default"), ("2025", "comic"), ("2026", "retro"))

    assert manifest["version"] == 1 and manifest["count"] == len(current) == 6
    assert [player["player_id"] for player in manifest["players"]] == sorted({p.player_id for p in current})
    by_key = entries(manifest)
    assert set(by_key) == {(p.player_id, p.style) for p in current}
    storage = storage_resource.get_storage()
    for portrait in current:
        image = by_key[(portrait.player_id, portrait.style)]
        assert (image["url"], image["sha256"], image["width"], image["height"]) == (
            portrait.public_url,
            portrait.sha256,
            portrait.width,
            portrait.height,
        )
        assert sha256_hex(storage.get(portrait.key)) == image["sha256"]
        assert image["updated"].endswith("+00:00")
    slugs = {player["player_id"]: player["slug"] for player in manifest["players"]}
    assert {p.player_id: p.slug for p in current} == slugs


def test_manifest_follows_a_rollback(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    for size in ("512", "1K"):
        generate(
            roster_loaded,
            storage_resource,
            offline_gemini,
            ("2025", "default"),
            {"player_ids": [1], "image_size": size},
        )
    with roster_loaded.session() as db:
        small = db.scalars(
            select(PlayerImageAsset).where(PlayerImageAsset.player_id == 1, PlayerImageAsset.width == 400)
        ).one()
        promote_asset(db, storage_resource.get_storage(), small.id)
    image = entries(manifest_of(roster_loaded, storage_resource))[(1, "default")]
    assert (image["url"], image["sha256"], image["width"], image["height"]) == (
        small.public_url,
        small.content_sha256,
        400,
        500,
    )


def test_manifest_of_an_empty_audit_is_empty(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource
) -> None:
    assert manifest_of(roster_loaded, storage_resource) == {"version": 1, "count": 0, "players": []}


def test_portrait_manifest_asset_writes_the_json_and_reports_where(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    generate(roster_loaded, storage_resource, offline_gemini, ("2025", "default"), {"player_ids": [1, 2]})
    result = dg.materialize([portrait_manifest], resources={"database": roster_loaded, "storage": storage_resource})
    assert result.success
    storage = storage_resource.get_storage()
    written = json.loads(storage.get(MANIFEST_KEY))
    assert written == manifest_of(roster_loaded, storage_resource)
    metadata = result.asset_materializations_for_node("portrait_manifest")[0].metadata
    assert metadata["count"].value == 2
    assert metadata["key"].value == MANIFEST_KEY
    assert metadata["public_url"].value == storage.public_url(MANIFEST_KEY)


def test_portrait_manifest_is_unpartitioned_and_downstream_of_the_portraits() -> None:
    assert portrait_manifest.partitions_def is None
    assert dg.AssetKey("player_portraits") in portrait_manifest.dependency_keys


def test_portrait_manifest_on_s3_is_json_with_a_short_cache_lifetime(
    roster_loaded: DatabaseResource,
    offline_gemini: GeminiResource,
    seaweed: SeaweedEnv,  # noqa: F811
) -> None:
    seaweed.delete_prefix("manifests/")
    storage = ImageStorageResource(
        bucket_name=seaweed.bucket,
        endpoint_url=seaweed.endpoint_url,
        access_key_id=seaweed.writer.access_key,
        secret_access_key=seaweed.writer.secret_key,
    )
    result = dg.materialize([portrait_manifest], resources={"database": roster_loaded, "storage": storage})
    assert result.success
    head = seaweed.client().head_object(Bucket=seaweed.bucket, Key=MANIFEST_KEY)
    assert head["ContentType"] == "application/json"
    assert head["CacheControl"] == ALIAS_CACHE_CONTROL
    assert json.loads(storage.get_storage().get(MANIFEST_KEY)) == {"version": 1, "count": 0, "players": []}
