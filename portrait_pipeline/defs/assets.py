"""Dagster assets: the shell around portraits.py; each asset reads config and resources, then calls the core."""

import asyncio
import base64
import time
from collections.abc import Iterator
from decimal import Decimal
from functools import partial
from typing import Any

import dagster as dg
from pydantic import Field
from sqlalchemy.orm import Session

from portrait_pipeline import images
from portrait_pipeline.audit import records as audit
from portrait_pipeline.audit.models import Player
from portrait_pipeline.cohorts import players_in_draft_year
from portrait_pipeline.costs import parse_image_size
from portrait_pipeline.defs.partitions import draft_years, portrait_partitions
from portrait_pipeline.defs.resources import (
    DatabaseResource,
    GeminiResource,
    ImageStorageResource,
    LikenessResource,
    generation_service,
)
from portrait_pipeline.errors import InvalidInput, PortraitPipelineError
from portrait_pipeline.generation.engine import BatchLimits, PlayerOutcome
from portrait_pipeline.generation.partition import PartitionRequest, PartitionResult, plan_partition, run_partition
from portrait_pipeline.likeness import LikenessService
from portrait_pipeline.prompts import LIKENESS_PROMPT_VERSION, STYLE_BLOCKS, SYSTEM_PROMPT, SYSTEM_PROMPT_VERSION
from portrait_pipeline.roster import check_reference_url
from portrait_pipeline.styles import parse_style

PREVIEW_WIDTH = 480


class PortraitRunConfig(dg.Config):
    """The seed's per-run knobs; every field can be set in the launchpad."""

    missing_only: bool = Field(default=False, description="Skip players who already have an image")
    player_ids: list[int] = Field(default=[], description="Only these players of the partition")
    limit: int | None = Field(default=None, ge=1, description="At most this many players")
    run_key: str | None = Field(default=None, description="Snapshot run key; repeated keys get a new version")
    image_size: str = Field(default="1K", description="512, 1K, 2K (4K where the model has it)")
    notes: str | None = Field(default=None, description="Notes stored on the snapshot")
    dry_run: bool = Field(default=False, description="Plan and estimate only: nothing generated or written")
    fetch_likeness: bool = Field(default=False, description="Use reference-photo descriptions in the prompt")
    likeness_url: str | None = Field(default=None, description="Reference URL for a single-player run")
    cohort: str | None = Field(default=None, description="Cohort label recorded on the snapshot")
    max_cost_usd: float | None = Field(default=None, ge=0, description="Stop starting calls past this spend")
    max_consecutive_failures: int = Field(default=10, ge=1, description="Circuit breaker: failures in a row")


def partition_request(context: dg.AssetExecutionContext, config: PortraitRunConfig, model: str) -> PartitionRequest:
    """Validate the run config against the partition; raise InvalidInput naming the bad field."""
    dims = context.partition_key.keys_by_dimension
    if config.likeness_url is not None and len(config.player_ids) != 1:
        raise InvalidInput("likeness_url needs exactly one player in player_ids")
    return PartitionRequest(
        draft_year_key=dims["draft_year"],
        style=parse_style(dims["style"]),
        image_size=parse_image_size(config.image_size, model),
        missing_only=config.missing_only,
        player_ids=tuple(config.player_ids),
        limit=config.limit,
        run_key=config.run_key,
        notes=config.notes,
        cohort=config.cohort,
        fetch_likeness=config.fetch_likeness or config.likeness_url is not None,
        likeness_url=check_reference_url(config.likeness_url),
        dagster_run_id=context.run.run_id,
    )


class LikenessRunConfig(dg.Config):
    """Which players to describe; a single player may get an explicit reference URL."""

    player_ids: list[int] = Field(default=[], description="Only these players of the draft year")
    likeness_url: str | None = Field(default=None, description="Reference URL for a single-player run")


@dg.asset(
    partitions_def=draft_years,
    group_name="portraits",
    kinds={"gemini"},
    code_version=LIKENESS_PROMPT_VERSION,
)
def likeness_descriptions(
    context: dg.AssetExecutionContext,
    config: LikenessRunConfig,
    database: DatabaseResource,
    gemini: GeminiResource,
    likeness: LikenessResource,
) -> dg.MaterializeResult:
    """Neutral descriptions of each player's reference photo, made once per photo content by the vision model."""
    if config.likeness_url is not None and len(config.player_ids) != 1:
        raise InvalidInput("likeness_url needs exactly one player in player_ids")
    check_reference_url(config.likeness_url)
    service = LikenessService(gemini.describer(), likeness.policy())
    with database.session() as db:
        players = players_in_draft_year(db, context.partition_key, config.player_ids)
        targets = [(p, config.likeness_url or p.reference_image_url) for p in players]
        rows = asyncio.run(_describe_all(db, service, [(p, url) for p, url in targets if url]))
    described = sum(1 for row in rows if row["status"] == "described")
    refused = [row for row in rows if row["status"] == "refused"]
    for row in refused:
        context.log.warning(f"{row['player']}: reference refused: {row['detail']}")
    return dg.MaterializeResult(
        metadata={
            "players_with_reference": len(rows),
            "described_now": described,
            "reused": sum(1 for row in rows if row["status"] == "reused"),
            "refused": len(refused),
            "vision_model": gemini.vision_model if gemini.uses_gemini else "none (offline)",
            "prompt_version": LIKENESS_PROMPT_VERSION,
            "descriptions": dg.MetadataValue.md(_likeness_table(rows)),
        }
    )


async def _describe_all(
    db: Session, service: LikenessService, targets: list[tuple[Player, str]]
) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for player, url in targets:
        row = {"player": player.display_name, "url": url, "sha256": "", "detail": ""}
        try:
            likeness, described_now = await service.describe(db, player, url)
        except PortraitPipelineError as exc:
            rows.append({**row, "status": "refused", "detail": str(exc)})
            continue
        status = "described" if described_now else "reused"
        rows.append({**row, "status": status, "sha256": likeness.reference_sha256, "detail": likeness.description})
    return rows


def _likeness_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "_no player of this draft year has a reference photo_"
    lines = ["| player | status | reference sha256 | description or reason |", "|---|---|---|---|"]
    for row in rows:
        detail = row["detail"].replace("|", "/").replace("\n", " ")
        lines.append(f"| {row['player']} | {row['status']} | `{row['sha256'][:16]}` | {detail} |")
    return "\n".join(lines)


@dg.asset(
    partitions_def=portrait_partitions,
    deps=[likeness_descriptions],
    io_manager_key="image_io_manager",
    code_version=SYSTEM_PROMPT_VERSION,
    pool="gemini",
    group_name="portraits",
    kinds={"gemini", "pillow"},
    output_required=False,
)
def player_portraits(
    context: dg.AssetExecutionContext,
    config: PortraitRunConfig,
    database: DatabaseResource,
    storage: ImageStorageResource,
    gemini: GeminiResource,
    likeness: LikenessResource,
) -> Iterator[dg.Output | dg.AssetObservation]:
    """Portraits of one draft year in one style: generated, stored, audited; a dry run only estimates."""
    engine = database.check()
    image_storage = storage.get_storage()
    model = gemini.model
    request = partition_request(context, config, model)
    if config.dry_run:
        with database.session() as db:
            plan = plan_partition(db, image_storage, request, model)
        context.log.info(f"dry run: {len(plan.to_generate)} to generate, {len(plan.skipped)} skipped")
        yield dg.AssetObservation(
            asset_key=context.asset_key,
            partition=context.partition_key,
            metadata={
                "dry_run": True,
                "would_generate": len(plan.to_generate),
                "would_skip": len(plan.skipped),
                "model": plan.model,
                "image_size": request.image_size,
                "estimated_cost_usd": float(plan.estimated_cost_usd),
            },
        )
        return

    image_storage.check_ready()
    with database.session() as db:
        interrupted = audit.close_interrupted_snapshots(db, request.partition_key, partial(run_has_ended, context))
        sheet = images.ContactSheet(capacity=len(players_in_draft_year(db, request.draft_year_key)))
    for snapshot in interrupted:
        context.log.warning(
            f"snapshot {snapshot.run_key} v{snapshot.version} was left running by run {snapshot.dagster_run_id}, "
            f"which has ended: marked interrupted ({snapshot.success_count} images committed)"
        )
    if not gemini.uses_gemini:
        context.log.info(
            "No GEMINI_API_KEY: the offline renderer draws placeholder posters (model offline-renderer, $0)"
        )
    if request.fetch_likeness and not gemini.uses_gemini:
        context.log.warning("fetch_likeness ignored: the offline renderer has no vision model (set GEMINI_API_KEY)")
    service = generation_service(storage, gemini, likeness, sheet)
    limits = BatchLimits(
        max_concurrency=gemini.max_concurrency,
        max_consecutive_failures=config.max_consecutive_failures,
        max_cost_usd=Decimal(str(config.max_cost_usd)) if config.max_cost_usd is not None else None,
    )
    progress = ProgressLog(context.log)
    result = run_partition(engine, service, request, limits, on_outcome=progress)
    progress.finish()
    problems = [problem for problem in (result.stopped if result.tripped else None, result.closing_error) if problem]
    if problems:
        raise dg.Failure(
            description=f"{'; '.join(problems)}; {len(result.failed)} failed", metadata=summary_metadata(result)
        )
    if result.failed and not result.generated:
        raise dg.Failure(
            description=f"every player failed ({len(result.failed)}): {result.failed[0].reason}",
            metadata=summary_metadata(result),
        )
    preview = preview_metadata(result, storage, sheet)
    yield dg.Output(result.portraits, metadata={**summary_metadata(result), **preview})


def run_has_ended(context: dg.AssetExecutionContext, run_id: str) -> bool:
    """Whether this instance knows the run as finished (succeeded, failed or canceled); unknown runs are not."""
    run = context.instance.get_run_by_id(run_id)
    return run is not None and run.is_finished


class ProgressLog:
    """A warning per failed player and a progress line every few seconds, not a line per image.

    Each Dagster log line is an event written to the instance (about 10 ms of the engine's event loop), and
    the per-player detail is in the materialization's `players` table anyway.
    """

    def __init__(self, log: dg.DagsterLogManager, every_s: float = 5.0) -> None:
        self.log = log
        self.every_s = every_s
        self.started = self.logged = time.monotonic()
        self.stored = self.failed = 0

    def __call__(self, outcome: PlayerOutcome) -> None:
        if outcome.status == "failed":
            self.failed += 1
            self.log.warning(f"{outcome.display_name}: failed: {outcome.reason}")
        elif outcome.status == "succeeded":
            self.stored += 1
        if time.monotonic() - self.logged >= self.every_s:
            self._line("so far")

    def finish(self) -> None:
        self._line("in all")

    def _line(self, when: str) -> None:
        self.logged = time.monotonic()
        elapsed = self.logged - self.started
        rate = self.stored / elapsed if elapsed else 0.0
        self.log.info(f"{self.stored} stored, {self.failed} failed {when} ({elapsed:.1f} s, {rate:.1f} images/s)")


def summary_metadata(result: PartitionResult) -> dict[str, Any]:
    request = result.plan.request
    return {
        "generated": len(result.generated),
        "skipped": len(result.plan.skipped),
        "failed": len(result.failed),
        "not_started": len(result.not_started),
        "stopped": result.stopped or "no",
        "failures": dg.MetadataValue.md(
            "\n".join(f"- {outcome.display_name}: {outcome.reason}" for outcome in result.failed) or "none"
        ),
        "model": result.plan.model,
        "image_size": request.image_size,
        "prompt_version": SYSTEM_PROMPT_VERSION,
        "run_key": result.run_key,
        "snapshot_version": result.snapshot_version,
        "snapshot_id": result.snapshot_id,
        "estimated_cost_usd": float(result.plan.estimated_cost_usd),
        "cost_usd": float(result.cost_usd),
        "token_cost_usd": float(result.token_cost_usd),
        "players": dg.MetadataValue.md(run_table(result)),
        "wall_time_s": round(result.wall_time_s, 2),
        "system_prompt": dg.MetadataValue.text(SYSTEM_PROMPT),
        "style_block": dg.MetadataValue.text(STYLE_BLOCKS[request.style]),
    }


def contact_sheet_key(draft_year_key: str, style: str) -> str:
    return f"contact-sheets/{style}/{draft_year_key}.png"


def preview_metadata(
    result: PartitionResult, storage: ImageStorageResource, sheet: images.ContactSheet
) -> dict[str, Any]:
    """The partition's contact sheet, stored next to the images, linked full size and inlined small."""
    image_storage = storage.get_storage()
    if not result.portraits:
        return {"preview": dg.MetadataValue.md("_no images in this partition yet_")}
    composed = sheet.compose(
        [images.Tile(p.display_name, p.sha256, partial(image_storage.get, p.key)) for p in result.portraits]
    )
    request = result.plan.request
    stored = image_storage.put(
        contact_sheet_key(request.draft_year_key, request.style), images.to_png(composed, {}), immutable=False
    )
    encoded = base64.b64encode(images.thumbnail_png(composed, PREVIEW_WIDTH)).decode()
    return {
        "storage": image_storage.location,
        "contact_sheet": dg.MetadataValue.url(stored.public_url),
        "preview": dg.MetadataValue.md(f"![contact sheet](data:image/png;base64,{encoded})"),
    }


def run_table(result: PartitionResult) -> str:
    """Every player the run attempted: status, prompt version, likeness used, time, cost, image."""
    lines = [
        "| player | status | prompt | likeness (sha256, reference) | seconds | cost | image |",
        "|---|---|---|---|---|---|---|",
    ]
    for outcome in sorted(result.outcomes, key=lambda o: o.player_id):
        likeness = f"`{outcome.likeness_sha256[:12]}` {outcome.reference_url}" if outcome.likeness_sha256 else "no"
        image = f"[png]({outcome.public_url})" if outcome.public_url else (outcome.reason or "").replace("|", "/")
        lines.append(
            f"| {outcome.display_name} | {outcome.status} | {SYSTEM_PROMPT_VERSION} | {likeness} "
            f"| {outcome.seconds:.2f} | ${outcome.cost_usd:.3f} | {image} |"
        )
    return "\n".join(lines)
