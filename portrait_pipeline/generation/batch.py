"""The batch lane, without Dagster: submit a partition's requests as Batch API jobs, wait, store the answers.

Nothing is paid twice and nothing is lost across restarts: each job and the players it covers are committed to
`batch_jobs` right after it is created and before the run waits. Every later run of the partition (after a crash,
a redeploy, or at the same time) finds the pending jobs there, collects them, and plans only the players no job
covers. Collecting hands each answer to the standard lane's store stage (`ImageGenerationService`, through the
engine), priced at the registry's batch price.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from portrait_pipeline import images
from portrait_pipeline.audit import batch_jobs, leases, queries
from portrait_pipeline.audit import records as audit
from portrait_pipeline.audit.db import session_scope
from portrait_pipeline.audit.models import BatchJobRecord, Player, PlayerImageSnapshot, PlayerLikeness, utcnow
from portrait_pipeline.errors import GenerationFailed, InvalidInput, PortraitPipelineError, ReferenceImageRejected
from portrait_pipeline.generation import gemini
from portrait_pipeline.generation.engine import BatchJob, BatchLimits, BatchResult, PlayerOutcome, generate_batch
from portrait_pipeline.generation.partition import (
    PartitionPlan,
    PartitionRequest,
    PartitionResult,
    close_partition,
    plan_partition,
    snapshot_spec,
)
from portrait_pipeline.generation.player import ImageGenerationService, ImageHook, player_prompt, render_request
from portrait_pipeline.generation.renderer import RenderedImage, RenderRequest
from portrait_pipeline.interrupts import StopRequest
from portrait_pipeline.likeness import Likeness
from portrait_pipeline.model_registry import ImagePricing, parse_image_size, pricing
from portrait_pipeline.styles import parse_style


@dataclass(frozen=True)
class BatchSettings:
    """How the batch lane splits, sends and waits.

    Inline requests are capped at 20 MB in total (ai.google.dev/gemini-api/docs/batch-api, read 2026-11-29), and an
    inline job's answers come back all at once inside a poll: only a job of at most `inline_max_requests` players
    (and `inline_limit_bytes`) goes inline. Bigger jobs go as a JSONL file through the Files API, and their
    results file is read a line at a time: a job's size no longer bounds the run's memory, so jobs can be large
    (fewer create and poll requests).
    """

    max_requests_per_job: int = 1000
    inline_limit_bytes: int = 8_000_000
    inline_max_requests: int = 10  # an inline job's answers (an image each, base64) are in memory together
    poll_initial_s: float = 30.0
    poll_max_s: float = 600.0  # a job may take up to 24 h (48 h before it expires): a poll every 10 min at most
    max_concurrency: int = 8  # answers stored at once
    collect_lock_s: float = 600.0  # a run storing a job's answers holds it this long, renewed as it goes
    # A job row still CREATING after this long belongs to a run that died inside its create request.
    creating_grace_s: float = 900.0


@dataclass
class Submitted:
    """What `submit_partition` did: the plan, the run's snapshot, and the players it recorded failed before any
    job (a reference photo refused while describing it, as on the standard lane)."""

    plan: PartitionPlan
    snapshot_id: int
    version: int
    run_key: str
    refused: list[PlayerOutcome]


def run_batch_partition(
    engine: Engine,
    service: ImageGenerationService,
    client: gemini.GeminiClient,
    request: PartitionRequest,
    settings: BatchSettings = BatchSettings(),
    on_outcome: Callable[[PlayerOutcome], None] | None = None,
    sleep: Callable[[float], None] | None = None,
    stop: StopRequest | None = None,
) -> PartitionResult:
    """Submit what no pending job covers, then wait for every pending job of the partition and store its answers.

    A stop request (SIGINT, SIGTERM) while waiting ends the run at once: its jobs stay pending in `batch_jobs`
    (nothing is cancelled at the API; they are paid for) and the next run of the partition collects them. While
    storing, it stops like a standard run (the answers being stored get the grace period) and the job stays
    pending for the players not stored yet.
    """
    started = time.monotonic()
    lane_pricing = pricing(service.renderer.pricing.model, service.renderer.pricing.configured_usd, "batch")
    per_image = lane_pricing.usd_per_image(request.image_size)  # no batch price: refused before anything is sent
    notes = resolve_creating(engine, client, request.partition_key, settings.creating_grace_s)
    submitted = submit_partition(engine, client, service, request, lane_pricing, per_image, settings)
    with session_scope(engine) as db:
        sheet = images.ContactSheet(capacity=len(queries.players_in_draft_year(db, request.draft_year_key)))
        pending = batch_jobs.pending_jobs(db, request.partition_key)
        jobs = [(job.id, job.name) for job in pending if job.state != batch_jobs.CREATING]
    by_snapshot: dict[int, list[PlayerOutcome]] = {submitted.snapshot_id: list(submitted.refused)}
    owner = leases.owner_name(request.dagster_run_id)
    stopped: str | None = None
    for index, (job_id, name) in enumerate(jobs):
        status = wait_for(client, name, settings, sleep, stop)
        if status is None or (stop is not None and stop.requested):
            stopped = stop.reason if stop is not None else "stopped"
            notes += [
                f"batch job {left} left pending: the partition's next run collects it" for _, left in jobs[index:]
            ]
            break
        if not batch_jobs.take_for_collecting(engine, job_id, owner, settings.collect_lock_s):
            notes.append(f"batch job {name} is stored by another run (or was already): left to it")
            continue
        keep_lock = _Renewing(engine, job_id, owner, settings.collect_lock_s, on_outcome)
        batch, snapshot = collect_job(
            engine, service, client, lane_pricing, job_id, status, settings, sheet.keep, keep_lock, stop
        )
        by_snapshot.setdefault(snapshot, []).extend(batch.outcomes)
        if batch.stopped is not None:
            stopped = batch.stopped
            batch_jobs.release_collecting(engine, job_id, owner)  # the next run takes it over at once
            notes.append(f"batch job {name}: stopped while storing; the partition's next run stores the rest")
            break
        notes.append(f"batch job {name} ended {status.state}: {len(batch.outcomes)} player(s) recorded")
    plan, snapshot_id = submitted.plan, submitted.snapshot_id
    closing: dict[int, tuple[int, str]] = {}
    with session_scope(engine) as db:
        for snapshot in by_snapshot:
            skipped = len(plan.skipped) if snapshot == snapshot_id else 0
            if not batch_jobs.pending_jobs_of_snapshot(db, snapshot):
                closing[snapshot] = (skipped, _closing_status(db, snapshot))
            elif stopped is not None and snapshot == snapshot_id:
                closing[snapshot] = (skipped, "interrupted")  # its job is pending: the next run collects it
    outcomes = [outcome for each in by_snapshot.values() for outcome in each]
    result = PartitionResult(plan, snapshot_id, submitted.version, submitted.run_key, outcomes, 0.0, stopped=stopped)
    result.notes = notes
    close_partition(engine, service.storage, result, sheet, closing)
    result.wall_time_s = time.monotonic() - started
    return result


def _closing_status(db: Session, snapshot_id: int) -> str:
    """A batch snapshot's status from its rows: its players may have been recorded by several runs (refusals by
    the one that submitted, answers by the one that collected)."""
    statuses = batch_jobs.statuses_recorded(db, snapshot_id)
    if "failed" not in statuses:
        return "succeeded"
    return "partial" if "succeeded" in statuses else "failed"


def submit_partition(
    engine: Engine,
    client: gemini.GeminiClient,
    service: ImageGenerationService,
    request: PartitionRequest,
    lane_pricing: ImagePricing,
    per_image: Decimal,
    settings: BatchSettings,
) -> Submitted:
    """Plan like a standard run (players a pending job covers are in progress), open a `submitted` snapshot,
    describe reference photos first (`--fetch-likeness`, as on the standard lane), and send the planned players in
    jobs of at most `max_requests_per_job`. Each job's players are committed before its create request (state
    CREATING) and its name right after: a run that dies in between leaves a row that the next run resolves
    (`resolve_creating`) instead of paying for those players again."""
    run_key = request.run_key or f"{request.draft_year_key}_{request.style}"
    with session_scope(engine) as db:
        plan = plan_partition(db, service.storage, request, lane_pricing)
        snapshot = audit.start_snapshot(db, snapshot_spec(plan, run_key, per_image * len(plan.to_generate)))
        snapshot.status = "submitted" if plan.to_generate else "running"
        db.commit()
        snapshot_id, version = snapshot.id, snapshot.version
    owner = leases.owner_name(request.dagster_run_id)
    claimed = _claim(engine, request, owner, [ref.id for ref in plan.to_generate])
    refused: list[PlayerOutcome] = []
    try:
        wanted = [ref.id for ref in plan.to_generate if ref.id in claimed]
        described = _describe(engine, service, request, wanted)
        reasons = {player_id: found for player_id, found in described.items() if isinstance(found, str)}
        refused = _record_refusals(engine, service, request, snapshot_id, reasons)
        likenesses = {player_id: found for player_id, found in described.items() if not isinstance(found, str)}
        requests = _requests(
            engine, request, [player_id for player_id in wanted if player_id not in reasons], likenesses
        )
        size = settings.max_requests_per_job
        for start in range(0, len(requests), size):
            _submit_job(engine, client, request, lane_pricing, snapshot_id, requests[start : start + size], settings)
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
    return Submitted(plan, snapshot_id, version, run_key, refused)


def _describe(
    engine: Engine, service: ImageGenerationService, request: PartitionRequest, player_ids: list[int]
) -> dict[int, Likeness | str]:
    """Each player's description of its reference photo (or why the photo was refused), made before any job with
    the standard lane's describer (standard calls: they are small, and reused once stored). Without a vision
    model (offline) or without `fetch_likeness` there is none, as on the standard lane."""
    source = service.likeness
    if not request.fetch_likeness or source is None:
        return {}

    async def describe_all() -> dict[int, Likeness | str]:
        found: dict[int, Likeness | str] = {}
        with session_scope(engine) as db:
            for player in db.scalars(select(Player).where(Player.id.in_(player_ids)).order_by(Player.id)):
                url = request.likeness_url or player.reference_image_url
                if not url:
                    continue
                try:
                    found[player.id] = await source(db, player, url)
                except PortraitPipelineError as exc:
                    found[player.id] = str(exc)
        return found

    return asyncio.run(describe_all())


def _record_refusals(
    engine: Engine,
    service: ImageGenerationService,
    request: PartitionRequest,
    snapshot_id: int,
    reasons: Mapping[int, str],
) -> list[PlayerOutcome]:
    """Players whose reference was refused fail with the reason, through the standard store stage (the same row
    as on the standard lane: prompt, reference URL, no cost); none of them is sent."""
    if not reasons:
        return []
    refusing = ImageGenerationService(
        _Answers(service.renderer.pricing, iter(()), ""), service.storage, _Refused(reasons)
    )
    work = BatchJob(snapshot_id, request.style, request.image_size, True, request.likeness_url)
    return asyncio.run(
        generate_batch(engine, refusing, work, list(reasons), BatchLimits(max_consecutive_failures=None))
    ).outcomes


def _requests(
    engine: Engine, request: PartitionRequest, player_ids: list[int], likenesses: Mapping[int, Likeness]
) -> list[tuple[str, RenderRequest]]:
    """One keyed request per player: the standard lane's prompt (with the player's description, and a reviewer's
    guidance when it corrects a rejected image) and image config."""
    with session_scope(engine) as db:
        players = {player.id: player for player in db.scalars(select(Player).where(Player.id.in_(player_ids)))}
        keyed = []
        for player_id in player_ids:
            player, likeness = players[player_id], likenesses.get(player_id)
            correction = queries.correction_for(db, player_id, request.style)
            description = likeness.description if likeness else None
            prompt = player_prompt(player, description, correction.guidance if correction else None)
            key = batch_jobs.request_key(player_id, likeness.reference_sha256 if likeness else None)
            keyed.append(
                (key, render_request(player, request.style, request.image_size, prompt, request.prompt_variant))
            )
        return keyed


def _submit_job(
    engine: Engine,
    client: gemini.GeminiClient,
    request: PartitionRequest,
    lane_pricing: ImagePricing,
    snapshot_id: int,
    chunk: list[tuple[str, RenderRequest]],
    settings: BatchSettings,
) -> None:
    """One job: its players committed (CREATING), the create request, its name committed."""
    keys = [key for key, _ in chunk]
    with session_scope(engine) as db:
        reserved = batch_jobs.reserve_job(
            db,
            partition_key=request.partition_key,
            style=request.style,
            snapshot_id=snapshot_id,
            model=lane_pricing.model,
            image_size=request.image_size,
            player_ids=keys,
            dagster_run_id=request.dagster_run_id,
        )
        job_id, display_name = reserved.id, batch_jobs.display_name(reserved.id)
    try:
        sent = gemini.submit_batch(
            client,
            lane_pricing,
            [item for _, item in chunk],
            display_name,
            settings.inline_limit_bytes,
            settings.inline_max_requests,
            keys,
        )
    except gemini.GeminiCallFailed as exc:
        if exc.code is not None:  # the API refused: no job exists, the players are free again
            with session_scope(engine) as db:
                batch_jobs.drop_job(db, job_id)
        raise  # no answer at all: the row stays CREATING until a later run asks the API
    with session_scope(engine) as db:
        batch_jobs.confirm_job(db, job_id, sent.name, sent.input_file)


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
    client: gemini.GeminiClient,
    name: str,
    settings: BatchSettings,
    sleep: Callable[[float], None] | None = None,
    stop: StopRequest | None = None,
) -> gemini.BatchStatus | None:
    """Poll the job until it ends, backing off from `poll_initial_s` to `poll_max_s`; None as soon as a stop
    request comes (within a tenth of a second, not after the backoff)."""
    pause = sleep or partial(_pause, stop)
    delay = settings.poll_initial_s
    while stop is None or not stop.requested:
        status = gemini.poll_batch(client, name)
        if status.done:
            return status
        pause(delay)
        delay = min(delay * 1.5, settings.poll_max_s)
    return None


def _pause(stop: StopRequest | None, seconds: float) -> None:
    """Sleep, in short steps that notice a stop request (a signal handler can only set a flag)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and (stop is None or not stop.requested):
        time.sleep(min(left, 0.1))


def collect_job(
    engine: Engine,
    service: ImageGenerationService,
    client: gemini.GeminiClient,
    lane_pricing: ImagePricing,
    job_id: int,
    status: gemini.BatchStatus,
    settings: BatchSettings,
    on_image: ImageHook | None = None,
    on_outcome: Callable[[PlayerOutcome], None] | None = None,
    stop: StopRequest | None = None,
) -> tuple[BatchResult, int]:
    """Store an ended job's answers through the standard store stage, with the standard lane's concurrency; a job
    that did not succeed fails its players with its state. Players already recorded in its snapshot (a collect
    that died or was stopped half-way) are not stored again; a stopped collect leaves the job pending."""
    with session_scope(engine) as db:
        job = db.get_one(BatchJobRecord, job_id)
        snapshot_id, style, size = job.snapshot_id, job.style, job.image_size
        # The job's own model, not this run's: a deploy may have changed the model between submit and collect.
        lane_pricing = pricing(job.model, lane_pricing.configured_usd, "batch")
        done = batch_jobs.players_recorded(db, snapshot_id)
        keys = [key for key in batch_jobs.keys_of(job) if batch_jobs.player_of(key) not in done]
        described = _descriptions(db, keys)
    missing = (
        f"batch job {status.name} ended {status.state}"
        if not status.answered
        else f"batch job {status.name} returned no answer for this player"
    )
    # Judged like the standard lane's images; a failed one waits for review (a retry would be a new job, not here).
    quality = dataclasses.replace(service.quality, max_retries=0) if service.quality is not None else None
    with contextlib.closing(gemini.batch_answers(client, status)) as answers:
        renderer = _Answers(lane_pricing, answers, missing)
        source = _Described(described)
        answered = ImageGenerationService(renderer, service.storage, source, service.require_review, quality)
        urls = {player_id: likeness.reference_url for player_id, likeness in described.items()}
        image_size = parse_image_size(size, lane_pricing.model)
        work = BatchJob(snapshot_id, parse_style(style), image_size, on_image=on_image, likeness_urls=urls)
        # No breaker, no budget: every answer is paid already and must be stored.
        limits = BatchLimits(settings.max_concurrency, None, None)
        players = [batch_jobs.player_of(key) for key in keys]
        batch = asyncio.run(generate_batch(engine, answered, work, players, limits, on_outcome, stop))
    if batch.stopped is None:
        with session_scope(engine) as db:
            batch_jobs.set_state(db, job_id, status.state, collected=True)
    return batch, snapshot_id


def _descriptions(db: Session, keys: list[str]) -> dict[int, Likeness]:
    """The descriptions the job's prompts carried, by player: the rows their keys name (player, photo SHA-256)."""
    wanted = {batch_jobs.player_of(key): sha for key in keys if (sha := batch_jobs.likeness_of(key))}
    if not wanted:
        return {}
    rows = db.scalars(select(PlayerLikeness).where(PlayerLikeness.player_id.in_(wanted)))
    return {
        row.player_id: Likeness(row.description, row.reference_url, row.reference_sha256)
        for row in rows
        if wanted[row.player_id] == row.reference_sha256
    }


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
    """A renderer whose answers came back in a batch job, read in the job's order as the store stage asks for
    them: the answers read ahead of their player wait here (the results come in the order of the requests, so
    few ever do)."""

    def __init__(
        self, lane_pricing: ImagePricing, answers: Iterator[tuple[str, RenderedImage | str]], missing: str
    ) -> None:
        self.model = lane_pricing.model
        self.pricing = lane_pricing
        self._answers = answers
        self._ahead: dict[int, RenderedImage | str] = {}
        self._missing = missing
        self._reading: asyncio.Lock | None = None

    async def render(self, request: RenderRequest) -> RenderedImage:
        self._reading = self._reading or asyncio.Lock()
        async with self._reading:
            while request.player_id not in self._ahead:
                # Reading a line decodes an image: off the event loop, so the stores in flight keep going.
                item = await asyncio.to_thread(next, self._answers, None)
                if item is None:
                    break
                self._ahead[batch_jobs.player_of(item[0])] = item[1]
        answer = self._ahead.pop(request.player_id, self._missing)
        if isinstance(answer, str):
            raise GenerationFailed(answer)
        return answer


class _Described:
    """The likeness source of a job's answers: the description each request carried (see `_descriptions`)."""

    def __init__(self, found: Mapping[int, Likeness]) -> None:
        self._found = found

    async def __call__(self, db: Session, player: Player, url: str) -> Likeness:
        return self._found[player.id]


class _Refused:
    """The likeness source of players whose reference was refused before any job: the refusal, again."""

    def __init__(self, reasons: Mapping[int, str]) -> None:
        self._reasons = reasons

    async def __call__(self, db: Session, player: Player, url: str) -> Likeness:
        raise ReferenceImageRejected(self._reasons[player.id])


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
