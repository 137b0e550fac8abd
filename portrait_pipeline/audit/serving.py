"""What is live: the seed's `photo_url` backed by the audit, each partition's current portraits and their index in
storage, rollback, and a player's history."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from portrait_pipeline import naming
from portrait_pipeline.audit import queries
from portrait_pipeline.audit import records as audit
from portrait_pipeline.audit.models import PENDING, Player, PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.errors import InvalidInput, PortraitPipelineError, StorageError
from portrait_pipeline.storage import ImageStorage, StoredObject, sha256_hex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Portrait:
    """A player's current image in storage: what a partition's index lists and downstream assets read."""

    player_id: int
    slug: str
    display_name: str
    style: str
    key: str
    current_key: str
    public_url: str
    sha256: str
    width: int
    height: int
    asset_id: int
    updated: str = ""  # when the image was generated (ISO 8601, UTC); absent from indexes of older runs


def current_portraits(db: Session, storage: ImageStorage, draft_year_key: str, style: str) -> list[Portrait]:
    """Every current image of a partition, in player order."""
    return [
        Portrait(
            player_id=player.id,
            slug=player.slug,
            display_name=player.display_name,
            style=style,
            key=asset.s3_key or "",
            current_key=naming.current_key(player.id, player.slug, style),
            public_url=asset.public_url or storage.public_url(asset.s3_key or ""),
            sha256=asset.content_sha256 or "",
            width=asset.width or 0,
            height=asset.height or 0,
            asset_id=asset.id,
            updated=asset.created_at.isoformat(),
        )
        for asset, player, _ in queries.current_images(db, draft_year_key, style)
    ]


def write_index(storage: ImageStorage, draft_year_key: str, style: str, portraits: list[Portrait]) -> StoredObject:
    """The partition's index: its current portraits as JSON, which downstream assets read instead of the database."""
    payload = json.dumps([asdict(portrait) for portrait in portraits], indent=1).encode()
    key = naming.partition_index_key(draft_year_key, style)
    return storage.put(key, payload, immutable=False, content_type="application/json")


def read_index(storage: ImageStorage, draft_year_key: str, style: str) -> list[Portrait]:
    """A partition's indexed portraits; none for a partition that was never materialized."""
    key = naming.partition_index_key(draft_year_key, style)
    if not storage.exists(key):
        return []
    return [Portrait(**row) for row in json.loads(storage.get(key))]


def resolve_photo_url(db: Session, storage: ImageStorage, player: Player, style: str = "default") -> str:
    """The current image from the audit, else the naming-convention files (new, legacy; style, default), else a
    placeholder: the seed's lookup order."""
    asset = queries.current_asset(db, player.id, style)
    if asset is not None and asset.s3_key:
        return asset.public_url or storage.public_url(asset.s3_key)
    return naming.photo_url(storage, player.id, player.slug, player.display_name, style)


def promote_asset(db: Session, storage: ImageStorage, asset_id: int) -> PlayerImageAsset:
    """Make an earlier generation current again and point the serving alias at its bytes.

    The alias is written while the player row is locked, just before the commit, so two racing promotions
    leave the alias showing the image the database calls current (PostgreSQL; SQLite serializes writers).
    """
    asset = audit.succeeded_asset(db, asset_id, "promote")
    if asset.review_status == PENDING:
        raise InvalidInput(f"asset {asset_id}: it is pending review; use `portrait-pipeline review approve`")
    if is_trial(asset):
        raise InvalidInput(
            f"asset {asset_id}: a trial image (prompt variant {asset.prompt_variant}, run {asset.snapshot.run_key}) "
            "never goes live; to serve a variant, promote it in prompts.py (a code change with a version bump) and "
            "regenerate"
        )
    player = db.get_one(Player, asset.player_id)
    data = _read_audited(storage, asset.s3_key or "", asset.content_sha256)
    previous = queries.current_asset(db, player.id, asset.style)
    alias = naming.current_key(player.id, player.slug, asset.style)
    try:
        promoted = audit.promote(db, asset_id, publish=partial(storage.put, alias, data, immutable=False))
    except BaseException:
        db.rollback()
        _restore_alias(storage, alias, previous)
        raise
    # The partition's index follows, so the manifest (built from indexes) serves the promoted image too.
    year_key = queries.draft_year_key(player.draft_year)
    write_index(storage, year_key, asset.style, current_portraits(db, storage, year_key, asset.style))
    return promoted


def approve(db: Session, storage: ImageStorage, asset_id: int, reviewer: str) -> PlayerImageAsset:
    """A reviewer's yes: the image becomes current (alias and partition index follow, as for a promotion) and the
    row says who approved it and when, in the same commit. Only an image waiting for review can be approved.
    A trial image (a prompt experiment's) is only marked approved: the verdict counts in the experiment's report."""
    asset = audit.succeeded_asset(db, asset_id, "approve")
    if asset.review_status != PENDING:
        raise InvalidInput(f"asset {asset_id}: it is {asset.review_status}, not pending review; use promote instead")
    audit.mark_approved(asset, reviewer)
    if is_trial(asset):
        db.commit()
        return asset
    return promote_asset(db, storage, asset_id)


def is_trial(asset: PlayerImageAsset) -> bool:
    """Whether the image belongs to a trial snapshot (see `queries.is_trial_snapshot`): it never goes live."""
    return queries.is_trial_snapshot(asset.snapshot.run_key, asset.prompt_variant)


def _read_audited(storage: ImageStorage, key: str, sha256: str | None) -> bytes:
    data = storage.get(key)
    if sha256 and sha256_hex(data) != sha256:
        raise StorageError(f"{key}: stored bytes differ from the audited sha256; refusing to serve them")
    return data


def _restore_alias(storage: ImageStorage, alias: str, previous: PlayerImageAsset | None) -> None:
    """Best effort: the promotion did not commit, so the alias goes back to the image still current."""
    if previous is None or not previous.s3_key:
        return
    try:
        storage.put(alias, storage.get(previous.s3_key), immutable=False)
    except PortraitPipelineError:
        log.exception("could not restore %s after a failed promotion", alias)


@dataclass(frozen=True)
class HistoryEntry:
    """One generation of a player's portrait, as the admin history lists it."""

    asset_id: int
    created_at: datetime
    style: str
    run_key: str
    snapshot_version: int
    model: str
    status: str
    is_current: bool
    prompt_version: str
    used_likeness: bool
    image_url: str | None
    error_message: str | None


def history(db: Session, player_id: int) -> list[HistoryEntry]:
    """Every generation of a player, oldest first, failures included."""
    if db.get(Player, player_id) is None:
        raise InvalidInput(f"player {player_id}: no such player")
    rows = db.execute(
        select(PlayerImageAsset, PlayerImageSnapshot.run_key, PlayerImageSnapshot.version)
        .join(PlayerImageSnapshot, PlayerImageSnapshot.id == PlayerImageAsset.snapshot_id)
        .where(PlayerImageAsset.player_id == player_id)
        .order_by(PlayerImageAsset.created_at, PlayerImageAsset.id)
    ).all()
    return [
        HistoryEntry(
            asset_id=asset.id,
            created_at=asset.created_at,
            style=asset.style,
            run_key=run_key,
            snapshot_version=version,
            model=asset.model,
            status=asset.status,
            is_current=asset.is_current,
            prompt_version=asset.system_prompt_version,
            used_likeness=asset.used_likeness_ref,
            image_url=asset.public_url,
            error_message=asset.error_message,
        )
        for asset, run_key, version in rows
    ]
