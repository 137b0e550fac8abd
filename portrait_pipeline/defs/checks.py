"""Quality checks on `player_portraits`: plain functions over the audit rows and storage, thin Dagster checks."""

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dagster as dg
from sqlalchemy import select
from sqlalchemy.orm import Session

from portrait_pipeline import images
from portrait_pipeline.audit import queries
from portrait_pipeline.audit.models import PENDING, Player, PlayerImageAsset
from portrait_pipeline.defs.assets import player_portraits
from portrait_pipeline.defs.partitions import portrait_partitions, split_partition_key
from portrait_pipeline.defs.resources import DatabaseResource, ImageStorageResource, PortraitSettings, QualitySettings
from portrait_pipeline.errors import PortraitPipelineError
from portrait_pipeline.model_registry import TARGET_DIMENSIONS
from portrait_pipeline.storage import ImageStorage, sha256_hex

# Partitioned asset checks are a Dagster preview feature; the warning at every load is noise nobody can act on.
warnings.filterwarnings("ignore", message=r".*partitions_def on an AssetCheckSpec is currently in preview")

METADATA_ROWS = 50  # longer lists are cut: check metadata is for reading, the audit rows hold everything
WORST_IMAGES = 5  # the quality check lists this many of the lowest-scored images


@dataclass(frozen=True)
class StoredImage:
    """A current image of a partition as the audit recorded it, with the size its snapshot asked for."""

    asset_id: int
    player_id: int
    display_name: str
    key: str
    sha256: str | None
    image_size: str


@dataclass(frozen=True)
class Problem:
    """Why one stored image is unfit to serve."""

    asset_id: int
    player_id: int
    display_name: str
    key: str
    reason: str


@dataclass(frozen=True)
class Failure:
    player_id: int
    display_name: str
    reason: str


@dataclass(frozen=True)
class FailureRate:
    """Failed over attempted in one snapshot: the players a run could not draw."""

    snapshot_id: int
    run_key: str
    version: int
    attempted: int
    failures: list[Failure]

    @property
    def rate(self) -> float:
        return len(self.failures) / self.attempted if self.attempted else 0.0


def current_images(db: Session, draft_year_key: str, style: str) -> list[StoredImage]:
    """Every current image of a (draft year, style) partition, in player order."""
    return [
        StoredImage(asset.id, asset.player_id, player.display_name, asset.s3_key or "", asset.content_sha256, size)
        for asset, player, size in (
            (asset, player, snapshot.image_size)
            for asset, player, snapshot in queries.current_images(db, draft_year_key, style)
        )
    ]


def validate_images(storage: ImageStorage, rows: Iterable[StoredImage]) -> list[Problem]:
    """Read each image back from storage (one at a time) and say what is wrong with it, if anything."""
    problems: list[Problem] = []
    for row in rows:
        reasons = image_problems(storage, row)
        if reasons:
            problems.append(Problem(row.asset_id, row.player_id, row.display_name, row.key, "; ".join(reasons)))
    return problems


def image_problems(storage: ImageStorage, row: StoredImage) -> list[str]:
    if not row.key:
        return ["the audit row has no storage key"]
    try:
        data = storage.get(row.key)
    except PortraitPipelineError as exc:
        return [str(exc)]
    reasons: list[str] = []
    if row.sha256 and sha256_hex(data) != row.sha256:
        reasons.append("stored bytes differ from the audited sha256")
    try:
        info = images.inspect(data)
    except PortraitPipelineError as exc:
        return [*reasons, str(exc)]
    if info.width * 5 != info.height * 4:
        reasons.append(f"{info.width}x{info.height} is not 4:5")
    expected = next((dims for size, dims in TARGET_DIMENSIONS.items() if size == row.image_size), None)
    if expected is None:
        reasons.append(f"snapshot image size {row.image_size!r} has no target dimensions")
    elif (info.width, info.height) != expected:
        reasons.append(f"{info.width}x{info.height}, expected {expected[0]}x{expected[1]} for size {row.image_size}")
    if info.stddev < images.MIN_STDDEV:
        reasons.append(f"blank or near-uniform (grayscale stddev {info.stddev:.1f} < {images.MIN_STDDEV})")
    return reasons


def failure_rate(db: Session, draft_year_key: str, style: str) -> FailureRate | None:
    """Failed/attempted in the partition's latest snapshot, counted from its asset rows; None before any run."""
    snapshot = queries.latest_snapshot(db, draft_year_key, style)
    if snapshot is None:
        return None
    rows = db.execute(
        select(PlayerImageAsset.status, PlayerImageAsset.error_message, Player.id, Player.display_name)
        .join(Player, Player.id == PlayerImageAsset.player_id)
        .where(PlayerImageAsset.snapshot_id == snapshot.id)
        .order_by(Player.id)
    ).all()
    failures = [
        Failure(pid, name, error or "no reason recorded") for status, error, pid, name in rows if status == "failed"
    ]
    return FailureRate(snapshot.id, snapshot.run_key, snapshot.version, len(rows), failures)


def missing_players(db: Session, draft_year_key: str, style: str) -> list[Player]:
    """Players of the draft year without a current image for the style, according to the audit."""
    players = queries.players_in_draft_year(db, draft_year_key)
    covered = queries.players_with_current_image(db, style, [player.id for player in players])
    return [player for player in players if player.id not in covered]


def _partition(context: dg.AssetCheckExecutionContext) -> tuple[str, str]:
    return split_partition_key(context.partition_key)


@dg.asset_check(asset=player_portraits, partitions_def=portrait_partitions, blocking=True)
def images_valid(
    context: dg.AssetCheckExecutionContext, database: DatabaseResource, storage: ImageStorageResource
) -> dg.AssetCheckResult:
    """Every current image of the partition decodes, is 4:5 at its snapshot's size, and is not blank."""
    draft_year_key, style = _partition(context)
    with database.session() as db:
        rows = current_images(db, draft_year_key, style)
    problems = validate_images(storage.get_storage(), rows)
    return dg.AssetCheckResult(
        passed=not problems,
        description=f"{len(problems)} of {len(rows)} images unfit" if problems else f"{len(rows)} images valid",
        metadata={
            "checked": len(rows),
            "bad": len(problems),
            "problems": dg.MetadataValue.md(_table(["player", "key", "why"], _problem_rows(problems))),
        },
    )


# Named explicitly: the plain function `failure_rate` already owns the name in this module.
@dg.asset_check(asset=player_portraits, name="failure_rate", partitions_def=portrait_partitions)
def failure_rate_check(
    context: dg.AssetCheckExecutionContext, database: DatabaseResource, quality: QualitySettings
) -> dg.AssetCheckResult:
    """The partition's latest snapshot failed for at most `max_failure_rate` of the players it attempted."""
    draft_year_key, style = _partition(context)
    with database.session() as db:
        rate = failure_rate(db, draft_year_key, style)
    if rate is None:
        return dg.AssetCheckResult(passed=True, description="no finished snapshot for this partition yet")
    limit = quality.max_failure_rate
    return dg.AssetCheckResult(
        passed=rate.rate <= limit,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(rate.failures)}/{rate.attempted} failed ({rate.rate:.0%}; limit {limit:.0%})",
        metadata={
            "snapshot_id": rate.snapshot_id,
            "run_key": rate.run_key,
            "snapshot_version": rate.version,
            "attempted": rate.attempted,
            "failed": len(rate.failures),
            "failure_rate": round(rate.rate, 4),
            "max_failure_rate": quality.max_failure_rate,
            "failures": dg.MetadataValue.md(
                _table(["player", "reason"], [[f.display_name, f.reason] for f in rate.failures])
            ),
        },
    )


@dg.asset_check(asset=player_portraits, partitions_def=portrait_partitions)
def coverage(context: dg.AssetCheckExecutionContext, database: DatabaseResource) -> dg.AssetCheckResult:
    """Every player of the draft year has a current image in the partition's style."""
    draft_year_key, style = _partition(context)
    with database.session() as db:
        population = len(queries.players_in_draft_year(db, draft_year_key))
        missing = missing_players(db, draft_year_key, style)
    return dg.AssetCheckResult(
        passed=not missing,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(missing)} of {population} players have no current {style} image",
        metadata={
            "players": population,
            "missing": len(missing),
            "missing_players": dg.MetadataValue.md(
                _table(["id", "player"], [[str(p.id), p.display_name] for p in missing])
            ),
        },
    )


@dg.asset_check(asset=player_portraits, partitions_def=portrait_partitions)
def pending_review(
    context: dg.AssetCheckExecutionContext, database: DatabaseResource, settings: PortraitSettings
) -> dg.AssetCheckResult:
    """No new image of the partition waits for a reviewer (PORTRAIT_REQUIRE_REVIEW): until approved, the previous
    image stays live, so a queue here means portraits that are made and paid for but not yet served."""
    draft_year_key, style = _partition(context)
    with database.session() as db:
        waiting = [
            [str(asset.id), player.display_name, f"{asset.created_at:%Y-%m-%d %H:%M}"]
            for asset, player in queries.review_queue(db, status=PENDING, draft_year_key=draft_year_key, style=style)
        ]
    review = settings.review_page(context.partition_key)
    return dg.AssetCheckResult(
        passed=not waiting,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(waiting)} images pending review (portrait-pipeline review list --draft-year "
        f"{draft_year_key} --style {style})"
        if waiting
        else "no image pending review",
        metadata={
            "pending": len(waiting),
            "pending_images": dg.MetadataValue.md(_table(["asset", "player", "generated (UTC)"], waiting)),
            **({"review_page": dg.MetadataValue.url(review)} if review else {}),
        },
    )


# Named explicitly: the resource parameter `quality` would otherwise share the check's name.
@dg.asset_check(asset=player_portraits, name="quality", partitions_def=portrait_partitions)
def quality_check(
    context: dg.AssetCheckExecutionContext,
    database: DatabaseResource,
    quality: QualitySettings,
    settings: PortraitSettings,
) -> dg.AssetCheckResult:
    """At least `min_quality_pass_rate` of the images the partition's latest run stored pass the judge's rubric.
    Unscored images (offline, judge errors) are counted apart, never given a figure."""
    draft_year_key, style = _partition(context)
    with database.session() as db:
        found = queries.partition_quality(db, draft_year_key, style)
    if found is None:
        return dg.AssetCheckResult(passed=True, description="no finished snapshot for this partition yet")
    rate, limit = found.pass_rate, quality.min_quality_pass_rate
    review = settings.review_page(context.partition_key)
    return dg.AssetCheckResult(
        passed=rate is None or rate >= limit,
        severity=dg.AssetCheckSeverity.WARN,
        description=_quality_description(found, limit),
        metadata={
            "snapshot_id": found.snapshot_id,
            "run_key": found.run_key,
            "snapshot_version": found.version,
            "images": len(found.images),
            "scored": len(found.scored),
            "not_scored": sum(found.not_scored.values()),
            "not_scored_reasons": dg.MetadataValue.md(
                _table(["reason", "images"], [[why, str(n)] for why, n in found.not_scored.most_common()])
            ),
            **_score_metadata(found),
            "min_quality_pass_rate": limit,
            **({"review_page": dg.MetadataValue.url(review)} if review else {}),
        },
    )


def _quality_description(found: queries.PartitionQuality, limit: float) -> str:
    rate = found.pass_rate
    if rate is None:
        if not found.images:
            return "no stored image in the latest snapshot to score"
        reasons = "; ".join(f"{why} ({n} image{'s' if n != 1 else ''})" for why, n in found.not_scored.most_common())
        return f"not scored: {reasons}"
    unscored = sum(found.not_scored.values())
    return f"{found.passed}/{len(found.scored)} scored images pass ({rate:.0%}; limit {limit:.0%})" + (
        f"; {unscored} not scored" if unscored else ""
    )


def _score_metadata(found: queries.PartitionQuality) -> dict[str, Any]:
    """The figures of the scored images; none at all when nothing was scored (no made-up zeros)."""
    if found.pass_rate is None:
        return {}
    summary = found.summary()
    worst = [
        [
            image.display_name,
            str(image.score),
            "; ".join(f"{c.name}: {c.reason}" for c in image.failed) or "none",
            f"[image]({image.image_url})" if image.image_url else "",
        ]
        for image in found.worst(WORST_IMAGES)
    ]
    return {
        "pass_rate": round(found.pass_rate, 4),
        "mean_score": round(summary["mean"], 1),
        "min_score": summary["min"],
        "median_score": summary["median"],
        "score_histogram": dg.MetadataValue.md(
            _table(["score", "images"], [[bucket, str(n)] for bucket, n in found.histogram()])
        ),
        "worst_images": dg.MetadataValue.md(_table(["player", "score", "failed criteria", "image"], worst)),
    }


portrait_checks = [images_valid, failure_rate_check, coverage, pending_review, quality_check]


def _problem_rows(problems: list[Problem]) -> list[list[str]]:
    return [[p.display_name, f"`{p.key}`", p.reason] for p in problems]


def _table(header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "none"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/").replace("\n", " ") for cell in row) + " |" for row in rows]
    if len(rows) > METADATA_ROWS:
        lines = [*lines[: METADATA_ROWS + 2], f"\n_and {len(rows) - METADATA_ROWS} more_"]
    return "\n".join(lines)
