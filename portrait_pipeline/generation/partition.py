"""One partition's run, without Dagster: plan who needs a portrait, open a snapshot, generate, summarize."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from portrait_pipeline import images, naming
from portrait_pipeline.audit import batch_jobs, leases, queries, serving
from portrait_pipeline.audit import records as audit
from portrait_pipeline.audit.db import session_scope
from portrait_pipeline.audit.models import DEFAULT_VARIANT, Player
from portrait_pipeline.audit.serving import Portrait
from portrait_pipeline.generation.engine import (
    DEFAULT_LIMITS,
    BatchJob,
    BatchLimits,
    BatchResult,
    Claims,
    PlayerOutcome,
    generate_batch,
)
from portrait_pipeline.generation.player import ImageGenerationService
from portrait_pipeline.interrupts import DEFAULT_GRACE_S, StopRequest
from portrait_pipeline.model_registry import ImagePricing, ImageSize, Lane
from portrait_pipeline.prompts import prompt_variant
from portrait_pipeline.storage import ImageStorage, StoredObject
from portrait_pipeline.styles import Style

PREVIEW_WIDTH = 480


@dataclass(frozen=True)
class PartitionRequest:
    """The seed's per-run knobs for one (draft year, style) partition."""

    draft_year_key: str
    style: Style
    image_size: ImageSize = "1K"
    missing_only: bool = False
    player_ids: tuple[int, ...] = ()
    limit: int | None = None
    run_key: str | None = None
    notes: str | None = None
    cohort: str | None = None
    fetch_likeness: bool = False
    likeness_url: str | None = None
    dagster_run_id: str | None = None
    max_cost_usd: Decimal | None = None  # stop starting calls past this spend
    max_consecutive_failures: int | None = DEFAULT_LIMITS.max_consecutive_failures  # the circuit breaker
    grace_s: float = DEFAULT_GRACE_S  # after a stop signal, how long calls in flight may still answer
    claim_ttl_s: float = leases.DEFAULT_TTL_S  # how long a dead run's claims keep other runs off its players
    lane: Lane = "standard"  # batch: through the Batch API (generation/batch.py) at the batch price
    prompt_variant: str = DEFAULT_VARIANT  # prompts.PROMPT_VARIANTS; recorded on the snapshot, read by each player

    @property
    def partition_key(self) -> str:
        return naming.partition_label(self.draft_year_key, self.style)


@dataclass(frozen=True)
class PlayerRef:
    id: int
    slug: str
    display_name: str


@dataclass(frozen=True)
class PartitionPlan:
    request: PartitionRequest
    pricing: ImagePricing
    to_generate: list[PlayerRef]
    skipped: list[PlayerRef]

    @property
    def model(self) -> str:
        return self.pricing.model

    @property
    def estimated_cost_usd(self) -> Decimal | None:
        """The standard lane's price for the players to generate; None when the price is unknown."""
        return self.pricing.estimate(self.request.image_size, len(self.to_generate))

    @property
    def estimated_batch_cost_usd(self) -> Decimal | None:
        """The same images through the Batch API (half price where the registry has a batch price)."""
        return self.pricing.estimate(self.request.image_size, len(self.to_generate), lane="batch")


@dataclass
class PartitionResult:
    plan: PartitionPlan
    snapshot_id: int
    snapshot_version: int
    run_key: str
    outcomes: list[PlayerOutcome]
    wall_time_s: float
    portraits: list[Portrait] = field(default_factory=list)
    stopped: str | None = None
    closing_error: str | None = None  # the database failed while the snapshot was being closed
    notes: list[str] = field(default_factory=list)  # what the run found and fixed on its way (for the run log)
    contact_sheet: StoredObject | None = None
    preview_png: bytes | None = None  # the contact sheet, small enough to show inline

    @property
    def failure(self) -> str | None:
        """Why the run must end failed, or None: a signal interrupted it, the breaker tripped, the snapshot could not
        be closed, or every player failed. Budget stops and some failed players leave a successful run with its
        failures listed."""
        stopped = self.stopped if self.tripped or self.interrupted else None
        problems = [problem for problem in (stopped, self.closing_error) if problem]
        if problems:
            return f"{'; '.join(problems)}; {len(self.failed)} failed"
        if self.failed and not self.generated:
            return f"every player failed ({len(self.failed)}): {self.failed[0].reason}"
        return None

    @property
    def tripped(self) -> bool:
        """The circuit breaker stopped the batch: the run must end failed."""
        return bool(self.stopped and self.stopped.startswith("circuit breaker"))

    @property
    def interrupted(self) -> bool:
        """A signal (SIGINT, SIGTERM) stopped the batch: the run must end failed."""
        return bool(self.stopped and self.stopped.startswith("interrupted"))

    @property
    def not_started(self) -> list[PlayerOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == "not_started"]

    @property
    def skipped_elsewhere(self) -> list[PlayerOutcome]:
        """Players another run had claimed (or finished) while this one reached them: not failures."""
        return [outcome for outcome in self.outcomes if outcome.status == "skipped"]

    @property
    def generated(self) -> list[PlayerOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == "succeeded"]

    @property
    def failed(self) -> list[PlayerOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == "failed"]

    @property
    def cost_usd(self) -> Decimal:
        return sum((outcome.cost_usd for outcome in self.outcomes), Decimal("0"))

    @property
    def judge_cost_usd(self) -> Decimal:
        """What the quality judge's calls cost (the score rows), on top of `cost_usd` (the images)."""
        return sum((outcome.judge_cost_usd for outcome in self.outcomes), Decimal("0"))

    @property
    def token_cost_usd(self) -> Decimal | None:
        """What the answers' token counts say was spent (None for a model without a token price)."""
        tokens = sum(outcome.output_tokens or 0 for outcome in self.outcomes)
        return self.plan.pricing.token_cost(tokens)


def has_image(db: Session, storage: ImageStorage, players: list[Player], style: str) -> set[int]:
    """Players with a current image or one pending review: an audit row, or a file by the legacy name (made before
    the audit existed).

    A new-format file without a row is not trusted: a run killed between writing the alias and committing the
    row leaves one, and `missing_only` must finish that player rather than skip it for good.
    """
    current = queries.players_with_image_or_pending(db, style, [player.id for player in players])
    for player in players:
        if player.id not in current and storage.exists(naming.legacy_key(player.id, style)):
            current.add(player.id)
    return current


def plan_partition(
    db: Session, storage: ImageStorage, request: PartitionRequest, pricing: ImagePricing
) -> PartitionPlan:
    """Who this run would generate and who `missing_only` skips; writes nothing."""
    players = queries.players_in_draft_year(db, request.draft_year_key, request.player_ids)
    done = has_image(db, storage, players, request.style) if request.missing_only else set()
    if request.missing_only or request.lane == "batch":
        # In progress: a batch job has their requests and will store their images; never pay for them twice.
        done |= batch_jobs.players_in_pending_jobs(db, request.style, [player.id for player in players])
    to_generate = [_ref(player) for player in players if player.id not in done]
    skipped = [_ref(player) for player in players if player.id in done]
    if request.limit is not None:
        to_generate = to_generate[: request.limit]
    return PartitionPlan(request=request, pricing=pricing, to_generate=to_generate, skipped=skipped)


def run_partition(
    engine: Engine,
    service: ImageGenerationService,
    request: PartitionRequest,
    *,
    max_concurrency: int = DEFAULT_LIMITS.max_concurrency,
    run_has_ended: Callable[[str], bool] | None = None,
    on_outcome: Callable[[PlayerOutcome], None] | None = None,
    stop: StopRequest | None = None,
) -> PartitionResult:
    """Close what dead runs left open, plan, open the snapshot, generate every planned player, close the snapshot,
    and compose the partition's contact sheet: everything a caller shows about the run is in the result."""
    started = time.monotonic()
    pricing = service.renderer.pricing
    per_image = pricing.usd_per_image(request.image_size)  # an unknown price stops the run before any write
    run_key = request.run_key or f"{request.draft_year_key}_{request.style}"
    with session_scope(engine) as db:
        interrupted = (
            audit.close_interrupted_snapshots(db, request.partition_key, run_has_ended) if run_has_ended else []
        )
        freed = leases.release_claims_of_ended_runs(db, run_has_ended) if run_has_ended else 0
        sheet = images.ContactSheet(capacity=len(queries.players_in_draft_year(db, request.draft_year_key)))
        plan = plan_partition(db, service.storage, request, pricing)
        snapshot = audit.start_snapshot(db, snapshot_spec(plan, run_key, per_image * len(plan.to_generate)))
        snapshot_id, version = snapshot.id, snapshot.version
        notes = [
            f"snapshot {old.run_key} v{old.version} was left running by run {old.dagster_run_id}, which has ended: "
            f"marked interrupted ({old.success_count} images committed)"
            for old in interrupted
        ] + ([f"released {freed} claims of runs that have ended"] if freed else [])
    owner = leases.owner_name(request.dagster_run_id)
    claims = Claims(owner, request.dagster_run_id, request.claim_ttl_s, request.missing_only)
    job = BatchJob(
        snapshot_id, request.style, request.image_size, request.fetch_likeness, request.likeness_url, sheet.keep, claims
    )
    limits = BatchLimits(max_concurrency, request.max_consecutive_failures, request.max_cost_usd, request.grace_s)
    player_ids = [player.id for player in plan.to_generate]
    batch = asyncio.run(generate_batch(engine, service, job, player_ids, limits, on_outcome, stop))
    result = PartitionResult(
        plan=plan,
        snapshot_id=snapshot_id,
        snapshot_version=version,
        run_key=run_key,
        outcomes=batch.outcomes,
        wall_time_s=0.0,
        stopped=batch.stopped,
        notes=notes,
    )
    skipped = len(plan.skipped) + len(result.skipped_elsewhere)
    close_partition(engine, service.storage, result, sheet, {snapshot_id: (skipped, status_of(batch))})
    result.wall_time_s = time.monotonic() - started
    return result


def close_partition(
    engine: Engine,
    storage: ImageStorage,
    result: PartitionResult,
    sheet: images.ContactSheet,
    snapshots: dict[int, tuple[int, str]],
) -> None:
    """Close the run's snapshots (id -> skipped, status), read the partition's current portraits and compose its
    contact sheet: the end of a run on either lane."""
    request = result.plan.request
    try:
        with session_scope(engine) as db:
            for snapshot_id, (skipped, status) in snapshots.items():
                audit.finish_snapshot(db, snapshot_id, skipped=skipped, status=status)
            result.portraits = serving.current_portraits(db, storage, request.draft_year_key, request.style)
    except SQLAlchemyError as exc:
        # The outcomes are in memory: the run still ends with its summary, and says why the snapshot stayed open.
        reason = str(exc).splitlines()[0]
        result.closing_error = (
            f"the database failed while closing snapshot(s) {', '.join(map(str, snapshots))}: "
            f"{exc.__class__.__name__}: {reason}"
        )
    if result.failure is None and result.portraits:
        result.contact_sheet, result.preview_png = _contact_sheet(storage, request, result.portraits, sheet)


def snapshot_spec(plan: PartitionPlan, run_key: str, estimated_cost_usd: Decimal) -> audit.SnapshotSpec:
    request = plan.request
    variant = prompt_variant(request.prompt_variant)
    return audit.SnapshotSpec(
        run_key=run_key,
        style=request.style,
        cohort=request.cohort or f"draft_{request.draft_year_key}",
        draft_year=queries.parse_draft_year_key(request.draft_year_key),
        population_size=len(plan.to_generate) + len(plan.skipped),
        system_prompt=variant.full_system_prompt(request.style),
        system_prompt_version=variant.version,
        image_size=request.image_size,
        model=plan.model,
        estimated_cost_usd=estimated_cost_usd,
        notes=request.notes,
        dagster_run_id=request.dagster_run_id,
        partition_key=request.partition_key,
        prompt_variant=variant.name,
    )


def _contact_sheet(
    storage: ImageStorage, request: PartitionRequest, portraits: list[Portrait], sheet: images.ContactSheet
) -> tuple[StoredObject, bytes]:
    """The partition's contact sheet, stored next to the images, and a small PNG of it to show inline."""
    composed = sheet.compose([images.Tile(p.display_name, p.sha256, partial(storage.get, p.key)) for p in portraits])
    key = naming.contact_sheet_key(request.draft_year_key, request.style)
    stored = storage.put(key, images.to_png(composed, {}), immutable=False)
    return stored, images.thumbnail_png(composed, PREVIEW_WIDTH)


def status_of(batch: BatchResult) -> str:
    if batch.stopped:
        if batch.stopped.startswith("interrupted"):
            return "interrupted"
        return "failed" if batch.stopped.startswith("circuit breaker") else "stopped"
    statuses = {outcome.status for outcome in batch.outcomes} - {"skipped"}
    if "failed" not in statuses:
        return "succeeded"
    return "partial" if "succeeded" in statuses else "failed"


def _ref(player: Player) -> PlayerRef:
    return PlayerRef(id=player.id, slug=player.slug, display_name=player.display_name)
