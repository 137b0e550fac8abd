"""Generating portraits: a renderer (Gemini or offline), one player at a time durably, many at once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, partial
from typing import Any, Literal, Protocol

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from portrait_pipeline import audit, images, naming
from portrait_pipeline.costs import OFFLINE_MODEL, TARGET_DIMENSIONS, ImageSize, price
from portrait_pipeline.db import session_scope
from portrait_pipeline.db.models import Player, PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.errors import PortraitPipelineError, StorageError
from portrait_pipeline.likeness import Likeness
from portrait_pipeline.prompts import SYSTEM_PROMPT_VERSION, system_prompt, user_prompt
from portrait_pipeline.renderer import render_portrait
from portrait_pipeline.storage import ImageStorage, StoredObject, sha256_hex
from portrait_pipeline.styles import Style

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderRequest:
    player_id: int
    seed: str
    style: Style
    system_prompt: str
    user_prompt: str
    size: ImageSize


@dataclass(frozen=True)
class RenderedImage:
    data: bytes
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None


class Renderer(Protocol):
    """Turns prompts into image bytes; raises GenerationFailed with a reason when it cannot."""

    @property
    def model(self) -> str: ...

    async def render(self, request: RenderRequest) -> RenderedImage: ...


class OfflineRenderer:
    """The embedded default: Pillow placeholder posters, free, recorded as `offline-renderer`."""

    model = OFFLINE_MODEL

    async def render(self, request: RenderRequest) -> RenderedImage:
        width, height = TARGET_DIMENSIONS[request.size]
        data = await asyncio.to_thread(render_portrait, request.seed, request.style, width, height)
        return RenderedImage(data=data)


LikenessSource = Callable[[Session, Player, str], Awaitable[Likeness]]


class ImageGenerationService:
    """The seed's service: generate one player's portrait, store it, and write its audit row."""

    def __init__(
        self,
        renderer: Renderer,
        storage: ImageStorage,
        likeness: LikenessSource | None = None,
        contact_sheet: images.ContactSheet | None = None,
    ) -> None:
        self.renderer = renderer
        self.storage = storage
        self.likeness = likeness
        self.contact_sheet = contact_sheet

    async def generate_for_player(
        self,
        db: Session,
        player: Player,
        snapshot: PlayerImageSnapshot,
        style: Style = "default",
        fetch_likeness: bool = False,
        image_size: ImageSize = "1K",
        likeness_url: str | None = None,
        on_answer: Callable[[], Awaitable[None]] | None = None,
    ) -> PlayerImageAsset:
        """Durable per player: the image is in storage before its row commits; failures become rows too.

        `on_answer` is awaited once the model has answered, before the image is processed and stored: a batch
        hands the call's slot to the next player there, so storing never holds up the API.
        """
        attempt = _Attempt(
            started=time.monotonic(),
            prompt=user_prompt(player.display_name, player.position, player.school, None),
            reference_url=(likeness_url or player.reference_image_url) if fetch_likeness else None,
        )
        try:
            png, stored = await self._make_image(db, player, style, image_size, attempt, on_answer)
        except PortraitPipelineError as exc:
            return audit.record_failure(db, snapshot, player, style, self._record(attempt), str(exc))
        width, height = TARGET_DIMENSIONS[image_size]
        record = self._record(attempt, width=width, height=height)
        # The serving alias is rewritten under the player's row lock, so it always shows the current image.
        publish = partial(self.storage.put, naming.current_key(player.id, player.slug, style), png, immutable=False)
        try:
            return await asyncio.to_thread(audit.record_success, db, snapshot, player, style, record, stored, publish)
        except StorageError as exc:
            db.rollback()  # the uncommitted row of this image, not the caller's committed snapshot
            return audit.record_failure(db, snapshot, player, style, self._record(attempt), str(exc))

    async def _make_image(
        self,
        db: Session,
        player: Player,
        style: Style,
        image_size: ImageSize,
        attempt: _Attempt,
        on_answer: Callable[[], Awaitable[None]] | None,
    ) -> tuple[bytes, StoredObject]:
        if attempt.reference_url and self.likeness is not None:
            attempt.likeness = await self.likeness(db, player, attempt.reference_url)
            description = attempt.likeness.description
            attempt.prompt = user_prompt(player.display_name, player.position, player.school, description)
        rendered = await self.renderer.render(
            RenderRequest(
                player_id=player.id,
                seed=f"{player.id}:{player.slug}",
                style=style,
                system_prompt=system_prompt(style),
                user_prompt=attempt.prompt,
                size=image_size,
            )
        )
        provenance = {
            "portrait:player_id": str(player.id),
            "portrait:style": style,
            "portrait:model": self.renderer.model,
            "portrait:prompt_version": SYSTEM_PROMPT_VERSION,
        }
        attempt.rendered = rendered  # paid for from here on, whatever happens next
        attempt.cost = price(self.renderer.model, image_size).usd_per_image
        if on_answer is not None:
            await on_answer()
        # Decoding, resizing and encoding take CPU: off the event loop, so the other calls keep flowing.
        png, digest = await asyncio.to_thread(self._finish, rendered.data, TARGET_DIMENSIONS[image_size], provenance)
        history_key = naming.history_key(player.id, player.slug, style, digest)
        # The history object is stored before the row: no row ever claims an image storage does not have.
        stored = await asyncio.to_thread(self.storage.put, history_key, png, immutable=True)
        return png, stored

    def _finish(self, data: bytes, target: tuple[int, int], provenance: dict[str, str]) -> tuple[bytes, str]:
        """The answer as a 4:5 PNG with its SHA-256; its thumbnail goes to the contact sheet while still decoded."""
        image = images.fit(data, target)
        png = images.to_png(image, provenance)
        digest = sha256_hex(png)
        if self.contact_sheet is not None:
            self.contact_sheet.keep(digest, image)
        return png, digest

    def _record(
        self, attempt: _Attempt, *, width: int | None = None, height: int | None = None
    ) -> audit.GenerationRecord:
        """The audit fields of an attempt; an answer that was paid for keeps its cost and tokens even if it failed."""
        likeness, rendered = attempt.likeness, attempt.rendered
        return audit.GenerationRecord(
            user_prompt=attempt.prompt,
            model=self.renderer.model,
            system_prompt_version=SYSTEM_PROMPT_VERSION,
            generation_time_sec=round(time.monotonic() - attempt.started, 3),
            likeness_description=likeness.description if likeness else None,
            reference_image_url=attempt.reference_url,
            reference_sha256=likeness.reference_sha256 if likeness else None,
            width=width,
            height=height,
            prompt_tokens=rendered.prompt_tokens if rendered else None,
            output_tokens=rendered.output_tokens if rendered else None,
            total_tokens=rendered.total_tokens if rendered else None,
            cost_usd=attempt.cost,
        )


@dataclass
class _Attempt:
    """What is known about one player's attempt so far, so a failure row records it too."""

    started: float
    prompt: str
    reference_url: str | None
    likeness: Likeness | None = None
    rendered: RenderedImage | None = None
    cost: Decimal = Decimal("0")


@dataclass(frozen=True)
class PlayerOutcome:
    """One line of a batch's result, for progress bars, logs and metadata."""

    player_id: int
    display_name: str
    status: Literal["succeeded", "failed", "not_started"]
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


@dataclass(frozen=True)
class BatchJob:
    """What every player of one batch shares."""

    snapshot_id: int
    style: Style
    image_size: ImageSize
    fetch_likeness: bool = False
    likeness_url: str | None = None


@dataclass(frozen=True)
class BatchLimits:
    """How hard a batch may push: calls in flight, failures in a row, money."""

    max_concurrency: int = 8
    max_consecutive_failures: int | None = 10
    max_cost_usd: Decimal | None = None


DEFAULT_LIMITS = BatchLimits()


@dataclass
class BatchResult:
    outcomes: list[PlayerOutcome]
    stopped: str | None = None  # why the batch stopped starting calls early, if it did


class _Breaker:
    """Decides whether another call may start: the circuit breaker and the budget, in one place."""

    def __init__(self, limits: BatchLimits, cost_per_image: Decimal) -> None:
        self.limits = limits
        self.cost_per_image = cost_per_image
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

    def finished(self, outcome: PlayerOutcome) -> None:
        self.in_flight -= 1
        self.spent += outcome.cost_usd
        self.consecutive_failures = self.consecutive_failures + 1 if outcome.status == "failed" else 0


async def generate_batch(
    engine: Engine,
    service: ImageGenerationService,
    job: BatchJob,
    player_ids: Sequence[int],
    limits: BatchLimits = DEFAULT_LIMITS,
    on_outcome: Callable[[PlayerOutcome], None] | None = None,
) -> BatchResult:
    """Generate for many players at once, each durable on its own; stop starting calls when a limit says so.

    Two stages, each at most `max_concurrency` players: calls (prompt to answer) and storing (fit and encode,
    store, commit). An answered player moves to the second stage as soon as it has room, which frees its call slot for
    the next player; so the API stays busy while images are stored, and at most twice `max_concurrency` images
    are in memory, whatever the batch size (players are started lazily).
    """
    calls = asyncio.Semaphore(limits.max_concurrency)
    storing = asyncio.Semaphore(limits.max_concurrency)
    breaker = _Breaker(limits, price(service.renderer.model, job.image_size).usd_per_image)
    outcomes: list[PlayerOutcome] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(player_id: int) -> None:
        answered = False

        async def on_answer() -> None:
            nonlocal answered
            await storing.acquire()  # back-pressure: no room to store, no new call
            answered = True
            calls.release()

        try:
            outcome = await _generate_one(engine, service, job, player_id, on_answer)
        finally:
            (storing if answered else calls).release()
        breaker.finished(outcome)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    pending = list(player_ids)
    while pending:
        await calls.acquire()
        if not breaker.may_start():
            calls.release()
            break
        breaker.started()
        tasks.append(asyncio.create_task(one(pending.pop(0))))
    await asyncio.gather(*tasks)
    for player_id in pending:
        outcomes.append(PlayerOutcome(player_id, f"player {player_id}", "not_started", breaker.stopped))
    return BatchResult(outcomes=outcomes, stopped=breaker.stopped)


async def _generate_one(
    engine: Engine,
    service: ImageGenerationService,
    job: BatchJob,
    player_id: int,
    on_answer: Callable[[], Awaitable[None]],
) -> PlayerOutcome:
    try:
        with session_scope(engine) as db:
            player = db.get_one(Player, player_id)
            snapshot = db.get_one(PlayerImageSnapshot, job.snapshot_id)
            # Hand the connection back while the call is in flight: the pool is smaller than max_concurrency.
            db.commit()
            asset = await service.generate_for_player(
                db=db,
                player=player,
                snapshot=snapshot,
                style=job.style,
                fetch_likeness=job.fetch_likeness,
                image_size=job.image_size,
                likeness_url=job.likeness_url,
                on_answer=on_answer,
            )
            return outcome_of(asset, player)
    except Exception as exc:  # the database itself failed: nothing could be recorded for this player
        log.exception("player %s: could not record the generation", player_id)
        return PlayerOutcome(player_id, f"player {player_id}", "failed", f"{exc.__class__.__name__}: {exc}")


def outcome_of(asset: PlayerImageAsset, player: Player) -> PlayerOutcome:
    return PlayerOutcome(
        player_id=player.id,
        display_name=player.display_name,
        status="succeeded" if asset.status == "succeeded" else "failed",
        reason=asset.error_message,
        asset_id=asset.id,
        seconds=asset.generation_time_sec or 0.0,
        cost_usd=asset.cost_usd or Decimal("0"),
        key=asset.s3_key,
        public_url=asset.public_url,
        user_prompt=asset.user_prompt,
        likeness_sha256=asset.reference_sha256,
        reference_url=asset.reference_image_url,
        output_tokens=asset.output_tokens,
    )


def __getattr__(name: str) -> Any:
    """`image_generation_service`, the seed's ready-made service, built from the environment on first use.

    `from portrait_pipeline.image_generation import image_generation_service`, then
    `await image_generation_service.generate_for_player(db=..., player=..., snapshot=..., style=...)`.
    """
    if name != "image_generation_service":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _default_service()


@cache
def _default_service() -> ImageGenerationService:
    import dagster as dg

    from portrait_pipeline.resources import generation_service, resources_from_env

    resources = resources_from_env()
    keys = ("storage", "gemini", "likeness")
    with dg.build_resources({key: resources[key] for key in keys}) as built:
        return generation_service(built.storage, built.gemini, built.likeness)
