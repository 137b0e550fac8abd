"""Dagster assets: thin shells that read config and resources, call the core, and show what it returns."""

import asyncio
import base64
import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from functools import partial
from typing import Any

import dagster as dg

from portrait_pipeline.audit.queries import players_in_draft_year
from portrait_pipeline.defs.config import LikenessRunConfig, PortraitRunConfig, partition_request
from portrait_pipeline.defs.partitions import draft_years, portrait_partitions
from portrait_pipeline.defs.resources import (
    DatabaseResource,
    GeminiResource,
    ImageStorageResource,
    LikenessResource,
    PortraitSettings,
    generation_service,
)
from portrait_pipeline.defs.runs import run_has_ended
from portrait_pipeline.errors import ConfigurationError
from portrait_pipeline.generation.batch import run_batch_partition
from portrait_pipeline.generation.engine import PlayerOutcome
from portrait_pipeline.generation.partition import PartitionPlan, PartitionResult, plan_partition, run_partition
from portrait_pipeline.interrupts import stop_on_signals
from portrait_pipeline.likeness import DescriptionOutcome, LikenessService
from portrait_pipeline.prompts import LIKENESS_PROMPT_VERSION, SYSTEM_PROMPT_VERSION, prompt_variant


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
    preflight(context, gemini, vision=True)
    service = LikenessService(gemini.describer(), likeness.policy())
    with database.session() as db:
        players = players_in_draft_year(db, context.partition_key, config.player_ids)
        targets = [(p, config.likeness_url or p.reference_image_url) for p in players]
        rows = asyncio.run(service.describe_all(db, [(p, url) for p, url in targets if url]))
    described = sum(1 for row in rows if row.status == "described")
    refused = [row for row in rows if row.status == "refused"]
    for row in refused:
        context.log.warning(f"{row.player}: reference refused: {row.detail}")
    return dg.MaterializeResult(
        metadata={
            "players_with_reference": len(rows),
            "described_now": described,
            "reused": sum(1 for row in rows if row.status == "reused"),
            "refused": len(refused),
            "vision_model": gemini.vision_model if gemini.uses_gemini else "none (offline)",
            "prompt_version": LIKENESS_PROMPT_VERSION,
            "descriptions": dg.MetadataValue.md(_likeness_table(rows)),
        }
    )


def _likeness_table(rows: list[DescriptionOutcome]) -> str:
    if not rows:
        return "_no player of this draft year has a reference photo_"
    lines = ["| player | status | reference sha256 | description or reason |", "|---|---|---|---|"]
    for row in rows:
        detail = row.detail.replace("|", "/").replace("\n", " ")
        lines.append(f"| {row.player} | {row.status} | `{row.sha256[:16]}` | {detail} |")
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
    settings: PortraitSettings,
) -> Iterator[dg.Output | dg.AssetObservation]:
    """Portraits of one draft year in one style: generated, stored, audited; a dry run only estimates."""
    request = partition_request(config, context.partition_key, gemini.model, context.run.run_id)
    checks = {"vision": request.fetch_likeness, "judge": settings.quality_judge, "dry_run": config.dry_run}
    preflight(context, gemini, image_size=request.image_size, **checks)
    if config.dry_run:
        with database.session() as db:
            plan = plan_partition(db, storage.get_storage(), request, gemini.image_pricing())
        context.log.info(f"dry run: {len(plan.to_generate)} to generate, {len(plan.skipped)} skipped")
        yield dg.AssetObservation(
            asset_key=context.asset_key, partition=context.partition_key, metadata=dry_run_metadata(plan)
        )
        return
    storage.get_storage().check_ready()
    if not gemini.uses_gemini:
        context.log.info(
            "No GEMINI_API_KEY: the offline renderer draws placeholder posters (model offline-renderer, $0)"
        )
        if request.fetch_likeness:
            context.log.warning("fetch_likeness ignored: the offline renderer has no vision model (set GEMINI_API_KEY)")
    progress = ProgressLog(context.log)
    # SIGINT/SIGTERM (Ctrl-C, `dagster run terminate`, a k8s stop) let the calls in flight answer and be recorded.
    if request.lane == "batch" and not gemini.uses_gemini:
        # The schedules default to the batch lane; without Gemini there is no Batch API and nothing to save.
        context.log.warning("lane batch needs GEMINI_API_KEY: the offline renderer draws these on the standard lane")
        request = dataclasses.replace(request, lane="standard")
    if request.lane == "batch":
        # Submit, wait and collect in this run: the partition materializes when its images are stored.
        with stop_on_signals() as stop, core_logs_to(context.log):
            service = generation_service(storage, gemini, likeness, settings)
            batch = gemini.batch_settings()
            client = gemini.client()
            result = run_batch_partition(database.check(), service, client, request, batch, progress, stop=stop)
    else:
        with stop_on_signals() as stop, core_logs_to(context.log):
            result = run_partition(
                database.check(),
                generation_service(storage, gemini, likeness, settings),
                request,
                max_concurrency=gemini.max_concurrency,
                run_has_ended=partial(run_has_ended, context.instance),
                on_outcome=progress,
                stop=stop,
            )
    progress.finish()
    for note in result.notes:
        context.log.warning(note)
    if result.failure is not None:
        raise dg.Failure(description=result.failure, metadata=summary_metadata(result))
    review = settings.review_page(context.partition_key)
    links = {"review_page": dg.MetadataValue.url(review)} if review else {}
    yield dg.Output(result.portraits, metadata={**summary_metadata(result), **preview_metadata(result), **links})


class _RunLogHandler(logging.Handler):
    def __init__(self, log: dg.DagsterLogManager) -> None:
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.log(record.levelno, self.format(record))


@contextmanager
def core_logs_to(log: dg.DagsterLogManager) -> Iterator[None]:
    """The core's Python log records (with their stack traces) go to the run's log, not to a terminal: the CLI
    prints one line per problem, the UI shows the rest."""
    logger = logging.getLogger("portrait_pipeline")
    handler, propagate = _RunLogHandler(log), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def preflight(context: dg.AssetExecutionContext, gemini: GeminiResource, **checks: Any) -> None:
    """The models this run calls, checked before its first paid call: a dead one fails the run in one line."""
    try:
        warnings = gemini.preflight(**checks)
    except ConfigurationError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    for warning in warnings:
        context.log.warning(warning)


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


def dry_run_metadata(plan: PartitionPlan) -> dict[str, Any]:
    return {
        "dry_run": True,
        "would_generate": len(plan.to_generate),
        "would_skip": len(plan.skipped),
        "model": plan.model,
        "image_size": plan.request.image_size,
        "estimated_cost_usd": usd_metadata(plan.estimated_cost_usd),
        "estimated_batch_cost_usd": usd_metadata(plan.estimated_batch_cost_usd),
    }


def usd_metadata(value: Decimal | None) -> float | str:
    """A price as a number, or "unknown": never a $0 that was not measured."""
    return "unknown" if value is None else float(value)


def summary_metadata(result: PartitionResult) -> dict[str, Any]:
    request = result.plan.request
    variant = prompt_variant(request.prompt_variant)
    jobs = "\n".join(f"- {note}" for note in result.notes) or "none"
    return {
        **({"batch_jobs": dg.MetadataValue.md(jobs)} if request.lane == "batch" else {}),
        "generated": len(result.generated),
        "skipped": len(result.plan.skipped),
        "in_progress_elsewhere": len(result.skipped_elsewhere),
        "failed": len(result.failed),
        "not_started": len(result.not_started),
        "stopped": result.stopped or "no",
        "failures": dg.MetadataValue.md(
            "\n".join(f"- {outcome.display_name}: {outcome.reason}" for outcome in result.failed) or "none"
        ),
        "model": result.plan.model,
        "lane": request.lane,
        "estimated_batch_cost_usd": usd_metadata(result.plan.estimated_batch_cost_usd),
        "image_size": request.image_size,
        "prompt_variant": variant.name,
        "prompt_version": variant.version,
        "run_key": result.run_key,
        "snapshot_version": result.snapshot_version,
        "snapshot_id": result.snapshot_id,
        "estimated_cost_usd": usd_metadata(result.plan.estimated_cost_usd),
        "cost_usd": float(result.cost_usd),
        "judge_cost_usd": float(result.judge_cost_usd),
        "token_cost_usd": usd_metadata(result.token_cost_usd),
        "players": player_table(result),
        "wall_time_s": round(result.wall_time_s, 2),
        "system_prompt": dg.MetadataValue.text(variant.system_prompt),
        "style_block": dg.MetadataValue.text(variant.style_block(request.style)),
    }


def preview_metadata(result: PartitionResult) -> dict[str, Any]:
    """The partition's contact sheet: linked full size, inlined small."""
    if result.contact_sheet is None or result.preview_png is None:
        return {"preview": dg.MetadataValue.md("_no images in this partition yet_")}
    encoded = base64.b64encode(result.preview_png).decode()
    return {
        "contact_sheet": dg.MetadataValue.url(result.contact_sheet.public_url),
        "preview": dg.MetadataValue.md(f"![contact sheet](data:image/png;base64,{encoded})"),
    }


PLAYER_COLUMNS = dg.TableSchema(
    columns=[
        dg.TableColumn("player_id", "int"),
        dg.TableColumn("slug", "string"),
        dg.TableColumn("player", "string"),
        dg.TableColumn("status", "string"),
        dg.TableColumn("reason", "string"),
        dg.TableColumn("prompt_version", "string"),
        dg.TableColumn("likeness_sha256", "string", description="reference photo the description came from"),
        dg.TableColumn("seconds", "float"),
        dg.TableColumn("cost_usd", "float", description="every attempt's image (quality retries included)"),
        dg.TableColumn(
            "quality_score", "string", description="the judge's score 0-100 (what failed), or 'not scored: why'"
        ),
        dg.TableColumn("image", "string", description="the image's URL"),
    ]
)


def player_table(result: PartitionResult) -> dg.TableMetadataValue:
    """Every player the run attempted, by id (two players may share a name): status, reason, cost, image."""
    version = prompt_variant(result.plan.request.prompt_variant).version
    records = [
        dg.TableRecord(
            {
                "player_id": outcome.player_id,
                "slug": outcome.slug,
                "player": outcome.display_name,
                "status": outcome.status,
                "reason": outcome.reason or "",
                "prompt_version": version,
                "likeness_sha256": (outcome.likeness_sha256 or "")[:16],
                "seconds": round(outcome.seconds, 2),
                "cost_usd": float(outcome.cost_usd),
                "quality_score": outcome.quality_score or "",
                "image": outcome.public_url or "",
            }
        )
        for outcome in sorted(result.outcomes, key=lambda o: o.player_id)
    ]
    return dg.MetadataValue.table(records, schema=PLAYER_COLUMNS)
