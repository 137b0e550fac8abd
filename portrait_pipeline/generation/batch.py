"""The batch lane, without Dagster: submit a partition's requests as Batch API jobs, wait, store the answers.

Nothing is paid twice and nothing is lost across restarts: each job and the players it covers are committed to
`batch_jobs` right after it is created and before the run waits. Every later run of the partition (after a crash,
a redeploy, or at the same time) finds the pending jobs there, collects them, and plans only the players no job
covers. Collecting hands each answer to the standard lane's store stage (`ImageGenerationService`, through the
engine), priced at the registry's batch price.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Engine, select

from portrait_pipeline import images
from portrait_pipeline.audit import batch_jobs, leases, queries
from portrait_pipeline.audit import records as audit
from portrait_pipeline.audit.db import session_scope
from portrait_pipeline.audit.models import BatchJobRecord, Player, PlayerImageSnapshot, utcnow
from portrait_pipeline.errors import GenerationFailed, InvalidInput
from portrait_pipeline.generation import gemini
from portrait_pipeline.generation.engine import BatchJob, BatchLimits, BatchResult, PlayerOutcome, generate_batch
from portrait_pipeline.generation.partition import (
    PartitionPlan,
    PartitionRequest,
    PartitionResult,
    close_partition,
    plan_partition,
    snapshot_spec,
    status_of,
)
from portrait_pipeline.generation.player import ImageGenerationService, ImageHook, player_prompt, render_request
from portrait_pipeline.generation.renderer import RenderedImage, RenderRequest
from portrait_pipeline.model_registry import ImagePricing, parse_image_size, pricing
from portrait_pipeline.styles import parse_style


@dataclass(frozen=True)
class BatchSettings:
    """How the batch lane splits, sends and waits.

    Inline requests are capped at 20 MB in total (ai.google.dev/gemini-api/docs/batch-api, read 2026-11-29): a job
    whose requests pass `inline_limit_bytes` goes as a JSONL file through the Files API instead.
    """

    max_requests_per_job: int = 200  # one job's answers are in memory at once (an image each): this bounds RSS
    inline_limit_bytes: int = 8_000_000
    poll_initial_s: float = 30.0
    poll_max_s: float = 600.0  # a job may take up to 24 h (48 h before it expires): a poll every 10 min at most
    max_concurrency: int = 8  # answers stored at once
    collect_lock_s: float = 600.0  # a run storing a job's answers holds it this long, renewed as it goes
    # A job row still CREATING after this long belongs to a run that died inside its create request.
    creating_grace_s: float = 900.0


def run_batch_partition(
    engine: Engine,
    service: ImageGenerationService,
    client: gemini.GeminiClient,
    request: PartitionRequest,
    settings: BatchSettings = BatchSettings(),
    on_outcome: Callable[[PlayerOutcome], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> PartitionResult:
    """Submit what no pending job covers, then wait for every pending job of the partition and store its answers."""
    if request.fetch_likeness:
        raise InvalidInput("--batch with --fetch-likeness: the batch lane does not describe reference photos yet")
    started = time.monotonic()
    lane_pricing = pricing(service.renderer.pricing.model, service.renderer.pricing.configured_usd, "batch")
    per_image = lane_pricing.usd_per_image(request.image_size)  # no batch price: refused before anything is sent
    notes = resolve_creating(engine, client, request.partition_key, settings.creating_grace_s)
    submitted = submit_partition(engine, client, service, request, lane_pricing, per_image, settings)
    plan, snapshot_id, version, run_key = submitted
    with session_scope(engine) as db:
        sheet = images.ContactSheet(capacity=len(queries.players_in_draft_year(db, request.draft_year_key)))
        pending = batch_jobs.pending_jobs(db, request.partition_key)
        jobs = [(job.id, job.name) for job in pending if job.state != batch_jobs.CREATING]
    outcomes: list[PlayerOutcome] = []
    closing: dict[int, tuple[int, str]] = {}
    owner = leases.owner_name(request.dagster_run_id)
    for job_id, name in jobs:
        status = wait_for(client, name, settings, sleep)
        if not batch_jobs.take_for_collecting(engine, job_id, owner, settings.collect_lock_s):
            notes.append(f"batch job {name} is stored by another run (or was already): left to it")
            continue
        keep_lock = _Renewing(engine, job_id, owner, settings.collect_lock_s, on_outcome)
        batch, snapshot = collect_job(engine, service, lane_pricing, job_id, status, settings, sheet.keep, keep_lock)
        notes.append(f"batch job {name} ended {status.state}: {len(batch.outcomes)} player(s) recorded")
        outcomes += batch.outcomes
        with session_scope(engine) as db:
            if not batch_jobs.pending_jobs_of_snapshot(db, snapshot):
                closing[snapshot] = (len(plan.skipped) if snapshot == snapshot_id else 0, status_of(batch))
    with session_scope(engine) as db:
        if snapshot_id not in closing and not batch_jobs.pending_jobs_of_snapshot(db, snapshot_id):
            closing[snapshot_id] = (len(plan.skipped), "succeeded")  # its players were all submitted elsewhere
    result = PartitionResult(plan, snapshot_id, version, run_key, outcomes, wall_time_s=0.0)
    result.notes = notes
    close_partition(engine, service.storage, result, sheet, closing)
    result.wall_time_s = time.monotonic() - started
    return result


def submit_partition(
    engine: Engine,
    client: gemini.GeminiClient,
    service: ImageGenerationService,
    request: PartitionRequest,
    lane_pricing: ImagePricing,
    per_image: Decimal,
    settings: BatchSettings,
) -> tuple[PartitionPlan, int, int, str]:
    """Plan like a standard run (players a pending job covers are in progress), open a `submitted` snapshot, and
    send the planned players in jobs of at most `max_requests_per_job`. Each job's players are committed before
    its create request (state CREATING) and its name right after: a run that dies in between leaves a row that
    the next run resolves (`resolve_creating`) instead of paying for those players again."""
    run_key = request.run_key or f"{request.draft_year_key}_{request.style}"
    with session_scope(engine) as db:
        plan = plan_partition(db, service.storage, request, lane_pricing)
        snapshot = audit.start_snapshot(db, snapshot_spec(plan, run_key, per_image * len(plan.to_generate)))
        snapshot.status = "submitted" if plan.to_generate else "running"
        db.commit()
        snapshot_id, version = snapshot.id, snapshot.version
        wanted = [ref.id for ref in plan.to_generate]
        players = {player.id: player for player in db.scalars(select(Player).where(Player.id.in_(wanted)))}
        # The same prompt the store stage records: with a reviewer's guidance when it corrects a rejected image.
        guidance = {
            pid: correction.guidance for pid in wanted if (correction := queries.correction_for(db, pid, request.style))
        }
        requests = [
            render_request(
                players[ref.id],
                request.style,
                request.image_size,
                player_prompt(players[ref.id], None, guidance.get(ref.id)),
                request.prompt_variant,
            )
            for ref in plan.to_generate
        ]
    owner = leases.owner_name(request.dagster_run_id)
    claimed = _claim(engine, request, owner, [item.player_id for item in requests])
    try:
        requests = [item for item in requests if item.player_id in claimed]
        size = settings.max_requests_per_job
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            with session_scope(engine) as db:
                reserved = batch_jobs.reserve_job(
                    db,
                    partition_key=request.partition_key,
                    style=request.style,
                    snapshot_id=snapshot_id,
                    model=lane_pricing.model,
                    image_size=request.image_size,
                    player_ids=[item.player_id for item in chunk],
                    dagster_run_id=request.dagster_run_id,
                )
                job_id, display_name = reserved.id, batch_jobs.display_name(reserved.id)
            try:
                sent = gemini.submit_batch(client, lane_pricing, chunk, display_name, settings.inline_limit_bytes)
            except gemini.GeminiCallFailed as exc:
                if exc.code is not None:  # the API refused: no job exists, the players are free again
                    with session_scope(engine) as db:
                        batch_jobs.drop_job(db, job_id)
                raise  # no answer at all: the row stays CREATING until a later run asks the API
            with session_scope(engine) as db:
                batch_jobs.confirm_job(db, job_id, sent.name, sent.input_file)
    except Exception:
        with session_scope(engine) as db:  # a snapshot that sent nothing is closed, not left `submitted` for good
            if not batch_jobs.pending_jobs_of_snapshot(db, snapshot_id):
                closed = db.get_one(PlayerImageSnapshot, snapshot_id)
                closed.status, closed.finished_at = "failed", utcnow()
        raise
    finally:
        # From the commit on, `batch_jobs` keeps other runs off these players; the claims covered the gap.
        for player_id in claimed:
            leases.release(engine, player_id, request.style, owner)
    return plan, snapshot_id, version, run_key


def _claim(engine: Engine, request: PartitionRequest, owner: str, player_ids: list[int]) -> set[int]:
    """Claim the planned players like a standard run, then drop those a job or an image now covers: a run that
    planned at the same time as this one may have submitted them (or a standard run finished them) since."""
    claimed = {
        player_id
        for player_id in player_ids
        if leases.claim(engine, player_id, request.style, owner, request.claim_ttl_s, request.dagster_run_id) is None
    }
    with session_scope(engine) as db:
        taken = batch_jobs.players_in_pending_jobs(db, request.style, sorted(claimed))
        if request.missing_only:
            taken |= queries.players_with_current_image(db, request.style, sorted(claimed))
    for player_id in taken:
        leases.release(engine, player_id, request.style, owner)
    return claimed - taken


def resolve_creating(engine: Engine, client: gemini.GeminiClient, partition_key: str, grace_s: float) -> list[str]:
    """Rows of runs that died between committing a job's players and its name: the API's job list says whether
    the create arrived (adopt the job by its display name, which carries the row id) or not (free the players)."""
    with session_scope(engine) as db:
        stale = batch_jobs.stale_creating(db, partition_key, grace_s)
        if not stale:
            return []
        created = gemini.batch_names_by_display_name(client)
        notes = []
        for job in stale:
            name = created.get(batch_jobs.display_name(job.id))
            if name is None:
                notes.append(f"batch job row {job.id}: its create never reached the API; its players are free again")
                db.delete(job)
            else:
                notes.append(f"batch job row {job.id}: adopted {name}, created by a run that died before recording it")
                batch_jobs.confirm_job(db, job.id, name, None)
        db.commit()
        return notes


def wait_for(
    client: gemini.GeminiClient, name: str, settings: BatchSettings, sleep: Callable[[float], None] = time.sleep
) -> gemini.BatchStatus:
    """Poll the job until it ends, backing off from `poll_initial_s` to `poll_max_s`."""
    delay = settings.poll_initial_s
    while True:
        status = gemini.poll_batch(client, name)
        if status.done:
            return status
        sleep(delay)
        delay = min(delay * 1.5, settings.poll_max_s)


def collect_job(
    engine: Engine,
    service: ImageGenerationService,
    lane_pricing: ImagePricing,
    job_id: int,
    status: gemini.BatchStatus,
    settings: BatchSettings,
    on_image: ImageHook | None = None,
    on_outcome: Callable[[PlayerOutcome], None] | None = None,
) -> tuple[BatchResult, int]:
    """Store an ended job's answers through the standard store stage; a job that did not succeed fails its players
    with its state. Players already recorded in its snapshot (a collect that died half-way) are not stored again."""
    with session_scope(engine) as db:
        job = db.get_one(BatchJobRecord, job_id)
        snapshot_id, style, size = job.snapshot_id, job.style, job.image_size
        # The job's own model, not this run's: a deploy may have changed the model between submit and collect.
        lane_pricing = pricing(job.model, lane_pricing.configured_usd, "batch")
        done = batch_jobs.players_recorded(db, snapshot_id)
        player_ids = [player_id for player_id in batch_jobs.players_of(job) if player_id not in done]
    answers = status.answers if status.answers is not None else {}
    missing = (
        f"batch job {status.name} ended {status.state}"
        if status.answers is None
        else f"batch job {status.name} returned no answer for this player"
    )
    # Judged like the standard lane's images; a failed one waits for review (a retry would be a new job, not here).
    quality = dataclasses.replace(service.quality, max_retries=0) if service.quality is not None else None
    answered = ImageGenerationService(_Answers(lane_pricing, answers, missing), service.storage, quality=quality)
    work = BatchJob(snapshot_id, parse_style(style), parse_image_size(size, lane_pricing.model), on_image=on_image)
    # No breaker, no budget: every answer is paid already and must be stored.
    limits = BatchLimits(settings.max_concurrency, None, None)
    batch = asyncio.run(generate_batch(engine, answered, work, player_ids, limits, on_outcome))
    with session_scope(engine) as db:
        batch_jobs.set_state(db, job_id, status.state, collected=True)
    return batch, snapshot_id


class _Renewing:
    """Passes outcomes on, and extends the run's hold on the job it is storing every third of the hold."""

    def __init__(
        self, engine: Engine, job_id: int, owner: str, hold_s: float, then: Callable[[PlayerOutcome], None] | None
    ) -> None:
        self._engine, self._job_id, self._owner, self._hold_s, self._then = engine, job_id, owner, hold_s, then
        self._renewed = time.monotonic()

    def __call__(self, outcome: PlayerOutcome) -> None:
        if time.monotonic() - self._renewed > self._hold_s / 3:
            batch_jobs.take_for_collecting(self._engine, self._job_id, self._owner, self._hold_s)
            self._renewed = time.monotonic()
        if self._then is not None:
            self._then(outcome)


class _Answers:
    """A renderer whose answers came back in a batch job: the store stage takes them like a standard call's."""

    def __init__(self, lane_pricing: ImagePricing, answers: Mapping[str, RenderedImage | str], missing: str) -> None:
        self.model = lane_pricing.model
        self.pricing = lane_pricing
        self._answers = answers
        self._missing = missing

    async def render(self, request: RenderRequest) -> RenderedImage:
        answer = self._answers.get(str(request.player_id), self._missing)
        if isinstance(answer, str):
            raise GenerationFailed(answer)
        return answer


def cancel(engine: Engine, client: gemini.GeminiClient, name: str) -> BatchJobRecord:
    """Cancel a pending job at the API; the next run of its partition collects it (its players fail CANCELLED)."""
    with session_scope(engine) as db:
        job = batch_jobs.job_named(db, name)
        if job is None:
            raise InvalidInput(f"batch cancel {name}: no such job in the audit database (see `batch list`)")
        if job.collected_at is not None:
            raise InvalidInput(f"batch cancel {name}: the job has ended and was collected ({job.state})")
        gemini.cancel_batch(client, name)
        db.expunge(job)
        return job


def estimated_cost(job: BatchJobRecord) -> Decimal | None:
    """The job's players at the registry's batch price (None when it has none)."""
    size = parse_image_size(job.image_size, job.model)
    return pricing(job.model, lane="batch").estimate(size, job.request_count, "batch")
