"""The review desk: with PORTRAIT_REQUIRE_REVIEW a new image waits, the old one stays live until approval."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pytest
from sqlalchemy import select

from portrait_pipeline import naming
from portrait_pipeline.audit import records as audit
from portrait_pipeline.audit import serving
from portrait_pipeline.audit.models import APPROVED, PENDING, REJECTED, Player, PlayerImageAsset
from portrait_pipeline.defs.manifest import build_manifest
from portrait_pipeline.defs.resources import DatabaseResource, GeminiResource, ImageStorageResource, PortraitSettings
from portrait_pipeline.defs.sensors import missing_by_draft_year
from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.generation.offline import OfflineRenderer
from portrait_pipeline.generation.partition import PartitionRequest, plan_partition
from portrait_pipeline.storage import sha256_hex
from tests.helpers import materialize_portraits, resources_for

PARTITION = ("2025", "default")


def generate(
    database: DatabaseResource,
    storage: ImageStorageResource,
    gemini: GeminiResource,
    player_ids: list[int],
    *,
    review: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    resources = resources_for(database, storage, gemini, settings=PortraitSettings(require_review=review))
    config = {"player_ids": player_ids, **(extra or {})}
    result = materialize_portraits(resources, PARTITION, config, dg.DagsterInstance.ephemeral())
    assert result.success


def assets_of(database: DatabaseResource, player_id: int) -> list[PlayerImageAsset]:
    with database.session() as db:
        rows = db.scalars(
            select(PlayerImageAsset).where(PlayerImageAsset.player_id == player_id).order_by(PlayerImageAsset.id)
        ).all()
        db.expunge_all()
        return list(rows)


def live(database: DatabaseResource, storage: ImageStorageResource, player_id: int) -> dict[str, Any]:
    """Everything that serves a player's default portrait: alias bytes, audit, index, manifest, photo_url."""
    store = storage.get_storage()
    with database.session() as db:
        player = db.get_one(Player, player_id)
        alias = sha256_hex(store.get(naming.current_key(player.id, player.slug, "default")))
        current = {p.player_id: p.asset_id for p in serving.current_portraits(db, store, *PARTITION)}
        url = serving.resolve_photo_url(db, store, player)
    indexed = serving.read_index(store, *PARTITION)
    manifest = {
        entry["player_id"]: entry["images"]["default"]["sha256"] for entry in build_manifest(indexed)["players"]
    }
    return {
        "alias_sha256": alias,
        "current_asset": current.get(player_id),
        "indexed_asset": {p.player_id: p.asset_id for p in indexed}.get(player_id),
        "manifest_sha256": manifest.get(player_id),
        "photo_url": url,
    }


def serving_of(asset: PlayerImageAsset) -> dict[str, Any]:
    return {
        "alias_sha256": asset.content_sha256,
        "current_asset": asset.id,
        "indexed_asset": asset.id,
        "manifest_sha256": asset.content_sha256,
        "photo_url": asset.public_url,
    }


def test_a_pending_image_stays_off_line_until_approved(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    generate(roster_loaded, storage_resource, offline_gemini, [1], review=False, extra={"image_size": "512"})
    generate(roster_loaded, storage_resource, offline_gemini, [1], review=True)
    old, new = assets_of(roster_loaded, 1)
    assert (old.review_status, old.is_current) == (APPROVED, True)
    assert (new.review_status, new.is_current, new.status) == (PENDING, False, "succeeded")
    assert new.content_sha256 != old.content_sha256
    assert live(roster_loaded, storage_resource, 1) == serving_of(old)

    with roster_loaded.session() as db:
        serving.approve(db, storage_resource.get_storage(), new.id, "art-director")
    assert live(roster_loaded, storage_resource, 1) == serving_of(new)
    old, new = assets_of(roster_loaded, 1)
    assert (new.review_status, new.reviewed_by, new.is_current, old.is_current) == (
        APPROVED,
        "art-director",
        True,
        False,
    )
    assert new.reviewed_at is not None


def test_without_review_images_are_approved_and_live_on_arrival(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    generate(roster_loaded, storage_resource, offline_gemini, [1], review=False)
    generate(roster_loaded, storage_resource, offline_gemini, [1], review=False, extra={"image_size": "512"})
    _, new = assets_of(roster_loaded, 1)
    assert new.review_status == APPROVED and live(roster_loaded, storage_resource, 1) == serving_of(new)


def test_a_player_pending_review_is_not_regenerated_by_missing_only_or_the_sensor(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    generate(roster_loaded, storage_resource, offline_gemini, [1], review=True)
    (pending,) = assets_of(roster_loaded, 1)
    assert pending.review_status == PENDING and not pending.is_current
    request = PartitionRequest("2025", "default", missing_only=True, player_ids=(1, 2))
    with roster_loaded.session() as db:
        plan = plan_partition(db, storage_resource.get_storage(), request, OfflineRenderer.pricing)
        before = missing_by_draft_year(db, ["2025"], "default")["2025"][0]
    assert [p.id for p in plan.skipped] == [1] and [p.id for p in plan.to_generate] == [2]

    with roster_loaded.session() as db:
        audit.reject(db, pending.id, "art-director", "wrong jersey")
        plan = plan_partition(db, storage_resource.get_storage(), request, OfflineRenderer.pricing)
        after = missing_by_draft_year(db, ["2025"], "default")["2025"][0]
    # Rejected, it no longer holds the player back: missing_only and the sensor make a new one.
    assert [p.id for p in plan.to_generate] == [1, 2] and after == before + 1


def test_review_refuses_what_it_cannot_do_and_changes_nothing(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    generate(roster_loaded, storage_resource, offline_gemini, [1], review=False)
    generate(roster_loaded, storage_resource, offline_gemini, [1], review=True)
    approved, pending = assets_of(roster_loaded, 1)
    store = storage_resource.get_storage()
    with roster_loaded.session() as db:
        with pytest.raises(InvalidInput, match=f"asset {approved.id}: it is approved, not pending review"):
            serving.approve(db, store, approved.id, "me")
        with pytest.raises(InvalidInput, match=f"asset {pending.id}: it is pending review"):
            serving.promote_asset(db, store, pending.id)
        with pytest.raises(InvalidInput, match=f"asset {pending.id}: a rejection needs a reason"):
            audit.reject(db, pending.id, "me", "  ")
        with pytest.raises(InvalidInput, match="asset 99999: no such image"):
            audit.reject(db, 99999, "me", "bad")
    assert [a.review_status for a in assets_of(roster_loaded, 1)] == [APPROVED, PENDING]
    assert live(roster_loaded, storage_resource, 1) == serving_of(approved)

    with roster_loaded.session() as db:
        audit.reject(db, pending.id, "me", "too dark", guidance="  brighter light  ")
    rejected = assets_of(roster_loaded, 1)[1]
    assert rejected.review_status == REJECTED
    assert (rejected.review_reason, rejected.guidance) == ("too dark", "brighter light")
    assert live(roster_loaded, storage_resource, 1) == serving_of(approved)
