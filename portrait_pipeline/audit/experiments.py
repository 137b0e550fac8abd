"""Prompt experiments in the audit database: the experiment row, each variant's images, and the stored report.

A variant's images are the asset rows of the snapshots with its run key (`queries.experiment_run_key`): every
run of the experiment for that variant, reruns included.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from portrait_pipeline.audit.models import ImageQualityScore, PlayerImageAsset, PlayerImageSnapshot, PromptExperiment
from portrait_pipeline.audit.queries import experiment_run_key
from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.experiments import ExperimentSpec, ImageFacts, comparisons, variant_report
from portrait_pipeline.styles import parse_style


def find(db: Session, name: str) -> PromptExperiment | None:
    return db.scalar(select(PromptExperiment).where(PromptExperiment.name == name))


def named(db: Session, name: str) -> PromptExperiment:
    """The experiment of that name, or an error listing the ones there are."""
    experiment = find(db, name)
    if experiment is None:
        known = db.scalars(select(PromptExperiment.name).order_by(PromptExperiment.id)).all()
        raise InvalidInput(f"experiment {name!r}: no such experiment; known: {', '.join(known) or 'none yet'}")
    return experiment


def all_experiments(db: Session) -> list[PromptExperiment]:
    return list(db.scalars(select(PromptExperiment).order_by(PromptExperiment.id)))


def create(db: Session, spec: ExperimentSpec) -> PromptExperiment:
    experiment = PromptExperiment(
        name=spec.name,
        draft_year=spec.draft_year,
        style=spec.style,
        variants=json.dumps(list(spec.variants)),
        player_ids=json.dumps(list(spec.player_ids)),
        lane=spec.lane,
    )
    db.add(experiment)
    db.commit()
    return experiment


def spec_of(experiment: PromptExperiment) -> ExperimentSpec:
    return ExperimentSpec(
        name=experiment.name,
        draft_year=experiment.draft_year or 0,
        style=parse_style(experiment.style),
        variants=tuple(json.loads(experiment.variants)),
        player_ids=tuple(json.loads(experiment.player_ids)),
        lane=experiment.lane,
    )


def arm_assets(db: Session, spec: ExperimentSpec, variant: str) -> list[PlayerImageAsset]:
    """Every asset row of one variant's arm (failures too), oldest first."""
    return list(
        db.scalars(
            select(PlayerImageAsset)
            .join(PlayerImageSnapshot, PlayerImageSnapshot.id == PlayerImageAsset.snapshot_id)
            .where(
                PlayerImageSnapshot.run_key == experiment_run_key(spec.name, variant),
                PlayerImageAsset.prompt_variant == variant,
                PlayerImageAsset.player_id.in_(spec.player_ids),
            )
            .order_by(PlayerImageAsset.id)
        )
    )


def players_to_generate(db: Session, spec: ExperimentSpec, variant: str) -> list[int]:
    """The sample's players with no image in this variant's arm yet: what a (re)run pays for, once each."""
    done = {asset.player_id for asset in arm_assets(db, spec, variant) if asset.status == "succeeded"}
    return [player_id for player_id in spec.player_ids if player_id not in done]


def arm_facts(db: Session, spec: ExperimentSpec, variant: str) -> list[ImageFacts]:
    """The report's view of one arm: each asset row with its review status, its latest score and its judge costs."""
    assets = arm_assets(db, spec, variant)
    scores: dict[int, list[ImageQualityScore]] = defaultdict(list)
    for score in db.scalars(
        select(ImageQualityScore)
        .where(ImageQualityScore.asset_id.in_([asset.id for asset in assets]))
        .order_by(ImageQualityScore.id)
    ):
        scores[score.asset_id].append(score)
    return [_facts(asset, scores[asset.id]) for asset in assets]


def _facts(asset: PlayerImageAsset, scores: Sequence[ImageQualityScore]) -> ImageFacts:
    latest = scores[-1] if scores else None
    criteria = json.loads(latest.criteria) if latest is not None and latest.criteria else []
    return ImageFacts(
        player_id=asset.player_id,
        succeeded=asset.status == "succeeded",
        cost_usd=asset.cost_usd,
        review_status=asset.review_status,
        judge_cost_usd=sum((score.cost_usd for score in scores), Decimal(0)),
        score_status=latest.status if latest is not None else None,
        score=latest.score if latest is not None else None,
        passed=latest.passed if latest is not None else None,
        criteria=tuple((str(item["name"]), bool(item["passed"])) for item in criteria),
    )


def build_report(db: Session, experiment: PromptExperiment, at: datetime) -> dict[str, Any]:
    """Every variant's numbers from the audit rows as they are now, and each variant against the first."""
    spec = spec_of(experiment)
    arms = [variant_report(variant, len(spec.player_ids), arm_facts(db, spec, variant)) for variant in spec.variants]
    return {
        "experiment": spec.name,
        "draft_year": spec.draft_year,
        "style": spec.style,
        "lane": spec.lane,
        "players": len(spec.player_ids),
        "player_ids": list(spec.player_ids),
        "reported_at": at.isoformat(),
        "variants": arms,
        "comparisons": comparisons(arms),
    }


def store_report(db: Session, experiment: PromptExperiment, report: dict[str, Any], at: datetime) -> None:
    experiment.report, experiment.reported_at = json.dumps(report), at
    db.commit()
