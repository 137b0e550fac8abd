"""Dagster assets: the shell around portraits.py; each asset reads config and resources, then calls the core."""

import base64
from collections.abc import Iterator
from typing import Any

import dagster as dg
from pydantic import Field

from portrait_pipeline import images
from portrait_pipeline.costs import parse_image_size
from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.gemini import GeminiResource
from portrait_pipeline.image_generation import ImageGenerationService, PlayerOutcome
from portrait_pipeline.partitions import portrait_partitions
from portrait_pipeline.portraits import PartitionRequest, PartitionResult, plan_partition, run_partition
from portrait_pipeline.prompts import STYLE_BLOCKS, SYSTEM_PROMPT, SYSTEM_PROMPT_VERSION
from portrait_pipeline.resources import DatabaseResource, ImageStorageResource
from portrait_pipeline.roster import check_reference_url
from portrait_pipeline.styles import parse_style

PREVIEW_TILES = 12


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


@dg.asset(
    partitions_def=portrait_partitions,
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
) -> Iterator[dg.Output | dg.AssetObservation]:
    """Portraits of one draft year in one style: generated, stored, audited; a dry run only estimates."""
    engine = database.check()
    image_storage = storage.get_storage()
    renderer = gemini.renderer()
    request = partition_request(context, config, renderer.model)
    if config.dry_run:
        with database.session() as db:
            plan = plan_partition(db, image_storage, request, renderer.model)
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

    def log_outcome(outcome: PlayerOutcome) -> None:
        if outcome.status == "failed":
            context.log.warning(f"{outcome.display_name}: failed: {outcome.reason}")
        else:
            context.log.info(f"{outcome.display_name}: stored {outcome.key} in {outcome.seconds:.2f}s")

    service = ImageGenerationService(renderer, image_storage)
    result = run_partition(engine, service, request, max_concurrency=gemini.max_concurrency, on_outcome=log_outcome)
    if result.failed and not result.generated:
        raise dg.Failure(
            description=f"every player failed ({len(result.failed)}): {result.failed[0].reason}",
            metadata=summary_metadata(result),
        )
    yield dg.Output(result.portraits, metadata={**summary_metadata(result), **preview_metadata(result, storage)})


def summary_metadata(result: PartitionResult) -> dict[str, Any]:
    request = result.plan.request
    return {
        "generated": len(result.generated),
        "skipped": len(result.plan.skipped),
        "failed": len(result.failed),
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
        "wall_time_s": round(result.wall_time_s, 2),
        "system_prompt": dg.MetadataValue.text(SYSTEM_PROMPT),
        "style_block": dg.MetadataValue.text(STYLE_BLOCKS[request.style]),
    }


def preview_metadata(result: PartitionResult, storage: ImageStorageResource) -> dict[str, Any]:
    image_storage = storage.get_storage()
    tiles = [(p.display_name, image_storage.get(p.key)) for p in result.portraits[:PREVIEW_TILES]]
    if not tiles:
        return {"preview": dg.MetadataValue.md("_no images in this partition yet_")}
    thumb = images.contact_sheet(tiles, tile_size=(80, 100), columns=6)
    encoded = base64.b64encode(thumb).decode()
    return {
        "storage": image_storage.location,
        "preview": dg.MetadataValue.md(f"![preview](data:image/png;base64,{encoded})"),
    }
