"""The portrait manifest: one JSON file naming every current image, its URL, checksum and size."""

import json
from collections.abc import Iterable
from typing import Any

import dagster as dg

from portrait_pipeline.audit.serving import Portrait
from portrait_pipeline.defs.io_managers import StoredPortraits
from portrait_pipeline.defs.resources import ImageStorageResource
from portrait_pipeline.naming import MANIFEST_KEY

MANIFEST_VERSION = 1


def build_manifest(portraits: Iterable[Portrait]) -> dict[str, Any]:
    """Every current image, grouped by player: style → URL, sha256, width, height, when it was generated.

    URLs are the content-addressed history URLs, so each one always serves the bytes its sha256 names.
    """
    ordered = sorted(portraits, key=lambda p: (p.player_id, p.style))
    players: dict[int, dict[str, Any]] = {}
    for portrait in ordered:
        entry = players.setdefault(portrait.player_id, {"player_id": portrait.player_id, "slug": portrait.slug})
        entry.setdefault("images", {})[portrait.style] = {
            "url": portrait.public_url,
            "sha256": portrait.sha256,
            "width": portrait.width,
            "height": portrait.height,
            "updated": portrait.updated,
        }
    return {"version": MANIFEST_VERSION, "count": len(ordered), "players": list(players.values())}


@dg.asset(
    ins={"portraits": dg.AssetIn("player_portraits")},
    group_name="portraits",
    kinds={"json"},
    # Rebuilt whenever any portrait partition is materialized (the daemon's automation sensor); a partition that
    # was never made does not hold it back, hence eager without its "every upstream exists" clause.
    automation_condition=dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing()),
)
def portrait_manifest(storage: ImageStorageResource, portraits: StoredPortraits) -> dg.MaterializeResult:
    """Every current portrait's URL, sha256 and size in one JSON file, for the app and the CDN."""
    manifest = build_manifest(portraits.portraits)
    payload = json.dumps(manifest, indent=1, sort_keys=True).encode()
    stored = storage.get_storage().put(MANIFEST_KEY, payload, immutable=False, content_type="application/json")
    return dg.MaterializeResult(
        metadata={
            "count": manifest["count"],
            "players": len(manifest["players"]),
            "key": stored.key,
            "public_url": dg.MetadataValue.url(stored.public_url),
            "sha256": stored.sha256,
        }
    )
