"""The `player_portraits` asset, materialized with Dagster on an ephemeral instance, on both databases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from sqlalchemy import func, select

from portrait_pipeline import images, naming
from portrait_pipeline.audit.models import Player, PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.defs.assets import player_portraits
from portrait_pipeline.defs.io_managers import PortraitIOManager
from portrait_pipeline.defs.partitions import portrait_partition_key
from portrait_pipeline.defs.resources import DatabaseResource, GeminiResource, ImageStorageResource
from portrait_pipeline.prompts import SYSTEM_PROMPT_VERSION
from tests.helpers import materialize_portraits, resources_for


def materialize(
    database: DatabaseResource,
    storage: ImageStorageResource,
    gemini: GeminiResource,
    partition: tuple[str, str],
    config: dict[str, Any] | None = None,
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInProcessResult:
    return materialize_portraits(resources_for(database, storage, gemini), partition, config, instance)


def test_materializing_a_partition_stores_every_player_and_audits_it(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    result = materialize(roster_loaded, storage_resource, offline_gemini, ("2025", "default"), {"run_key": "t1"})
    assert result.success
    storage = storage_resource.get_storage()
    with roster_loaded.session() as db:
        players = list(db.scalars(select(Player).where(Player.draft_year == 2025)))
        snapshot = db.scalars(select(PlayerImageSnapshot)).one()
        assets = list(db.scalars(select(PlayerImageAsset)))
    assert snapshot.run_key == "t1" and snapshot.version == 1 and snapshot.is_current
    assert snapshot.success_count == len(players) == 20 and snapshot.failure_count == 0
    assert snapshot.model == "offline-renderer" and snapshot.estimated_cost_usd == 0
    assert snapshot.dagster_run_id == result.run_id and snapshot.partition_key == "2025|default"
    assert {asset.player_id for asset in assets} == {player.id for player in players}
    slugs = {player.id: player.slug for player in players}
    for asset in assets:
        assert asset.is_current and asset.status == "succeeded" and asset.s3_key
        data = storage.get(asset.s3_key)
        assert images.inspect(data).width == 800 and images.inspect(data).height == 1000
        assert storage.get(naming.current_key(asset.player_id, slugs[asset.player_id], "default")) == data
        assert images.png_text(data)["portrait:model"] == "offline-renderer"

    materialization = result.asset_materializations_for_node("player_portraits")[0]
    metadata = materialization.metadata
    assert metadata["generated"].value == 20
    assert metadata["prompt_version"].value == SYSTEM_PROMPT_VERSION
    assert "data:image/png;base64," in str(metadata["preview"].value)
    assert metadata["images"].value == 20
    table = metadata["players"]
    assert isinstance(table, dg.TableMetadataValue)
    records = [record.data for record in table.records]
    assert [(r["status"], r["prompt_version"]) for r in records] == [("succeeded", SYSTEM_PROMPT_VERSION)] * 20
    assert "Tomás Ibáñez" in {r["player"] for r in records}
    assert len({r["player_id"] for r in records}) == 20 and all(r["slug"] and r["image"] for r in records)


def test_contact_sheet_holds_one_tile_per_image_and_is_stored_next_to_them(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    result = materialize(roster_loaded, storage_resource, offline_gemini, ("2026", "vector"), {"limit": 7})
    assert result.success
    metadata = result.asset_materializations_for_node("player_portraits")[0].metadata
    key = "contact-sheets/vector/2026.png"
    assert metadata["contact_sheet"].value == storage_resource.get_storage().public_url(key)
    sheet = images.inspect(storage_resource.get_storage().get(key))
    # 7 tiles of 160x200 (+20 px for the name), 6 to a row: two rows.
    assert (sheet.width, sheet.height) == (6 * 160, 2 * 220)


def test_missing_only_skips_players_who_have_a_current_image(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    first = materialize(roster_loaded, storage_resource, offline_gemini, ("2026", "comic"), {"limit": 5})
    assert first.success
    second = materialize(roster_loaded, storage_resource, offline_gemini, ("2026", "comic"), {"missing_only": True})
    assert second.success
    metadata = second.asset_materializations_for_node("player_portraits")[0].metadata
    assert metadata["skipped"].value == 5
    assert metadata["generated"].value == 10
    with roster_loaded.session() as db:
        current = db.scalar(
            select(func.count()).select_from(PlayerImageAsset).where(PlayerImageAsset.is_current.is_(True))
        )
    assert current == 15


def test_repeated_run_key_gets_the_next_version(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    for _ in range(2):
        config = {"run_key": "draft_2025_v1", "player_ids": [1, 2]}
        assert materialize(roster_loaded, storage_resource, offline_gemini, ("2025", "retro"), config).success
    with roster_loaded.session() as db:
        snapshots = list(db.scalars(select(PlayerImageSnapshot).order_by(PlayerImageSnapshot.id)))
        current_per_player = db.execute(
            select(PlayerImageAsset.player_id, func.count())
            .where(PlayerImageAsset.is_current.is_(True))
            .group_by(PlayerImageAsset.player_id)
        ).all()
    assert [(s.run_key, s.version, s.is_current) for s in snapshots] == [
        ("draft_2025_v1", 1, False),
        ("draft_2025_v1", 2, True),
    ]
    assert sorted(current_per_player) == [(1, 1), (2, 1)]


def test_dry_run_writes_nothing_and_reports_the_estimate(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    result = materialize(roster_loaded, storage_resource, offline_gemini, ("2025", "vector"), {"dry_run": True})
    assert result.success
    assert result.asset_materializations_for_node("player_portraits") == []
    observation = result.asset_observations_for_node("player_portraits")[0]
    assert observation.metadata["would_generate"].value == 20
    with roster_loaded.session() as db:
        assert db.scalar(select(func.count()).select_from(PlayerImageSnapshot)) == 0
    assert not Path(storage_resource.local_dir).exists()


def test_downstream_assets_load_the_png_bytes_back(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    config = {"player_ids": [1, 2, 3]}
    assert materialize(roster_loaded, storage_resource, offline_gemini, ("2025", "default"), config, instance).success
    manager = PortraitIOManager(storage=storage_resource)
    context = dg.build_input_context(
        asset_key=dg.AssetKey("player_portraits"),
        partition_key=str(portrait_partition_key("2025", "default")),
        asset_partitions_def=player_portraits.partitions_def,
        instance=instance,
    )
    loaded = manager.load_input(context)
    assert sorted(loaded) == [(1, "default"), (2, "default"), (3, "default")]
    assert all(images.inspect(loaded[key]).width == 800 for key in loaded)


def test_unmigrated_database_fails_the_run_with_the_fix(
    tmp_path: Path, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    database = DatabaseResource(url=f"sqlite:///{tmp_path / 'empty.db'}")
    result = materialize(database, storage_resource, offline_gemini, ("2025", "default"))
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None and "portrait-pipeline db upgrade" in str(failure.cause or failure.message)


def test_missing_only_trusts_legacy_files_but_not_an_alias_without_an_audit_row(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    storage = storage_resource.get_storage()
    storage.put(naming.legacy_key(1, "default"), b"legacy jpeg bytes", immutable=False)
    # What a run killed between writing the alias and committing its row leaves behind.
    storage.put(naming.current_key(2, "tomas-ibanez", "default"), b"orphan", immutable=False)
    config = {"missing_only": True, "player_ids": [1, 2]}
    result = materialize(roster_loaded, storage_resource, offline_gemini, ("2025", "default"), config)
    assert result.success
    metadata = result.asset_materializations_for_node("player_portraits")[0].metadata
    assert (metadata["skipped"].value, metadata["generated"].value) == (1, 1)
    assert images.inspect(storage.get(naming.current_key(2, "tomas-ibanez", "default"))).width == 800
