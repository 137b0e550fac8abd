"""The batch engine: many players at once, each durable on its own, within concurrency, failure and budget limits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from portrait_pipeline.audit import leases, queries
from portrait_pipeline.audit.db import session_scope
from portrait_pipeline.audit.models import Player, PlayerImageSnapshot
from portrait_pipeline.generation.player import ImageGenerationService, ImageHook, PlayerResult
from portrait_pipeline.interrupts import DEFAULT_GRACE_S, NOT_STORED, Interruption, NotSent, StopRequest
from portrait_pipeline.model_registry import ImageSize
from portrait_pipeline.styles import Style

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlayerOutcome:
    """One line of a batch's result, for progress bars, logs and metadata."""

    player_id: int
    display_name: str
    status: Literal["succeeded", "failed", "not_started", "skipped"]  # skipped: another run has the player
    reason: str | None = None
    asset_id: int | None = None
    seconds: float = 0.0
    cost_usd: Decimal = Decimal("0")
    key: str | None = None
    public_url: str | None = None
    user_prompt: str | None = None
    likeness_sha256: str | None = None
    reference_url: str | None = None
    output_tokens: int | None = None
    slug: str = ""  # two players may share a display name; the slug tells them apart
    quality_score: str | None = None  # the judge's score, what failed, or "not scored: why"; None when not judged
    attempts: int = 1  # more after automatic quality retries (cost_usd covers every attempt's image)
    judge_cost_usd: Decimal = Decimal("0")  # the judge's calls for this player


@dataclass(frozen=True)
class Claims:
    """How a batch claims its players against overlapping runs (see `audit.leases`)."""

    owner: str
    dagster_run_id: str | None = None
    ttl_s: float = leases.DEFAULT_TTL_S
    recheck_current: bool = False  # missing_only: skip a player another run finished since the plan


@dataclass(frozen=True)
class BatchJob:
    """What every player of one batch shares."""

    snapshot_id: int
    style: Style
    image_size: ImageSize
    fetch_likeness: bool = False
    likeness_url: str | None = None
    on_image: ImageHook | None = None  # sees each image while decoded (the contact sheet's thumbnails)
    claims: Claims | None = None  # None: no claims (a caller that knows it runs alone)
    # The batch lane's answers: each request carried its own player's description (player -> reference URL); a
    # player not in it had none. Replaces `fetch_likeness` and `likeness_url` when set.
    likeness_urls: Mapping[int, str] | None = None

    def likeness_for(self, player_id: int) -> tuple[bool, str | None]:
        """Whether the player's prompt carries a description, and of which reference URL (None: the player's own)."""
        if self.likeness_urls is None:
            return self.fetch_likeness, self.likeness_url
        return player_id in self.likeness_urls, self.likeness_urls.get(player_id)


@dataclass(frozen=True)
class BatchLimits:
    """How hard a batch may push: calls in flight, failures in a row, money; how long a stop waits for answers."""

    max_concurrency: int = 8
    max_consecutive_failures: int | None = 10
    max_cost_usd: Decimal | None = None
    grace_s: float = DEFAULT_GRACE_S


DEFAULT_LIMITS = BatchLimits()


@dataclass
class BatchResult:
    outcomes: list[PlayerOutcome]
    stopped: str | None = None  # why the batch stopped starting calls early, if it did


class _Breaker:
    """Decides whether another call may start: the circuit breaker and the budget, in one place."""

    def __init__(self, limits: BatchLimits, cost_per_image: Decimal) -> None:
        self.limits = limits
        self.cost_per_image = cost_per_image  # an image and its judge call, as budgeted before they are paid
        self.consecutive_failures = 0
        self.spent = Decimal("0")
        self.in_flight = 0
        self.stopped: str | None = None

    def may_start(self) -> bool:
        limit = self.limits.max_consecutive_failures
        if self.stopped is None and limit is not None and self.consecutive_failures >= limit:
            self.stopped = f"circuit breaker: {self.consecutive_failures} consecutive failures, no new calls started"
        budget = self.limits.max_cost_usd
        committed = self.spent + (self.in_flight + 1) * self.cost_per_image
        if self.stopped is None and budget is not None and committed > budget:
            self.stopped = f"budget: ${self.spent:.2f} spent + {self.in_flight} in flight would pass ${budget:.2f}"
        return self.stopped is None

    def started(self) -> None:
        self.in_flight += 1

    def may_retry(self) -> bool:
        """One more attempt for a player already in flight (a quality retry), if the budget has room: it is counted
        in flight until its player finishes. Refusing one does not stop the run."""
        budget = self.limits.max_cost_usd
        if self.stopped is not None or (
            budget is not None and self.spent + (self.in_flight + 1) * self.cost_per_image > budget
        ):
            return False
        self.in_flight += 1
        return True

    def finished(self, outcome: PlayerOutcome, retries: int = 0) -> None:
        self.in_flight -= 1 + retries
        self.spent += outcome.cost_usd + outcome.judge_cost_usd
        if outcome.status != "skipped":  # another run's player says nothing about this run's health
            self.consecutive_failures = self.consecutive_failures + 1 if outcome.status == "failed" else 0


async def generate_batch(
    engine: Engine,
    service: ImageGenerationService,
    job: BatchJob,
    player_ids: Sequence[int],
    limits: BatchLimits = DEFAULT_LIMITS,
    on_outcome: Callable[[PlayerOutcome], None] | None = None,
    stop: StopRequest | None = None,
) -> BatchResult:
    """Generate for many players at once, each durable on its own; stop starting calls when a limit says so.

    Two stages, each at most `max_concurrency` players: calls (prompt to answer) and storing (fit and encode,
    store, commit). An answered player moves to the second stage as soon as it has room, which frees its call slot for
    the next player; so the API stays busy while images are stored, and at most twice `max_concurrency` images
    are in memory, whatever the batch size (players are started lazily).

    A stop request (SIGINT, SIGTERM) starts no new call and gives the calls in flight `grace_s` to answer and
    their images to be stored; then (or at a second signal) what is left is cancelled, each with its audit row.
    """
    calls = asyncio.Semaphore(limits.max_concurrency)
    storing = asyncio.Semaphore(limits.max_concurrency)
    # The budget counts each image with its judge call (set aside before the call, its token cost once answered).
    judged = service.quality.reserve_usd if service.quality is not None else Decimal("0")
    breaker = _Breaker(limits, service.renderer.pricing.usd_per_image(job.image_size) + judged)
    outcomes: list[PlayerOutcome] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(player_id: int, interruption: Interruption) -> None:
        answered = False

        async def on_answer() -> None:
            nonlocal answered
            # Back-pressure: no room to store, no new call.
            await interruption.unless_aborted(storing.acquire(), NOT_STORED)
            answered = True
            calls.release()

        retries = 0

        def may_retry() -> bool:
            nonlocal retries
            allowed = not interruption.request.requested and breaker.may_retry()  # the signal, as it comes
            retries += allowed
            return allowed

        try:
            outcome = await _generate_claimed(engine, service, job, player_id, on_answer, interruption, may_retry)
        finally:
            (storing if answered else calls).release()
        breaker.finished(outcome, retries)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    pending = list(player_ids)
    renewing = asyncio.create_task(_renew_claims(engine, job.claims)) if job.claims else None
    try:
        async with Interruption(stop, limits.grace_s) as interruption:
            while pending:
                await calls.acquire()
                if interruption.stopping.is_set() and breaker.stopped is None:
                    breaker.stopped = f"{interruption.request.reason}: no new calls started"
                if not breaker.may_start():
                    calls.release()
                    break
                breaker.started()
                tasks.append(asyncio.create_task(one(pending.pop(0), interruption)))
            await asyncio.gather(*tasks)
    finally:
        if renewing is not None:
            renewing.cancel()
    for player_id in pending:
        outcomes.append(PlayerOutcome(player_id, f"player {player_id}", "not_started", breaker.stopped))
    return BatchResult(outcomes=outcomes, stopped=breaker.stopped)


async def _generate_claimed(
    engine: Engine,
    service: ImageGenerationService,
    job: BatchJob,
    player_id: int,
    on_answer: Callable[[], Awaitable[None]],
    interruption: Interruption,
    may_retry: Callable[[], bool],
) -> PlayerOutcome:
    """Claim the player before its call, and release the claim once its audit row has committed (or failed to).

    A player another run holds is skipped rather than waited for: that run pays for it and records it, and a
    waiting run would hold a call slot idle for as long. With `recheck_current` (missing_only) the plan may be
    stale, so a player who got a current image since is skipped too, checked after the claim so no run can
    finish it in between.
    """
    claims = job.claims
    if claims is None:
        return await _generate_one(engine, service, job, player_id, on_answer, interruption, may_retry)
    try:
        holder = await asyncio.to_thread(
            leases.claim, engine, player_id, job.style, claims.owner, claims.ttl_s, claims.dagster_run_id
        )
        done = (
            holder is None and claims.recheck_current and await asyncio.to_thread(_has_current, engine, job, player_id)
        )
    except SQLAlchemyError as exc:  # nothing was called, nothing paid: a failure with the database's reason
        log.exception("player %s: could not claim the player", player_id)
        return PlayerOutcome(
            player_id, f"player {player_id}", "failed", f"cannot claim: {exc.__class__.__name__}: {exc}"
        )
    if holder is not None:
        return PlayerOutcome(player_id, f"player {player_id}", "skipped", f"in progress elsewhere: {holder}")
    try:
        if done:
            return PlayerOutcome(player_id, f"player {player_id}", "skipped", "finished by another run meanwhile")
        return await _generate_one(engine, service, job, player_id, on_answer, interruption, may_retry)
    finally:
        try:
            await asyncio.to_thread(leases.release, engine, player_id, job.style, claims.owner)
        except SQLAlchemyError:  # the claim expires on its own
            log.warning("player %s: could not release the claim; it expires in %.0f s", player_id, claims.ttl_s)


def _has_current(engine: Engine, job: BatchJob, player_id: int) -> bool:
    """A current image, or a new one waiting for review: missing_only leaves either alone."""
    with session_scope(engine) as db:
        return bool(queries.players_with_image_or_pending(db, job.style, [player_id]))


async def _renew_claims(engine: Engine, claims: Claims) -> None:
    """Keep the batch's claims alive while its calls are in flight: a call (with retries) may outlast the TTL."""
    while True:
        await asyncio.sleep(claims.ttl_s / 3)
        try:
            await asyncio.to_thread(leases.renew, engine, claims.owner, claims.ttl_s)
        except SQLAlchemyError as exc:
            log.warning("could not renew the batch's claims: %s", exc.__class__.__name__)


async def _generate_one(
    engine: Engine,
    service: ImageGenerationService,
    job: BatchJob,
    player_id: int,
    on_answer: Callable[[], Awaitable[None]],
    interruption: Interruption,
    may_retry: Callable[[], bool],
) -> PlayerOutcome:
    fetch_likeness, likeness_url = job.likeness_for(player_id)
    try:
        with session_scope(engine) as db:
            player = db.get_one(Player, player_id)
            snapshot = db.get_one(PlayerImageSnapshot, job.snapshot_id)
            # Hand the connection back while the call is in flight: the pool is smaller than max_concurrency.
            db.commit()
            result = await service.generate(
                db=db,
                player=player,
                snapshot=snapshot,
                style=job.style,
                fetch_likeness=fetch_likeness,
                image_size=job.image_size,
                likeness_url=likeness_url,
                on_answer=on_answer,
                on_image=job.on_image,
                interruption=interruption,
                may_retry=may_retry,
            )
            return outcome_of(result, player)
    except NotSent as exc:  # a stop came while its call waited to be sent: nothing paid, nothing recorded
        return PlayerOutcome(player_id, f"player {player_id}", "not_started", str(exc))
    except Exception as exc:  # the database itself failed: nothing could be recorded for this player
        log.exception("player %s: could not record the generation", player_id)
        return PlayerOutcome(player_id, f"player {player_id}", "failed", f"{exc.__class__.__name__}: {exc}")


def outcome_of(result: PlayerResult, player: Player) -> PlayerOutcome:
    asset = result.asset
    return PlayerOutcome(
        player_id=player.id,
        display_name=player.display_name,
        slug=player.slug,
        status="succeeded" if asset.status == "succeeded" else "failed",
        reason=asset.error_message,
        asset_id=asset.id,
        seconds=asset.generation_time_sec or 0.0,
        cost_usd=result.cost_usd,
        key=asset.s3_key,
        public_url=asset.public_url,
        user_prompt=asset.user_prompt,
        likeness_sha256=asset.reference_sha256,
        reference_url=asset.reference_image_url,
        output_tokens=asset.output_tokens,
        quality_score=result.quality,
        attempts=result.attempts,
        judge_cost_usd=result.judge_cost_usd,
    )
