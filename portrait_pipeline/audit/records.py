"""The audit trail: snapshots per batch, one asset row per player, and which image is current."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portrait_pipeline.audit import queries
from portrait_pipeline.audit.models import (
    APPROVED,
    DEFAULT_VARIANT,
    PENDING,
    REJECTED,
    ImageQualityScore,
    Player,
    PlayerImageAsset,
    PlayerImageSnapshot,
    utcnow,
)
from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.storage import StoredObject


@dataclass(frozen=True)
class SnapshotSpec:
    """What a batch run is, before it generates anything."""

    run_key: str
    style: str
    cohort: str
    draft_year: int | None
    population_size: int
    system_prompt: str
    system_prompt_version: str
    image_size: str
    model: str
    estimated_cost_usd: Decimal
    notes: str | None = None
    dagster_run_id: str | None = None
    partition_key: str | None = None
    prompt_variant: str = DEFAULT_VARIANT  # prompts.PROMPT_VARIANTS; system_prompt(_version) are the variant's


@dataclass(frozen=True)
class GenerationRecord:
    """Everything the audit keeps about one player's attempt, success or failure."""

    user_prompt: str
    model: str
    system_prompt_version: str
    generation_time_sec: float
    likeness_description: str | None = None
    reference_image_url: str | None = None
    reference_sha256: str | None = None
    width: int | None = None
    height: int | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: Decimal = Decimal("0")
    replaces_asset_id: int | None = None  # the rejected image this attempt corrects (the review desk)
    prompt_variant: str = DEFAULT_VARIANT  # the snapshot's; system_prompt_version is that variant's version


@dataclass(frozen=True)
class QualityRecord:
    """The judge's scoring of one image (status `scored`) or why there is none (`not_scored`), as audited."""

    status: str
    rubric_version: str
    score: int | None = None
    passed: bool | None = None
    criteria: list[dict[str, Any]] | None = None  # {"name", "passed", "reason"} per criterion
    reason: str | None = None
    judge_model: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: Decimal = Decimal("0")


def start_snapshot(db: Session, spec: SnapshotSpec) -> PlayerImageSnapshot:
    """A new snapshot row; `version` is one more than the run key's last."""
    last = db.scalar(select(func.max(PlayerImageSnapshot.version)).where(PlayerImageSnapshot.run_key == spec.run_key))
    snapshot = PlayerImageSnapshot(**spec.__dict__, version=(last or 0) + 1, status="running", is_current=False)
    db.add(snapshot)
    db.flush()
    return snapshot


def record_failure(
    db: Session,
    snapshot: PlayerImageSnapshot,
    player: Player,
    style: str,
    record: GenerationRecord,
    reason: str,
    quality: QualityRecord | None = None,
) -> PlayerImageAsset:
    """A failed attempt's row, with what it cost; `quality` when its image was judged before storing failed."""
    asset = PlayerImageAsset(
        snapshot_id=snapshot.id,
        player_id=player.id,
        style=style,
        status="failed",
        is_current=False,
        error_message=reason,
        used_likeness_ref=record.likeness_description is not None,
        dagster_run_id=snapshot.dagster_run_id,
        **record.__dict__,
    )
    db.add(asset)
    _add_score(db, asset, snapshot, quality)
    db.commit()
    return asset


def record_success(
    db: Session,
    snapshot: PlayerImageSnapshot,
    player: Player,
    style: str,
    record: GenerationRecord,
    stored: StoredObject,
    publish: Callable[[], object] | None = None,
    *,
    pending_review: bool = False,
    quality: QualityRecord | None = None,
) -> PlayerImageAsset:
    """Commit the asset row (and its `quality` score, if judged) and make it the player's current image for the
    style, in one transaction.

    With `pending_review` the row is committed `pending` and nothing else changes: the current image, its alias
    (`publish` is not called) and so the manifest keep serving the last approved image until someone approves.

    `publish` (writing the serving alias) runs while the player's row is locked, just before the commit. Not on
    SQLite: its lock is the whole database's, and holding it through a network put queues every player behind
    the store (a dying S3 held it 1.5 s a player; the players behind waited out the busy timeout and their paid
    answers got no row). There the alias is written just before the transaction; the run's claim on the
    (player, style) keeps a second run from writing it meanwhile.
    """
    if pending_review:
        publish = None
    if publish is not None and db.get_bind().dialect.name == "sqlite":
        publish()
        publish = None
    asset = PlayerImageAsset(
        snapshot_id=snapshot.id,
        player_id=player.id,
        style=style,
        status="succeeded",
        is_current=False,
        s3_key=stored.key,
        s3_bucket=stored.bucket,
        public_url=stored.public_url,
        content_sha256=stored.sha256,
        bytes=stored.size,
        used_likeness_ref=record.likeness_description is not None,
        dagster_run_id=snapshot.dagster_run_id,
        review_status=PENDING if pending_review else APPROVED,
        **record.__dict__,
    )
    db.add(asset)
    db.flush()
    _add_score(db, asset, snapshot, quality)
    if not pending_review:
        _make_current(db, asset, publish)
    db.commit()
    return asset


def _add_score(
    db: Session, asset: PlayerImageAsset, snapshot: PlayerImageSnapshot, quality: QualityRecord | None
) -> None:
    """The image's quality row, in the asset row's transaction."""
    if quality is None:
        return
    db.flush()  # the asset's id
    fields = {**quality.__dict__, "criteria": json.dumps(quality.criteria) if quality.criteria else None}
    db.add(ImageQualityScore(asset_id=asset.id, dagster_run_id=snapshot.dagster_run_id, **fields))


def quality_retry_snapshot(db: Session, parent: PlayerImageSnapshot, round_: int) -> PlayerImageSnapshot:
    """The snapshot that holds a run's automatic quality retries of round `round_` (found, or made once).

    An asset row is one player in one snapshot, so a retry's row needs a snapshot of its own: run key
    `{parent's}:quality-retry-{round}`, the parent's version and run id. It is never current (the partition's checks
    read the parent); `count_retries` keeps its counts as retries land. Two players of the run may ask at once: the
    unique (run_key, version) lets one create it and the other find it.
    """
    run_key = f"{parent.run_key}:quality-retry-{round_}"
    query = select(PlayerImageSnapshot).where(
        PlayerImageSnapshot.run_key == run_key, PlayerImageSnapshot.version == parent.version
    )
    found = db.scalar(query)
    if found is not None:
        return found
    fields = ("style", "cohort", "draft_year", "system_prompt", "system_prompt_version", "image_size", "model")
    snapshot = PlayerImageSnapshot(
        **{name: getattr(parent, name) for name in fields},
        run_key=run_key,
        version=parent.version,
        is_current=False,
        population_size=0,
        estimated_cost_usd=Decimal("0"),
        notes=f"automatic quality retries (round {round_}) of snapshot {parent.id}",
        status="running",
        dagster_run_id=parent.dagster_run_id,
        partition_key=parent.partition_key,
        prompt_variant=parent.prompt_variant,
    )
    db.add(snapshot)
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        return db.scalars(query).one()
    return snapshot


def count_retries(db: Session, snapshot: PlayerImageSnapshot) -> None:
    """Recount a quality-retry snapshot after each retry, so it is closed whenever the run stops."""
    _close(db, snapshot, "succeeded")
    succeeded, failed = snapshot.success_count, snapshot.failure_count
    snapshot.population_size = succeeded + failed
    snapshot.status = "failed" if not succeeded else "partial" if failed else "succeeded"
    db.commit()


def _make_current(db: Session, asset: PlayerImageAsset, publish: Callable[[], object] | None) -> None:
    # Lock the player row so two promotions of one player serialize (PostgreSQL; SQLite serializes writers).
    db.execute(select(Player.id).where(Player.id == asset.player_id).with_for_update())
    db.execute(
        update(PlayerImageAsset)
        .where(
            PlayerImageAsset.player_id == asset.player_id,
            PlayerImageAsset.style == asset.style,
            PlayerImageAsset.is_current.is_(True),
            PlayerImageAsset.id != asset.id,
        )
        .values(is_current=False)
    )
    db.flush()
    asset.is_current = True
    db.flush()
    if publish is not None:
        publish()


def promote(db: Session, asset_id: int, publish: Callable[[], object] | None = None) -> PlayerImageAsset:
    """Make an earlier successful generation current again (a reviewer's rollback)."""
    asset = succeeded_asset(db, asset_id, "promote")
    _make_current(db, asset, publish)
    db.commit()
    return asset


def mark_approved(asset: PlayerImageAsset, reviewer: str) -> None:
    """Record who approved the image and when; the caller makes it current in the same transaction."""
    asset.review_status, asset.reviewed_by, asset.reviewed_at = APPROVED, reviewer, utcnow()


def reject(db: Session, asset_id: int, reviewer: str, reason: str, guidance: str | None = None) -> PlayerImageAsset:
    """Mark a generated image rejected, with why and an optional correction for the player's next prompt.

    A rejected image that is current stays live until another is approved: the serving alias never goes blank.
    """
    asset = succeeded_asset(db, asset_id, "reject")
    if not reason.strip():
        raise InvalidInput(f"asset {asset_id}: a rejection needs a reason")
    asset.review_status, asset.reviewed_by, asset.reviewed_at = REJECTED, reviewer, utcnow()
    asset.review_reason = reason.strip()
    asset.guidance = guidance.strip() if guidance and guidance.strip() else None
    db.commit()
    return asset


def succeeded_asset(db: Session, asset_id: int, purpose: str) -> PlayerImageAsset:
    """The asset row of a generation that produced an image, or a one-line error saying why not."""
    asset = db.get(PlayerImageAsset, asset_id)
    if asset is None:
        raise InvalidInput(f"asset {asset_id}: no such image")
    if asset.status != "succeeded" or not asset.s3_key:
        raise InvalidInput(f"asset {asset_id}: that generation failed, there is no image to {purpose}")
    return asset


def finish_snapshot(db: Session, snapshot_id: int, *, skipped: int, status: str) -> PlayerImageSnapshot:
    """Count the outcomes from the asset rows and make the snapshot current for its (draft year, style).

    A run in which every attempt failed never displaces the last good snapshot, nor does an interrupted one
    (like a killed run's, closed by `close_interrupted_snapshots`), nor a trial run (a prompt experiment's).
    """
    snapshot = db.get_one(PlayerImageSnapshot, snapshot_id)
    _close(db, snapshot, status)
    snapshot.skipped_count = skipped
    trial = queries.is_trial_snapshot(snapshot.run_key, snapshot.prompt_variant)
    if status != "interrupted" and not trial and (snapshot.success_count or not snapshot.failure_count):
        db.execute(
            update(PlayerImageSnapshot)
            .where(
                PlayerImageSnapshot.draft_year.is_(None)
                if snapshot.draft_year is None
                else PlayerImageSnapshot.draft_year == snapshot.draft_year,
                PlayerImageSnapshot.style == snapshot.style,
                PlayerImageSnapshot.id != snapshot_id,
            )
            .values(is_current=False)
        )
        snapshot.is_current = True
    db.commit()
    return snapshot


def close_interrupted_snapshots(
    db: Session, partition_key: str, run_has_ended: Callable[[str], bool]
) -> list[PlayerImageSnapshot]:
    """Snapshots of this partition still `running` although their Dagster run has ended: mark them `interrupted`.

    A run killed outright (SIGKILL, OOM, a lost machine) never closes its snapshot; once Dagster knows the run is
    over (run monitoring, or a forced termination in the UI), the next run of the partition closes it with the
    counts of what it did commit. Such a snapshot never becomes current.
    """
    running = db.scalars(
        select(PlayerImageSnapshot).where(
            PlayerImageSnapshot.status == "running",
            PlayerImageSnapshot.partition_key == partition_key,
            PlayerImageSnapshot.dagster_run_id.is_not(None),
        )
    ).all()
    closed = [snapshot for snapshot in running if run_has_ended(snapshot.dagster_run_id or "")]
    for snapshot in closed:
        _close(db, snapshot, "interrupted")
    db.commit()
    return closed


def _close(db: Session, snapshot: PlayerImageSnapshot, status: str) -> None:
    """Count the snapshot's outcomes from its asset rows, set its status and finish time."""
    counts = dict(
        db.execute(
            select(PlayerImageAsset.status, func.count())
            .where(PlayerImageAsset.snapshot_id == snapshot.id)
            .group_by(PlayerImageAsset.status)
        ).all()
    )
    snapshot.success_count = counts.get("succeeded", 0)
    snapshot.failure_count = counts.get("failed", 0)
    snapshot.status = status
    snapshot.finished_at = utcnow()
