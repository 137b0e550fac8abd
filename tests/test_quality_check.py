"""The `quality` check on `player_portraits`: the judge's latest score rows of the partition's latest run, read
through Dagster; every figure in its metadata recomputed here from the rows."""

from __future__ import annotations

import json
import statistics
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import delete, select

from portrait_pipeline.audit.models import NOT_SCORED, SCORED, ImageQualityScore, PlayerImageAsset
from portrait_pipeline.audit.queries import latest_snapshot
from portrait_pipeline.defs.resources import (
    DatabaseResource,
    GeminiResource,
    ImageStorageResource,
    PortraitSettings,
    QualitySettings,
)
from portrait_pipeline.generation import judge
from tests.helpers import resources_for
from tests.test_checks import PARTITION, evaluations, generate, run_checks

RUBRIC = ["no_text", "one_person", "style", "likeness"]


@pytest.fixture
def resources(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> dict[str, Any]:
    desk = PortraitSettings(current_draft_year=2025, review_url="http://127.0.0.1:8765")
    return resources_for(roster_loaded, storage_resource, offline_gemini, settings=desk)


def stored_images(database: DatabaseResource) -> dict[int, int]:
    """Player id → asset id of the images the partition's latest snapshot stored."""
    with database.session() as db:
        snapshot = latest_snapshot(db, *PARTITION)
        assert snapshot is not None
        rows = db.execute(
            select(PlayerImageAsset.player_id, PlayerImageAsset.id).where(PlayerImageAsset.snapshot_id == snapshot.id)
        ).all()
    return {player_id: asset_id for player_id, asset_id in rows}


def score(database: DatabaseResource, asset_id: int, value: int | None, failed: dict[str, str] | None = None) -> None:
    """A judge's row: a score with the criteria it failed (threshold 70), or, with None, a `not_scored` row whose
    reason is the one entry of `failed`."""
    with database.session() as db:
        if value is None:
            (reason,) = (failed or {}).values()
            row = ImageQualityScore(asset_id=asset_id, status=NOT_SCORED, reason=reason, rubric_version="r1")
        else:
            criteria = [
                {"name": name, "passed": name not in (failed or {}), "reason": (failed or {}).get(name, "ok")}
                for name in RUBRIC
            ]
            row = ImageQualityScore(
                asset_id=asset_id,
                status=SCORED,
                score=value,
                passed=value >= 70,
                criteria=json.dumps(criteria),
                judge_model="gemini-2.5-flash",
                rubric_version="r1",
            )
        db.add(row)
        db.commit()


def expected_figures(database: DatabaseResource, asset_ids: list[int]) -> dict[str, Any]:
    """The check's figures, from the rows: each asset's newest row (highest id) is its verdict."""
    with database.session() as db:
        rows = db.scalars(select(ImageQualityScore).where(ImageQualityScore.asset_id.in_(asset_ids))).all()
        newest: dict[int, ImageQualityScore] = {}
        for row in sorted(rows, key=lambda row: row.id):
            newest[row.asset_id] = row
        scored = [row for row in newest.values() if row.status == SCORED]
        values = [row.score for row in scored if row.score is not None]
        db.expunge_all()
    return {
        "scored": len(scored),
        "not_scored": len(asset_ids) - len(scored),
        "pass_rate": round(sum(bool(row.passed) for row in scored) / len(scored), 4),
        "mean_score": round(sum(values) / len(values), 1),
        "min_score": min(values),
        "median_score": statistics.median(values),
        "worst": sorted(scored, key=lambda row: (row.score or 0, row.asset_id)),
    }


def test_quality_warns_below_the_pass_rate_and_lists_the_worst_images(
    resources: dict[str, Any], roster_loaded: DatabaseResource
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    generate(resources, instance, {"player_ids": [7]})
    score(roster_loaded, stored_images(roster_loaded)[7], 5, {"style": "an older run: not this partition's now"})
    generate(resources, instance, {"player_ids": [1, 2, 3, 4, 5, 6]})
    images = stored_images(roster_loaded)
    assert sorted(images) == [1, 2, 3, 4, 5, 6]
    score(roster_loaded, images[1], 92)
    score(roster_loaded, images[2], 35, {"no_text": "letters on the jersey", "one_person": "two people"})
    score(roster_loaded, images[3], 40, {"likeness": "beard the reference lacks"})
    score(roster_loaded, images[3], 81)  # rescored: the newest row is the verdict
    score(roster_loaded, images[4], 60, {"style": "photo-real face"})
    score(roster_loaded, images[5], None, {"reason": "judge error: HTTP 503"})
    # Player 6's image has no row at all (the offline run wrote "not scored: offline renderer" rows; its is
    # removed, as for an image made before the judge): it counts as not scored, never as a zero.
    with roster_loaded.session() as db:
        db.execute(delete(ImageQualityScore).where(ImageQualityScore.asset_id == images[6]))
        db.commit()
    expected = expected_figures(roster_loaded, list(images.values()))
    assert (expected["scored"], expected["pass_rate"]) == (4, 0.5)  # the data is what this test says it is

    warned = evaluations(run_checks(resources, instance))["quality"]  # the default rate: 0.8
    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
    assert warned.description == "2/4 scored images pass (50%; limit 80%); 2 not scored"
    metadata = {key: value.value for key, value in warned.metadata.items()}
    for key in ("scored", "not_scored", "pass_rate", "mean_score", "min_score", "median_score"):
        assert metadata[key] == expected[key], key
    assert (metadata["images"], metadata["min_quality_pass_rate"]) == (6, 0.8)
    reasons = str(metadata["not_scored_reasons"])
    assert "| judge error: HTTP 503 | 1 |" in reasons and "| no score recorded | 1 |" in reasons
    histogram = str(metadata["score_histogram"])
    assert "| 30-39 | 1 |" in histogram and "| 90-100 | 1 |" in histogram and "| 0-9 | 0 |" in histogram
    worst = str(metadata["worst_images"]).splitlines()[2:]
    assert [line.split(" | ")[1] for line in worst] == [str(row.score) for row in expected["worst"]]
    assert "no_text: letters on the jersey; one_person: two people" in worst[0]
    assert "style: photo-real face" in worst[1] and "beard" not in str(metadata["worst_images"])
    with roster_loaded.session() as db:
        url = db.get_one(PlayerImageAsset, images[2]).public_url
    assert f"[image]({url})" in worst[0]
    assert warned.metadata["review_page"] == dg.MetadataValue.url("http://127.0.0.1:8765/?partition=2025%7Cdefault")

    lenient = {**resources, "quality": QualitySettings(min_quality_pass_rate=0.5)}
    passed = evaluations(run_checks(lenient, instance))["quality"]
    assert passed.passed and passed.metadata["pass_rate"].value == 0.5


def test_quality_passes_and_says_why_when_nothing_was_scored(
    resources: dict[str, Any], roster_loaded: DatabaseResource
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("draft_years", [PARTITION[0]])
    assert evaluations(run_checks(resources, instance))["quality"].description == (
        "no finished snapshot for this partition yet"
    )
    generate(resources, instance, {"player_ids": [1, 2, 3]})
    images = stored_images(roster_loaded)
    # The offline run wrote a "not scored" row per image (no judge without a key); player 3's is removed, as for
    # an image made before the judge existed.
    with roster_loaded.session() as db:
        db.execute(delete(ImageQualityScore).where(ImageQualityScore.asset_id == images[3]))
        db.commit()
    evaluation = evaluations(run_checks(resources, instance))["quality"]
    assert evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.description == f"not scored: {judge.OFFLINE} (2 images); no score recorded (1 image)"
    assert (evaluation.metadata["scored"].value, evaluation.metadata["not_scored"].value) == (0, 3)
    figures = {"pass_rate", "mean_score", "min_score", "median_score", "score_histogram", "worst_images"}
    assert figures.isdisjoint(evaluation.metadata)  # no made-up zeros
