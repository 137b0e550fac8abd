"""A run's settings, defined once: the launchpad's config, which the CLI, the sensor and the schedules build too."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import dagster as dg
from pydantic import Field, model_validator

from portrait_pipeline.audit.leases import DEFAULT_TTL_S
from portrait_pipeline.audit.models import DEFAULT_VARIANT
from portrait_pipeline.defs.partitions import split_partition_key
from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.generation.partition import PartitionRequest
from portrait_pipeline.interrupts import DEFAULT_GRACE_S
from portrait_pipeline.model_registry import Lane, parse_image_size
from portrait_pipeline.prompts import PROMPT_VARIANTS, prompt_variant
from portrait_pipeline.roster import check_reference_url
from portrait_pipeline.styles import parse_style


class PortraitRunConfig(dg.Config):
    """The seed's per-run knobs; every field can be set in the launchpad, and the CLI sets the same ones."""

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
    grace_period_s: float = Field(
        default=DEFAULT_GRACE_S, ge=0, description="After SIGINT/SIGTERM: seconds calls in flight may still answer"
    )
    claim_ttl_s: float = Field(
        default=DEFAULT_TTL_S, ge=5, description="A dead run's claims on its players expire after this (seconds)"
    )
    lane: Lane = Field(
        default="standard",
        description="standard: interactive calls; batch: one Batch API job at half the price, collected when done",
    )
    prompt_variant: str = Field(
        default=DEFAULT_VARIANT,
        description=f"Named prompt variant ({', '.join(PROMPT_VARIANTS)}); images of any but default wait for "
        "review and never go live (prompt experiments)",
    )

    @model_validator(mode="after")
    def _likeness_url_is_for_one_player(self) -> PortraitRunConfig:
        check_likeness_url(self.likeness_url, self.player_ids)
        return self

    @model_validator(mode="after")
    def _prompt_variant_is_known(self) -> PortraitRunConfig:
        if self.prompt_variant not in PROMPT_VARIANTS:
            raise InvalidInput(
                f"--prompt-variant (prompt_variant) {self.prompt_variant!r}: choose {', '.join(PROMPT_VARIANTS)}"
            )
        variant = prompt_variant(self.prompt_variant)
        if self.missing_only and not variant.is_default:
            # missing_only looks at live portraits, which a variant's images never become: every run would pay again.
            raise InvalidInput(
                f"--prompt-variant {variant.name} with --missing-only: a variant's images never go live, so every "
                "player would count as missing; use `portrait-pipeline experiment run`, which resumes per variant"
            )
        return self

    def run_config(self) -> dict[str, Any]:
        """The Dagster run config that launches `player_portraits` with the settings that were set."""
        return {"ops": {"player_portraits": {"config": self.model_dump(exclude_unset=True)}}}


def partition_request(
    config: PortraitRunConfig, partition_key: str, model: str, dagster_run_id: str | None = None
) -> PartitionRequest:
    """The one conversion from a run's config and its partition to the core's request (sizes checked per model)."""
    draft_year_key, style = split_partition_key(partition_key)
    return PartitionRequest(
        draft_year_key=draft_year_key,
        style=parse_style(style),
        image_size=parse_image_size(config.image_size, model),
        missing_only=config.missing_only,
        player_ids=tuple(config.player_ids),
        limit=config.limit,
        run_key=config.run_key,
        notes=config.notes,
        cohort=config.cohort,
        fetch_likeness=config.fetch_likeness or config.likeness_url is not None,
        likeness_url=config.likeness_url,
        dagster_run_id=dagster_run_id,
        max_cost_usd=Decimal(str(config.max_cost_usd)) if config.max_cost_usd is not None else None,
        max_consecutive_failures=config.max_consecutive_failures,
        grace_s=config.grace_period_s,
        claim_ttl_s=config.claim_ttl_s,
        lane=config.lane,
        prompt_variant=config.prompt_variant,
    )


class LikenessRunConfig(dg.Config):
    """Which players to describe; a single player may get an explicit reference URL."""

    player_ids: list[int] = Field(default=[], description="Only these players of the draft year")
    likeness_url: str | None = Field(default=None, description="Reference URL for a single-player run")

    @model_validator(mode="after")
    def _likeness_url_is_for_one_player(self) -> LikenessRunConfig:
        check_likeness_url(self.likeness_url, self.player_ids)
        return self


def check_likeness_url(likeness_url: str | None, player_ids: list[int]) -> None:
    """An explicit reference is one person's photo: one player, an http(s) URL.

    Raised as InvalidInput, which is not a ValueError, so pydantic lets it through with its message intact.
    """
    if likeness_url is None:
        return
    if len(player_ids) != 1:
        raise InvalidInput("--likeness-url (likeness_url) needs a single player: exactly one id in player_ids")
    check_reference_url(likeness_url)
