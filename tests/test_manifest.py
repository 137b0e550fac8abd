"""The portrait manifest: its JSON names exactly the current images, and the asset writes it to storage."""

import json
from typing import Any

import dagster as dg
from sqlalchemy import select

from portrait_pipeline.audit.models import PlayerImageAsset
from portrait_pipeline.audit.serving import Portrait, current_portraits, promote_asset
from portrait_pipeline.defs.assets import player_portraits
from portrait_pipeline.defs.io_managers import PortraitIOManager
from portrait_pipeline.defs.manifest import build_manifest, portrait_manifest
from portrait_pipeline.defs.resources import DatabaseResource, GeminiResource, ImageStorageResource
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
    instance: dg.DagsterInstance,
) -> None:
    assert materialize_portraits(resources_for(database, storage, gemini), partition, config, instance).success


def portraits(
    database: DatabaseResource, storage: ImageStorageResource, *partitions: tuple[str, str]
) -> list[Portrait]:
    with database.session() as db:
        return [p for partition in partitions for p in current_portraits(db, storage.get_storage(), *partition)]


def materialize_manifest(storage: ImageStorageResource, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """The manifest as Dagster builds it: the portraits of every partition loaded through the image IO manager."""
    return dg.materialize(
        [player_portraits.to_source_asset(), portrait_manifest],
        selection=[portrait_manifest],
        instance=instance,
        resources={"storage": storage, "image_io_manager": PortraitIOManager(storage=storage)},
    )


def manifest_of(storage: ImageStorageResource, instance: dg.DagsterInstance) -> dict[str, Any]:
    assert materialize_manifest(storage, instance).success
    manifest: dict[str, Any] = json.loads(storage.get_storage().get(MANIFEST_KEY))
    return manifest


def entries(manifest: dict[str, Any]) -> dict[tuple[int, str], dict[str, Any]]:
    return {
        (player["player_id"], style): image
        for player in manifest["players"]
        for style, image in player["images"].items()
    }


def test_manifest_lists_exactly_the_current_images(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    for partition, config in (
        (("2025", "default"), {"player_ids": [1, 2, 3]}),
        (("2025", "comic"), {"player_ids": [1]}),
        (("2026", "retro"), {"limit": 2}),
    ):
        generate(roster_loaded, storage_resource, offline_gemini, partition, config, instance)
    manifest = manifest_of(storage_resource, instance)
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
    instance = dg.DagsterInstance.ephemeral()
    for size in ("512", "1K"):
        config = {"player_ids": [1], "image_size": size}
        generate(roster_loaded, storage_resource, offline_gemini, ("2025", "default"), config, instance)
    with roster_loaded.session() as db:
        small = db.scalars(
            select(PlayerImageAsset).where(PlayerImageAsset.player_id == 1, PlayerImageAsset.width == 400)
        ).one()
        promote_asset(db, storage_resource.get_storage(), small.id)
    image = entries(manifest_of(storage_resource, instance))[(1, "default")]
    assert (image["url"], image["sha256"], image["width"], image["height"]) == (
        small.public_url,
        small.content_sha256,
        400,
        500,
    )


def test_manifest_of_partitions_never_materialized_is_empty(storage_resource: ImageStorageResource) -> None:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("draft_years", ["2025", "2026"])
    assert manifest_of(storage_resource, instance) == {"version": 1, "count": 0, "players": []}


def test_portrait_manifest_asset_writes_the_json_and_reports_where(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    generate(roster_loaded, storage_resource, offline_gemini, ("2025", "default"), {"player_ids": [1, 2]}, instance)
    result = materialize_manifest(storage_resource, instance)
    assert result.success
    storage = storage_resource.get_storage()
    written = json.loads(storage.get(MANIFEST_KEY))
    assert written == build_manifest(portraits(roster_loaded, storage_resource, ("2025", "default")))
    metadata = result.asset_materializations_for_node("portrait_manifest")[0].metadata
    assert metadata["count"].value == 2
    assert metadata["key"].value == MANIFEST_KEY
    assert metadata["public_url"].value == storage.public_url(MANIFEST_KEY)


def test_portrait_manifest_is_unpartitioned_downstream_of_the_portraits_and_kept_fresh() -> None:
    assert portrait_manifest.partitions_def is None
    assert dg.AssetKey("player_portraits") in portrait_manifest.dependency_keys
    condition = portrait_manifest.automation_conditions_by_key[portrait_manifest.key]
    assert condition is not None and "any_deps_updated" in str(condition)


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
    assert materialize_manifest(storage, dg.DagsterInstance.ephemeral()).success
    head = seaweed.client().head_object(Bucket=seaweed.bucket, Key=MANIFEST_KEY)
    assert head["ContentType"] == "application/json"
    assert head["CacheControl"] == ALIAS_CACHE_CONTROL
    assert json.loads(storage.get_storage().get(MANIFEST_KEY)) == {"version": 1, "count": 0, "players": []}


def test_a_new_portrait_partition_makes_the_manifest_due(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("draft_years", ["2025"])
    assets = dg.Definitions(
        assets=[player_portraits, portrait_manifest],
        resources=resources_for(roster_loaded, storage_resource, offline_gemini),
    )
    first = dg.evaluate_automation_conditions(defs=assets, instance=instance)
    assert materialize_manifest(storage_resource, instance).success  # whatever the first tick asked, now done
    quiet = dg.evaluate_automation_conditions(defs=assets, instance=instance, cursor=first.cursor)
    assert quiet.get_num_requested(portrait_manifest.key) == 0
    generate(roster_loaded, storage_resource, offline_gemini, ("2025", "default"), {"player_ids": [1]}, instance)
    due = dg.evaluate_automation_conditions(defs=assets, instance=instance, cursor=quiet.cursor)
    assert due.get_num_requested(portrait_manifest.key) == 1
