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
from portrait_pipeline.audit.models import NOT_SCORED, Player, PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.errors import PortraitPipelineError, StorageError
from portrait_pipeline.generation.judge import JUDGE_CANCELLED, JudgeRequest, QualityPolicy, Verdict
from portrait_pipeline.generation.renderer import RenderedImage, Renderer, RenderRequest
from portrait_pipeline.interrupts import (
    CALL_CANCELLED,
    NOT_STORED,
    Interrupted,
    Interruption,
    NotSent,
    unless_aborted,
)
from portrait_pipeline.likeness import Likeness
from portrait_pipeline.model_registry import TARGET_DIMENSIONS, ImageSize
from portrait_pipeline.prompts import PromptVariant, prompt_variant, user_prompt
from portrait_pipeline.storage import ImageStorage, StoredObject, sha256_hex
from portrait_pipeline.styles import Style

LikenessSource = Callable[[Session, Player, str], Awaitable[Likeness]]
ImageHook = Callable[[str, Image.Image], None]


@dataclass(frozen=True)
class PlayerResult:
    """One player's generation: its image (the newest one made, else the last attempt's failure row), how many
    attempts it took, what their images and their judge calls cost, and the quality cell of the per-player table."""

    asset: PlayerImageAsset
    attempts: int
    cost_usd: Decimal  # every attempt's image (the asset rows)
    judge_cost_usd: Decimal  # every judge call (the score rows)
    quality: str | None  # None: no judging configured


class ImageGenerationService:
    """The seed's service: generate one player's portrait, store it, and write its audit row."""

    def __init__(
        self,
        renderer: Renderer,
        storage: ImageStorage,
        likeness: LikenessSource | None = None,
        require_review: bool = False,
        quality: QualityPolicy | None = None,
    ) -> None:
        self.renderer = renderer
        self.storage = storage
        self.likeness = likeness
        self.require_review = require_review  # PORTRAIT_REQUIRE_REVIEW: new images wait for a reviewer
        self.quality = quality  # None: images are not judged (PORTRAIT_QUALITY_JUDGE=false)

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
        result = await self.generate(
            db, player, snapshot, style, fetch_likeness, image_size, likeness_url, on_answer, on_image, interruption
        )
        return result.asset

    async def generate(
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
        may_retry: Callable[[], bool] | None = None,
    ) -> PlayerResult:
        """`generate_for_player`, then the quality policy's retries; `may_retry` (the run's budget) may refuse one."""
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
            reviewer_guidance=guidance,
            for_reviewer=corrects is not None,
        )
        done = await self._attempt(db, player, snapshot, style, image_size, attempt, on_answer, on_image, interruption)
        attempts = [done]
        # The quality policy's post-store step: an image that failed the rubric was held for review; while retries
        # are left (and the run's budget allows one), the player is made again with the failed criteria as guidance.
        # Not in a prompt experiment: its images wait for a reviewer anyway, and the report compares each variant's
        # own first attempts (a retry's prompt carries the judge's feedback, not only the variant).
        trial = queries.is_trial_snapshot(snapshot.run_key, snapshot.prompt_variant)
        while (
            not trial and (verdict := self._retry_due(done, len(attempts) - 1)) and (may_retry is None or may_retry())
        ):
            retries = await asyncio.to_thread(audit.quality_retry_snapshot, db, snapshot, len(attempts))
            attempt = attempt.retry(player, done.asset.id, verdict.guidance())
            try:
                done = await self._attempt(
                    db, player, retries, style, image_size, attempt, None, on_image, interruption
                )
            except NotSent:  # a stop came before the retry's call left: the player keeps the image it has
                break
            await asyncio.to_thread(audit.count_retries, db, retries)
            attempts.append(done)
        return self._result(attempts)

    async def _attempt(
        self,
        db: Session,
        player: Player,
        snapshot: PlayerImageSnapshot,
        style: Style,
        image_size: ImageSize,
        attempt: _Attempt,
        on_answer: Callable[[], Awaitable[None]] | None,
        on_image: ImageHook | None,
        interruption: Interruption | None,
    ) -> _Done:
        """One image: made, stored, judged, and its row (with its score) committed; a failure becomes a row too."""
        try:
            png, stored = await self._make_image(
                db, player, style, image_size, attempt, on_answer, on_image, interruption
            )
        except NotSent:  # nothing was sent, nothing is billed: no row, the caller counts the player as not started
            raise
        except PortraitPipelineError as exc:
            if isinstance(exc, Interrupted) and attempt.rendered is None:
                attempt.cost = self.renderer.pricing.usd_per_image(image_size)  # it may be billed: err high
            return _Done(audit.record_failure(db, snapshot, player, style, self._record(attempt), str(exc)))
        verdict = await self._judge(png, player, style, attempt, interruption)
        scored = verdict.record(self.quality.threshold) if verdict is not None and self.quality else None
        width, height = TARGET_DIMENSIONS[image_size]
        record = self._record(attempt, width=width, height=height)
        # The serving alias is rewritten under the player's row lock, so it always shows the current image.
        publish = partial(self.storage.put, naming.current_key(player.id, player.slug, style), png, immutable=False)
        # A correction of a rejected image goes back to the reviewer, whatever PORTRAIT_REQUIRE_REVIEW says; so does
        # an image the judge failed (or could not look at for safety), and a trial image (a prompt experiment's),
        # which waits for a reviewer's verdict and never goes live.
        held = verdict is not None and self.quality is not None and self.quality.holds(verdict)
        trial = queries.is_trial_snapshot(snapshot.run_key, snapshot.prompt_variant)
        pending = self.require_review or attempt.for_reviewer or held or trial
        success = partial(audit.record_success, pending_review=pending, quality=scored)
        try:
            asset = await asyncio.to_thread(success, db, snapshot, player, style, record, stored, publish)
        except StorageError as exc:
            db.rollback()  # the uncommitted row of this image, not the caller's committed snapshot
            failed = audit.record_failure(db, snapshot, player, style, self._record(attempt), str(exc), scored)
            return _Done(failed, verdict)
        return _Done(asset, verdict)

    def _retry_due(self, done: _Done, retries_made: int) -> Verdict | None:
        """The failed verdict of an image that was stored, when the policy wants another attempt; else None."""
        if self.quality is None or done.verdict is None or done.asset.status != "succeeded":
            return None
        return done.verdict if self.quality.retries(done.verdict, retries_made) else None

    async def _judge(
        self, png: bytes, player: Player, style: Style, attempt: _Attempt, interruption: Interruption | None
    ) -> Verdict | None:
        """The stored image's verdict; None when nothing is judged. A run aborted meanwhile leaves it not scored."""
        if self.quality is None:
            return None
        description = attempt.likeness.description if attempt.likeness else None
        request = JudgeRequest(player.display_name, style, description)
        try:
            return await unless_aborted(interruption, self.quality.verdict(png, request), JUDGE_CANCELLED)
        except Interrupted as exc:
            model = self.quality.judge.model if self.quality.judge is not None else None
            # A call that never left costs nothing; one that was sent may be billed: its reserve is recorded (errs high)
            cost = Decimal("0") if isinstance(exc, NotSent) else self.quality.reserve_usd
            return Verdict(NOT_SCORED, reason=str(exc), judge_model=model, cost_usd=cost)

    def _result(self, attempts: list[_Done]) -> PlayerResult:
        images = [done for done in attempts if done.asset.status == "succeeded"]
        final = images[-1] if images else attempts[-1]
        cost = sum((done.asset.cost_usd or Decimal("0") for done in attempts), Decimal("0"))
        judged = sum((done.verdict.cost_usd for done in attempts if done.verdict is not None), Decimal("0"))
        quality = None
        if self.quality is not None and final.verdict is not None:
            quality = final.verdict.summary(self.quality.threshold)
        if quality is not None and len(attempts) > 1:
            quality += f" ({len(attempts) - 1} automatic retr{'y' if len(attempts) == 2 else 'ies'})"
            if attempts[-1] is not final:
                quality += f"; the last retry failed: {attempts[-1].asset.error_message}"
        return PlayerResult(final.asset, len(attempts), cost, judged, quality)

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
        if attempt.reference_url and self.likeness is not None and attempt.likeness is None:
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
    reviewer_guidance: str | None = None  # a reviewer's correction, kept through quality retries
    for_reviewer: bool = False  # it corrects a rejected image: it goes back to the reviewer

    def retry(self, player: Player, replaces_asset_id: int, correction: str) -> _Attempt:
        """The next attempt after a failed quality check: the same likeness, the failed criteria as guidance (data in
        the prompt, after any reviewer's correction), linked to the image it replaces."""
        guidance = f"{self.reviewer_guidance}; {correction}" if self.reviewer_guidance else correction
        description = self.likeness.description if self.likeness else None
        return _Attempt(
            started=time.monotonic(),
            variant=self.variant,
            prompt=player_prompt(player, description, guidance),
            reference_url=self.reference_url,
            guidance=guidance,
            replaces_asset_id=replaces_asset_id,
            likeness=self.likeness,
            reviewer_guidance=self.reviewer_guidance,
            for_reviewer=self.for_reviewer,
        )


@dataclass(frozen=True)
class _Done:
    """An attempt's audit row and, for a stored image, the judge's verdict."""

    asset: PlayerImageAsset
    verdict: Verdict | None = None
