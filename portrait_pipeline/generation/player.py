"""One player's portrait: prompt, render, fit and store the image, and write its audit row, durably."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

from PIL import Image
from sqlalchemy.orm import Session

from portrait_pipeline import images, naming
from portrait_pipeline.audit import queries
from portrait_pipeline.audit import records as audit
from portrait_pipeline.audit.models import Player, PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.errors import PortraitPipelineError, StorageError
from portrait_pipeline.generation.renderer import RenderedImage, Renderer, RenderRequest
from portrait_pipeline.interrupts import CALL_CANCELLED, NOT_STORED, Interrupted, Interruption, unless_aborted
from portrait_pipeline.likeness import Likeness
from portrait_pipeline.model_registry import TARGET_DIMENSIONS, ImageSize
from portrait_pipeline.prompts import PromptVariant, prompt_variant, user_prompt
from portrait_pipeline.storage import ImageStorage, StoredObject, sha256_hex
from portrait_pipeline.styles import Style

LikenessSource = Callable[[Session, Player, str], Awaitable[Likeness]]
ImageHook = Callable[[str, Image.Image], None]


class ImageGenerationService:
    """The seed's service: generate one player's portrait, store it, and write its audit row."""

    def __init__(
        self,
        renderer: Renderer,
        storage: ImageStorage,
        likeness: LikenessSource | None = None,
        require_review: bool = False,
    ) -> None:
        self.renderer = renderer
        self.storage = storage
        self.likeness = likeness
        self.require_review = require_review  # PORTRAIT_REQUIRE_REVIEW: new images wait for a reviewer

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
        on_image: ImageHook | None = None,
        interruption: Interruption | None = None,
    ) -> PlayerImageAsset:
        """Durable per player: the image is in storage before its row commits; failures become rows too.

        `on_answer` is awaited once the model has answered, before the image is processed and stored: a batch
        hands the call's slot to the next player there, so storing never holds up the API. `on_image` sees each
        image while it is decoded (a worker thread calls it): the partition keeps a thumbnail for its contact sheet.
        An `interruption` that aborts the run cancels the call or the storing; the row says which, with the cost.
        """
        # A reviewer rejected the player's latest image: this one corrects it, with the reviewer's guidance as data.
        corrects = await asyncio.to_thread(_correction_for, db, player.id, style)
        guidance = corrects.guidance if corrects else None
        attempt = _Attempt(
            started=time.monotonic(),
            variant=prompt_variant(snapshot.prompt_variant),  # the run's prompt variant, recorded on its snapshot
            prompt=player_prompt(player, None, guidance),
            reference_url=(likeness_url or player.reference_image_url) if fetch_likeness else None,
            guidance=guidance,
            replaces_asset_id=corrects.id if corrects else None,
        )
        try:
            png, stored = await self._make_image(
                db, player, style, image_size, attempt, on_answer, on_image, interruption
            )
        except PortraitPipelineError as exc:
            if isinstance(exc, Interrupted) and attempt.rendered is None:
                attempt.cost = self.renderer.pricing.usd_per_image(image_size)  # it may be billed: err high
            return audit.record_failure(db, snapshot, player, style, self._record(attempt), str(exc))
        width, height = TARGET_DIMENSIONS[image_size]
        record = self._record(attempt, width=width, height=height)
        # The serving alias is rewritten under the player's row lock, so it always shows the current image.
        publish = partial(self.storage.put, naming.current_key(player.id, player.slug, style), png, immutable=False)
        # A correction of a rejected image goes back to the reviewer, whatever PORTRAIT_REQUIRE_REVIEW says; a trial
        # image (a prompt experiment's) waits for a reviewer's verdict and never goes live.
        trial = queries.is_trial_snapshot(snapshot.run_key, snapshot.prompt_variant)
        pending = self.require_review or attempt.replaces_asset_id is not None or trial
        success = partial(audit.record_success, pending_review=pending)
        try:
            return await asyncio.to_thread(success, db, snapshot, player, style, record, stored, publish)
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
        on_image: ImageHook | None,
        interruption: Interruption | None,
    ) -> tuple[bytes, StoredObject]:
        if attempt.reference_url and self.likeness is not None:
            attempt.likeness = await self.likeness(db, player, attempt.reference_url)
            description = attempt.likeness.description
            attempt.prompt = player_prompt(player, description, attempt.guidance)
        request = render_request(player, style, image_size, attempt.prompt, attempt.variant.name)
        rendered = await unless_aborted(interruption, self.renderer.render(request), CALL_CANCELLED)
        provenance = {
            "portrait:player_id": str(player.id),
            "portrait:style": style,
            "portrait:model": self.renderer.model,
            "portrait:prompt_version": attempt.variant.version,
            "portrait:prompt_variant": attempt.variant.name,
        }
        attempt.rendered = rendered  # paid for from here on, whatever happens next
        attempt.cost = self.renderer.pricing.usd_per_image(image_size)
        if on_answer is not None:
            await on_answer()
        # Decoding, resizing and encoding take CPU: off the event loop, so the other calls keep flowing.
        target = TARGET_DIMENSIONS[image_size]
        finish = asyncio.to_thread(_finish, rendered.data, target, provenance, on_image)
        png, digest = await unless_aborted(interruption, finish, NOT_STORED)
        history_key = naming.history_key(player.id, player.slug, style, digest)
        # The history object is stored before the row: no row ever claims an image storage does not have.
        put = asyncio.to_thread(self.storage.put, history_key, png, immutable=True)
        stored = await unless_aborted(interruption, put, NOT_STORED)
        return png, stored

    def _record(
        self, attempt: _Attempt, *, width: int | None = None, height: int | None = None
    ) -> audit.GenerationRecord:
        """The audit fields of an attempt; an answer that was paid for keeps its cost and tokens even if it failed."""
        likeness, rendered = attempt.likeness, attempt.rendered
        return audit.GenerationRecord(
            user_prompt=attempt.prompt,
            model=self.renderer.model,
            system_prompt_version=attempt.variant.version,
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
            replaces_asset_id=attempt.replaces_asset_id,
            prompt_variant=attempt.variant.name,
        )


def _correction_for(db: Session, player_id: int, style: str) -> PlayerImageAsset | None:
    """The rejected image this generation corrects, if any; the read's transaction ends here, so the connection goes
    back to the pool before the call (a batch has more calls in flight than the pool has connections)."""
    corrects = queries.correction_for(db, player_id, style)
    db.commit()
    return corrects


def player_prompt(player: Player, likeness_description: str | None, guidance: str | None = None) -> str:
    """A player's user prompt: the one both lanes send (and the audit row records)."""
    return user_prompt(player.display_name, player.position, player.school, likeness_description, guidance)


def render_request(player: Player, style: Style, image_size: ImageSize, prompt: str, variant: str) -> RenderRequest:
    """What one player's portrait asks the model for under a prompt variant, on either lane (the batch lane sends it
    inside a job)."""
    return RenderRequest(
        player_id=player.id,
        seed=f"{player.id}:{player.slug}",
        style=style,
        system_prompt=prompt_variant(variant).full_system_prompt(style),
        user_prompt=prompt,
        size=image_size,
    )


def _finish(
    data: bytes, target: tuple[int, int], provenance: dict[str, str], on_image: ImageHook | None
) -> tuple[bytes, str]:
    """The answer as a 4:5 PNG with its SHA-256; `on_image` sees it while it is still decoded."""
    image = images.fit(data, target)
    png = images.to_png(image, provenance)
    digest = sha256_hex(png)
    if on_image is not None:
        on_image(digest, image)
    return png, digest


@dataclass
class _Attempt:
    """What is known about one player's attempt so far, so a failure row records it too."""

    started: float
    variant: PromptVariant
    prompt: str
    reference_url: str | None
    guidance: str | None = None
    replaces_asset_id: int | None = None
    likeness: Likeness | None = None
    rendered: RenderedImage | None = None
    cost: Decimal = Decimal("0")
