"""Reads of the roster and the audit trail, each rule written once: draft years, current images, snapshots."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from portrait_pipeline.audit.models import (
    DEFAULT_VARIANT,
    NOT_SCORED,
    PENDING,
    REJECTED,
    SCORED,
    ImageQualityScore,
    Player,
    PlayerImageAsset,
    PlayerImageSnapshot,
)
from portrait_pipeline.errors import InvalidInput

UNDRAFTED = "undrafted"
EXPERIMENT_RUN_KEY_PREFIX = "experiment:"  # snapshots of `experiment run`: experiment:{name}:{variant}


def draft_year_key(draft_year: int | None) -> str:
    """The partition key of a draft year: the year, or `undrafted`."""
    return UNDRAFTED if draft_year is None else str(draft_year)


def parse_draft_year_key(key: str) -> int | None:
    if key == UNDRAFTED:
        return None
    if not re.fullmatch(r"[0-9]{4}", key):
        raise InvalidInput(f"draft year partition {key!r}: expected a year like 2025 or {UNDRAFTED!r}")
    return int(key)


def in_draft_years(column: InstrumentedAttribute[int | None], keys: Sequence[str]) -> ColumnElement[bool]:
    """Rows of these draft-year keys: `undrafted` means the column IS NULL."""
    years = [year for year in map(parse_draft_year_key, keys) if year is not None]
    conditions = [column.in_(years)] if years else []
    if UNDRAFTED in keys:
        conditions.append(column.is_(None))
    return or_(*conditions) if conditions else column.in_([])


def draft_year_keys(db: Session) -> list[str]:
    """The draft years the roster has, as partition keys, years first."""
    years = db.scalars(select(Player.draft_year).distinct())
    return [draft_year_key(year) for year in sorted(years, key=lambda year: (year is None, year or 0))]


def is_current(style: str | None = None) -> ColumnElement[bool]:
    """The current image rows (of one style): the one definition of "current" that every read uses."""
    current = PlayerImageAsset.is_current.is_(True)
    return current if style is None else current & (PlayerImageAsset.style == style)


def players_in_draft_year(db: Session, key: str, player_ids: Sequence[int] = ()) -> list[Player]:
    """The players of one draft-year partition, optionally narrowed to some ids, in id order."""
    query = select(Player).where(in_draft_years(Player.draft_year, [key]))
    if player_ids:
        query = query.where(Player.id.in_(player_ids))
    return list(db.scalars(query.order_by(Player.id)))


def current_asset(db: Session, player_id: int, style: str) -> PlayerImageAsset | None:
    return db.scalar(select(PlayerImageAsset).where(is_current(style), PlayerImageAsset.player_id == player_id))


def players_with_current_image(db: Session, style: str, player_ids: Sequence[int]) -> set[int]:
    query = select(PlayerImageAsset.player_id).where(is_current(style), PlayerImageAsset.player_id.in_(player_ids))
    return set(db.scalars(query))


def experiment_run_key(name: str, variant: str) -> str:
    """The run key of one variant's snapshots in a prompt experiment: what ties its images to the experiment."""
    return f"{EXPERIMENT_RUN_KEY_PREFIX}{name}:{variant}"


def is_trial_snapshot(run_key: str, prompt_variant: str | None) -> bool:
    """A snapshot whose images never go live: a prompt variant other than the default, or any arm of a prompt
    experiment (its default arm too: every arm is treated alike, so the comparison is fair). Its images wait for a
    reviewer's verdict, which the experiment report counts, and never replace a player's current portrait."""
    return (prompt_variant or DEFAULT_VARIANT) != DEFAULT_VARIANT or run_key.startswith(EXPERIMENT_RUN_KEY_PREFIX)


def is_trial_image() -> ColumnElement[bool]:
    """Image rows of trial snapshots (`is_trial_snapshot`), in SQL."""
    experiment = PlayerImageSnapshot.run_key.startswith(EXPERIMENT_RUN_KEY_PREFIX)
    in_experiment = PlayerImageAsset.snapshot_id.in_(select(PlayerImageSnapshot.id).where(experiment))
    return (PlayerImageAsset.prompt_variant != DEFAULT_VARIANT) | in_experiment


def is_pending_review(style: str | None = None) -> ColumnElement[bool]:
    """Image rows waiting for a reviewer to let them go live (of one style). Trial images wait for a reviewer too,
    but never go live, so they are not counted: a player with only a trial image still needs a portrait."""
    pending = (PlayerImageAsset.review_status == PENDING) & (PlayerImageAsset.status == "succeeded") & ~is_trial_image()
    return pending if style is None else pending & (PlayerImageAsset.style == style)


def players_with_image_or_pending(db: Session, style: str, player_ids: Sequence[int]) -> set[int]:
    """Players `missing_only` leaves alone: a current image, or a new one waiting for review (paying for another
    before the reviewer decides would waste the first)."""
    query = select(PlayerImageAsset.player_id).where(
        is_current(style) | is_pending_review(style), PlayerImageAsset.player_id.in_(player_ids)
    )
    return set(db.scalars(query))


def correction_for(db: Session, player_id: int, style: str) -> PlayerImageAsset | None:
    """The rejected image the player's next generation corrects: their latest image in the style, if a reviewer
    rejected it. Its successor links to it, carries its guidance in the prompt, and waits for review."""
    latest = latest_image(db, player_id, style)
    return latest if latest is not None and latest.review_status == REJECTED else None


def latest_image(db: Session, player_id: int, style: str) -> PlayerImageAsset | None:
    """The player's newest generated image in the style, whatever its review status; trial images (experiments)
    aside, since they never go live and nothing corrects them."""
    return db.scalar(
        select(PlayerImageAsset)
        .where(
            PlayerImageAsset.player_id == player_id,
            PlayerImageAsset.style == style,
            PlayerImageAsset.status == "succeeded",
            ~is_trial_image(),
        )
        .order_by(PlayerImageAsset.id.desc())
        .limit(1)
    )


def review_queue(
    db: Session, *, status: str | None = PENDING, draft_year_key: str | None = None, style: str | None = None
) -> list[tuple[PlayerImageAsset, Player]]:
    """Generated images by review status (every status with None), optionally one draft year or style, oldest first."""
    query = (
        select(PlayerImageAsset, Player)
        .join(Player, Player.id == PlayerImageAsset.player_id)
        .where(PlayerImageAsset.status == "succeeded")
    )
    if status is not None:
        query = query.where(PlayerImageAsset.review_status == status)
    if draft_year_key is not None:
        query = query.where(in_draft_years(Player.draft_year, [draft_year_key]))
    if style is not None:
        query = query.where(PlayerImageAsset.style == style)
    rows = db.execute(query.order_by(Player.draft_year, PlayerImageAsset.style, Player.id, PlayerImageAsset.id)).all()
    return [(asset, player) for asset, player in rows]


def current_styles(db: Session, player_ids: Sequence[int]) -> dict[int, set[str]]:
    """Player id → styles with a current image, in one query."""
    rows = db.execute(
        select(PlayerImageAsset.player_id, PlayerImageAsset.style).where(
            is_current(), PlayerImageAsset.player_id.in_(player_ids)
        )
    )
    styles: dict[int, set[str]] = {}
    for player_id, style in rows:
        styles.setdefault(player_id, set()).add(style)
    return styles


def current_images(
    db: Session, draft_year_key: str, style: str
) -> list[tuple[PlayerImageAsset, Player, PlayerImageSnapshot]]:
    """Every current image of a (draft year, style) partition with its player and snapshot, in player order."""
    rows = db.execute(
        select(PlayerImageAsset, Player, PlayerImageSnapshot)
        .join(Player, Player.id == PlayerImageAsset.player_id)
        .join(PlayerImageSnapshot, PlayerImageSnapshot.id == PlayerImageAsset.snapshot_id)
        .where(in_draft_years(Player.draft_year, [draft_year_key]), is_current(style))
        .order_by(Player.id)
    ).all()
    return [(asset, player, snapshot) for asset, player, snapshot in rows]


def all_current_images(db: Session) -> list[tuple[PlayerImageAsset, Player]]:
    """Every current image of every player, by player then style."""
    rows = db.execute(
        select(PlayerImageAsset, Player)
        .join(Player, Player.id == PlayerImageAsset.player_id)
        .where(is_current(), PlayerImageAsset.status == "succeeded")
        .order_by(Player.id, PlayerImageAsset.style)
    ).all()
    return [(asset, player) for asset, player in rows]


def latest_snapshot(db: Session, draft_year_key: str, style: str) -> PlayerImageSnapshot | None:
    """The partition's current snapshot: the last finished run for its draft year and style."""
    return db.scalar(
        select(PlayerImageSnapshot)
        .where(
            in_draft_years(PlayerImageSnapshot.draft_year, [draft_year_key]),
            PlayerImageSnapshot.style == style,
            PlayerImageSnapshot.is_current.is_(True),
        )
        .order_by(PlayerImageSnapshot.id.desc())
        .limit(1)
    )


def snapshot_of_run(db: Session, dagster_run_id: str) -> PlayerImageSnapshot | None:
    """The run's snapshot: its first (a run with quality retries also has a retry snapshot, made later)."""
    query = select(PlayerImageSnapshot).where(PlayerImageSnapshot.dagster_run_id == dagster_run_id)
    return db.scalar(query.order_by(PlayerImageSnapshot.id).limit(1))


# --- quality scores (the judge's rows) ------------------------------------------------------------------------

NO_SCORE_ROW = "no score recorded"  # an image the judge never saw: made before it, or its row was not written


def latest_scores(db: Session, asset_ids: Collection[int]) -> dict[int, ImageQualityScore]:
    """Asset id → its score: the newest score row of each asset (a rescore replaces the earlier verdict)."""
    if not asset_ids:
        return {}
    newest = (
        select(func.max(ImageQualityScore.id))
        .where(ImageQualityScore.asset_id.in_(asset_ids))
        .group_by(ImageQualityScore.asset_id)
    )
    return {row.asset_id: row for row in db.scalars(select(ImageQualityScore).where(ImageQualityScore.id.in_(newest)))}


@dataclass(frozen=True)
class FailedCriterion:
    name: str
    reason: str


def failed_criteria(score: ImageQualityScore) -> list[FailedCriterion]:
    """The rubric criteria the judge failed the image on, in rubric order, with its reasons."""
    entries = json.loads(score.criteria) if score.criteria else []
    return [
        FailedCriterion(str(entry.get("name", "?")), str(entry.get("reason") or "no reason given"))
        for entry in entries
        if not entry.get("passed")
    ]


@dataclass(frozen=True)
class ImageQuality:
    """One image and its latest score as the audit has it; `score` None when it was not scored (see `reason`)."""

    asset_id: int
    player_id: int
    display_name: str
    image_url: str | None
    score: int | None
    passed: bool | None
    failed: list[FailedCriterion]
    reason: str | None  # why there is no score

    @classmethod
    def of(cls, asset: PlayerImageAsset, player: Player, row: ImageQualityScore | None) -> ImageQuality:
        unscored = cls(asset.id, player.id, player.display_name, asset.public_url, None, None, [], NO_SCORE_ROW)
        if row is None:
            return unscored
        if row.status != SCORED or row.score is None:
            reason = (row.reason or "no reason recorded") if row.status == NOT_SCORED else f"status {row.status!r}"
            return replace(unscored, reason=reason)
        return replace(unscored, score=row.score, passed=bool(row.passed), failed=failed_criteria(row), reason=None)


@dataclass(frozen=True)
class PartitionQuality:
    """The latest scores of the images a partition's latest snapshot produced."""

    snapshot_id: int
    run_key: str
    version: int
    images: list[ImageQuality]

    @property
    def scored(self) -> list[ImageQuality]:
        return [image for image in self.images if image.score is not None]

    @property
    def scores(self) -> list[int]:
        return [image.score for image in self.images if image.score is not None]

    @property
    def not_scored(self) -> Counter[str]:
        """Why images have no score → how many."""
        return Counter(image.reason or NO_SCORE_ROW for image in self.images if image.score is None)

    @property
    def passed(self) -> int:
        return sum(bool(image.passed) for image in self.scored)

    @property
    def pass_rate(self) -> float | None:
        """Passed over scored; None when nothing was scored (there is no rate to report)."""
        scored = len(self.scored)
        return self.passed / scored if scored else None

    def histogram(self) -> list[tuple[str, int]]:
        """Scored images per 10-point bucket, 0-9 up to 90-100 (100 joins the top bucket)."""
        counts = Counter(min(score // 10, 9) for score in self.scores)
        return [(f"{10 * b}-{10 * b + 9 if b < 9 else 100}", counts[b]) for b in range(10)]

    def worst(self, limit: int) -> list[ImageQuality]:
        """The lowest-scored images, lowest first (ties by asset id)."""
        return sorted(self.scored, key=lambda image: (image.score, image.asset_id))[:limit]

    def summary(self) -> dict[str, float]:
        """Mean, min and median score; empty when nothing was scored."""
        scores = self.scores
        if not scores:
            return {}
        return {"mean": statistics.fmean(scores), "min": min(scores), "median": statistics.median(scores)}


def partition_quality(db: Session, draft_year_key: str, style: str) -> PartitionQuality | None:
    """The scores of the images the partition's latest snapshot stored (what its last run made, pending review or
    live), each player's last attempt: an automatic quality retry (its own snapshot, `{run key}:quality-retry-N`)
    stands in for the image it replaced. None before any finished run."""
    snapshot = latest_snapshot(db, draft_year_key, style)
    if snapshot is None:
        return None
    retries = select(PlayerImageSnapshot.id).where(
        PlayerImageSnapshot.run_key.startswith(f"{snapshot.run_key}:quality-retry-", autoescape=True),
        PlayerImageSnapshot.version == snapshot.version,
    )
    rows = db.execute(
        select(PlayerImageAsset, Player)
        .join(Player, Player.id == PlayerImageAsset.player_id)
        .where(
            or_(PlayerImageAsset.snapshot_id == snapshot.id, PlayerImageAsset.snapshot_id.in_(retries)),
            PlayerImageAsset.status == "succeeded",
        )
        .order_by(Player.id, PlayerImageAsset.id)
    ).all()
    last = {asset.player_id: (asset, player) for asset, player in rows}  # ordered by id: the last attempt wins
    scores = latest_scores(db, [asset.id for asset, _ in last.values()])
    images = [ImageQuality.of(asset, player, scores.get(asset.id)) for asset, player in last.values()]
    return PartitionQuality(snapshot.id, snapshot.run_key, snapshot.version, images)


def latest_by_variant(db: Session, player_ids: Collection[int]) -> dict[tuple[int, str], list[PlayerImageAsset]]:
    """(player id, style) → the newest generated image under each prompt variant, by variant name: what a prompt
    experiment made of the player, to compare side by side."""
    if not player_ids:
        return {}
    newest = (
        select(func.max(PlayerImageAsset.id))
        .where(PlayerImageAsset.player_id.in_(player_ids), PlayerImageAsset.status == "succeeded")
        .group_by(PlayerImageAsset.player_id, PlayerImageAsset.style, PlayerImageAsset.prompt_variant)
    )
    rows = db.scalars(
        select(PlayerImageAsset).where(PlayerImageAsset.id.in_(newest)).order_by(PlayerImageAsset.prompt_variant)
    )
    variants: dict[tuple[int, str], list[PlayerImageAsset]] = {}
    for asset in rows:
        variants.setdefault((asset.player_id, asset.style), []).append(asset)
    return variants
