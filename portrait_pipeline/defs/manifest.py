"""The portrait manifest: one JSON file naming every current image, its URL, checksum and size."""

import json
from typing import Any

import dagster as dg
from sqlalchemy import select
from sqlalchemy.orm import Session

from portrait_pipeline.audit.models import Player, PlayerImageAsset
from portrait_pipeline.defs.assets import player_portraits
from portrait_pipeline.defs.resources import DatabaseResource, ImageStorageResource
from portrait_pipeline.naming import MANIFEST_KEY
from portrait_pipeline.storage import ImageStorage

MANIFEST_VERSION = 1


def build_manifest(db: Session, storage: ImageStorage) -> dict[str, Any]:
    """Every current image, grouped by player: style → URL, sha256, width, height, when it was generated.

    URLs are the content-addressed history URLs, so each one always serves the bytes its sha256 names.
    """
    rows = db.execute(
        select(PlayerImageAsset, Player)
        .join(Player, Player.id == PlayerImageAsset.player_id)
        .where(PlayerImageAsset.is_current.is_(True), PlayerImageAsset.status == "succeeded")
        .order_by(Player.id, PlayerImageAsset.style)
    ).all()
    players: dict[int, dict[str, Any]] = {}
    for asset, player in rows:
        entry = players.setdefault(player.id, {"player_id": player.id, "slug": player.slug, "images": {}})
        entry["images"][asset.style] = {
            "url": asset.public_url or storage.public_url(asset.s3_key or ""),
            "sha256": asset.content_sha256,
            "width": asset.width,
            "height": asset.height,
            "updated": asset.created_at.isoformat(),
        }
    return {"version": MANIFEST_VERSION, "count": len(rows), "players": list(players.values())}


@dg.asset(deps=[player_portraits], group_name="portraits", kinds={"json"})
def portrait_manifest(database: DatabaseResource, storage: ImageStorageResource) -> dg.MaterializeResult:
    """Every current portrait's URL, sha256 and size in one JSON file, for the app and the CDN."""
    image_storage = storage.get_storage()
    with database.session() as db:
        manifest = build_manifest(db, image_storage)
    payload = json.dumps(manifest, indent=1, sort_keys=True).encode()
    stored = image_storage.put(MANIFEST_KEY, payload, immutable=False, content_type="application/json")
    return dg.MaterializeResult(
        metadata={
            "count": manifest["count"],
            "players": len(manifest["players"]),
            "key": stored.key,
            "public_url": dg.MetadataValue.url(stored.public_url),
            "sha256": stored.sha256,
        }
    )
