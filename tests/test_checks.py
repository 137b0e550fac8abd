"""Quality checks on `player_portraits`: the plain functions on real audit rows and storage, then through Dagster."""

from collections.abc import Callable
from typing import Any

import dagster as dg
import pytest
from PIL import Image
from sqlalchemy import select

from portrait_pipeline import images
from portrait_pipeline.audit import records as audit
from portrait_pipeline.audit.models import Player, PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.audit.serving import approve
from portrait_pipeline.defs.assets import player_portraits
from portrait_pipeline.defs.checks import (
    coverage,
    current_images,
    failure_rate,
    failure_rate_check,
    images_valid,
    missing_players,
    pending_review,
    portrait_checks,
    validate_images,
)
from portrait_pipeline.defs.partitions import portrait_partition_key
from portrait_pipeline.defs.resources import (
    DatabaseResource,
    GeminiResource,
    ImageStorageResource,
    PortraitSettings,
    QualitySettings,
)
from portrait_pipeline.generation.offline import render_portrait
from portrait_pipeline.storage import LocalImageStorage
from tests.helpers import materialize_portraits, resources_for

PARTITION = ("2025", "default")


@pytest.fixture
def resources(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> dict[str, Any]:
    return {**resources_for(roster_loaded, storage_resource, offline_gemini), "quality": QualitySettings()}


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


def generate(resources: dict[str, Any], instance: dg.DagsterInstance, config: dict[str, Any] | None = None) -> None:
    """An offline-generated partition, the way the UI launches it (asset only, no checks)."""
    assert materialize_portraits(resources, PARTITION, config, instance).success


def run_checks(
    resources: dict[str, Any], instance: dg.DagsterInstance, only: str | None = None
) -> dg.ExecuteInProcessResult:
    """The checks on their own (or the one named `only`), as launched from a check's page.

    The partition travels as a run tag: Dagster 1.13's `partition_key=` refuses a selection without assets.
    """
    checks = [dg.AssetCheckKey(player_portraits.key, only)] if only else portrait_checks
    result = dg.materialize(
        [player_portraits, *portrait_checks],
        selection=dg.AssetSelection.checks(*checks),
        tags={"dagster/partition": str(portrait_partition_key(*PARTITION))},
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )
    assert result.asset_materializations_for_node("player_portraits") == []
    return result


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def png(size: tuple[int, int], *, blank: bool = False) -> bytes:
    if blank:
        return images.to_png(Image.new("RGB", size, "#4A7FB8"), {})
    return render_portrait("planted", "default", *size)


def first_current(database: DatabaseResource) -> PlayerImageAsset:
    with database.session() as db:
        asset = db.scalars(
            select(PlayerImageAsset).where(PlayerImageAsset.is_current.is_(True)).order_by(PlayerImageAsset.player_id)
        ).first()
    assert asset is not None and asset.s3_key
    return asset


def overwrite(storage: LocalImageStorage, key: str, data: bytes) -> None:
    """Replace a stored object behind the audit's back (bit rot, a bad manual upload)."""
    storage.path_for(key).write_bytes(data)


# --- the plain functions ---------------------------------------------------------------------------------------


def test_a_good_offline_partition_has_no_image_problems(
    resources: dict[str, Any], instance: dg.DagsterInstance, local_storage: LocalImageStorage
) -> None:
    generate(resources, instance)
    with resources["database"].session() as db:
        rows = current_images(db, *PARTITION)
        assert missing_players(db, *PARTITION) == []
        rate = failure_rate(db, *PARTITION)
    assert len(rows) == 20 and {row.image_size for row in rows} == {"1K"}
    assert validate_images(local_storage, rows) == []
    assert rate is not None and rate.attempted == 20 and rate.failures == [] and rate.rate == 0


@pytest.mark.parametrize(
    ("planted", "reason"),
    [
        (lambda: png((800, 1000), blank=True), "blank or near-uniform (grayscale stddev 0.0 < 8.0)"),
        (lambda: png((800, 800)), "800x800 is not 4:5"),
        (lambda: png((400, 500)), "400x500, expected 800x1000 for size 1K"),
        (lambda: b"<html>not an image</html>", "image is not a readable image"),
    ],
    ids=["blank", "square", "wrong-size", "not-an-image"],
)
def test_validate_images_names_a_planted_bad_image_and_why(
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    local_storage: LocalImageStorage,
    planted: Callable[[], bytes],
    reason: str,
) -> None:
    generate(resources, instance, {"player_ids": [1, 2, 3]})
    bad = first_current(resources["database"])
    overwrite(local_storage, bad.s3_key or "", planted())
    with resources["database"].session() as db:
        problems = validate_images(local_storage, current_images(db, *PARTITION))
    assert [(p.asset_id, p.player_id, p.key) for p in problems] == [(bad.id, bad.player_id, bad.s3_key)]
    assert reason in problems[0].reason
    assert "stored bytes differ from the audited sha256" in problems[0].reason


def test_validate_images_flags_a_row_whose_object_is_gone(
    resources: dict[str, Any], instance: dg.DagsterInstance, local_storage: LocalImageStorage
) -> None:
    generate(resources, instance, {"player_ids": [1]})
    gone = first_current(resources["database"])
    local_storage.path_for(gone.s3_key or "").unlink()
    with resources["database"].session() as db:
        problems = validate_images(local_storage, current_images(db, *PARTITION))
    assert len(problems) == 1 and problems[0].reason.startswith("no image at ")


def test_validate_images_judges_each_image_by_its_own_snapshot_size(
    resources: dict[str, Any], instance: dg.DagsterInstance, local_storage: LocalImageStorage
) -> None:
    generate(resources, instance, {"player_ids": [1], "image_size": "512"})
    generate(resources, instance, {"player_ids": [2], "image_size": "2K"})
    with resources["database"].session() as db:
        rows = current_images(db, *PARTITION)
    assert sorted(row.image_size for row in rows) == ["2K", "512"]
    assert validate_images(local_storage, rows) == []


def test_failure_rate_counts_the_failed_rows_of_the_latest_snapshot(
    resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    generate(resources, instance, {"player_ids": list(range(1, 10))})
    database: DatabaseResource = resources["database"]
    with database.session() as db:
        snapshot = db.scalars(select(PlayerImageSnapshot)).one()
        for player_id in (10, 11):
            player = db.get_one(Player, player_id)
            record = audit.GenerationRecord("prompt", "offline-renderer", "v2.1", 0.1)
            audit.record_failure(db, snapshot, player, "default", record, f"model refused player {player_id}")
        rate = failure_rate(db, *PARTITION)
    assert rate is not None
    assert (rate.snapshot_id, rate.attempted, rate.rate) == (snapshot.id, 11, pytest.approx(2 / 11))
    assert [(f.player_id, f.reason) for f in rate.failures] == [
        (10, "model refused player 10"),
        (11, "model refused player 11"),
    ]


def test_failure_rate_is_none_before_any_run(roster_loaded: DatabaseResource) -> None:
    with roster_loaded.session() as db:
        assert failure_rate(db, *PARTITION) is None


def test_missing_players_lists_the_draft_class_without_a_current_image(
    resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    generate(resources, instance, {"limit": 15})
    with resources["database"].session() as db:
        missing = missing_players(db, *PARTITION)
        others = missing_players(db, "2025", "comic")
    assert [player.id for player in missing] == [16, 17, 18, 19, 20]
    assert len(others) == 20


# --- through Dagster ----------------------------------------------------------------------------------------


def test_checks_pass_in_the_run_that_materializes_a_good_partition(
    resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    instance.add_dynamic_partitions("draft_years", [PARTITION[0]])
    result = dg.materialize(
        [player_portraits, *portrait_checks],
        partition_key=portrait_partition_key(*PARTITION),
        instance=instance,
        resources=resources,
    )
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert sorted(evaluations) == ["coverage", "failure_rate", "images_valid", "pending_review", "quality"]
    assert all(e.passed for e in evaluations.values())
    assert all(e.partition == "2025|default" for e in evaluations.values())
    assert evaluations["images_valid"].metadata["checked"].value == 20


def test_blank_image_fails_the_blocking_check_run_on_its_own(
    resources: dict[str, Any], instance: dg.DagsterInstance, local_storage: LocalImageStorage
) -> None:
    generate(resources, instance)
    bad = first_current(resources["database"])
    overwrite(local_storage, bad.s3_key or "", png((800, 1000), blank=True))
    result = run_checks(resources, instance)
    assert not result.success  # a failed blocking check fails its step
    evaluation = evaluations(result)["images_valid"]
    assert not evaluation.passed and evaluation.blocking
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["bad"].value == 1
    assert f"`{bad.s3_key}`" in str(evaluation.metadata["problems"].value)
    assert "near-uniform" in str(evaluation.metadata["problems"].value)


def test_high_failure_rate_warns_with_the_reasons(resources: dict[str, Any], instance: dg.DagsterInstance) -> None:
    generate(resources, instance, {"player_ids": [1, 2, 3]})
    with resources["database"].session() as db:
        snapshot = db.scalars(select(PlayerImageSnapshot)).one()
        record = audit.GenerationRecord("prompt", "offline-renderer", "v2.1", 0.1)
        audit.record_failure(db, snapshot, db.get_one(Player, 4), "default", record, "SAFETY: blocked")
    result = run_checks(resources, instance)
    assert result.success  # warnings do not fail the run
    evaluation = evaluations(result)["failure_rate"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["failure_rate"].value == 0.25
    assert "SAFETY: blocked" in str(evaluation.metadata["failures"].value)


def test_failure_rate_threshold_is_a_setting(resources: dict[str, Any], instance: dg.DagsterInstance) -> None:
    generate(resources, instance, {"player_ids": [1, 2, 3]})
    with resources["database"].session() as db:
        snapshot = db.scalars(select(PlayerImageSnapshot)).one()
        record = audit.GenerationRecord("prompt", "offline-renderer", "v2.1", 0.1)
        audit.record_failure(db, snapshot, db.get_one(Player, 4), "default", record, "timeout")
    lenient = {**resources, "quality": QualitySettings(max_failure_rate=0.5)}
    assert evaluations(run_checks(lenient, instance))["failure_rate"].passed


def test_coverage_warns_and_lists_missing_players(resources: dict[str, Any], instance: dg.DagsterInstance) -> None:
    generate(resources, instance, {"limit": 18})
    result = run_checks(resources, instance)
    assert result.success
    by_name = evaluations(result)
    assert by_name["images_valid"].passed and by_name["failure_rate"].passed
    evaluation = by_name["coverage"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["missing"].value == 2
    listed = str(evaluation.metadata["missing_players"].value)
    assert "| 19 |" in listed and "| 20 |" in listed and "| 18 |" not in listed


def test_pending_review_warns_with_the_count_of_the_partition(
    resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    generate(resources, instance, {"player_ids": [1]})
    desk = PortraitSettings(current_draft_year=2025, require_review=True, review_url="http://127.0.0.1:8765/")
    reviewed = {**resources, "settings": desk}
    materialized = materialize_portraits(reviewed, PARTITION, {"player_ids": [1, 2, 3]}, instance)
    (event,) = materialized.asset_materializations_for_node("player_portraits")
    page = "http://127.0.0.1:8765/?partition=2025%7Cdefault"
    assert event.metadata["review_page"] == dg.MetadataValue.url(page)
    result = run_checks(reviewed, instance)
    assert result.success  # a warning
    evaluation = evaluations(result)["pending_review"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["pending"].value == 3
    assert evaluation.metadata["review_page"] == dg.MetadataValue.url(page)
    assert "3 images pending review" in (evaluation.description or "")
    # Player 1's approved image is still live, so coverage counts it; 2 and 3 have none live yet (19 of 20 lack one).
    assert evaluations(result)["coverage"].metadata["missing"].value == 19
    with resources["database"].session() as db:
        pending = db.scalars(select(PlayerImageAsset).where(PlayerImageAsset.review_status == "pending")).all()
        for asset in pending:
            approve(db, resources["storage"].get_storage(), asset.id, "art-director")
    assert evaluations(run_checks(resources, instance))["pending_review"].passed


def test_one_check_runs_alone_as_from_its_page(resources: dict[str, Any], instance: dg.DagsterInstance) -> None:
    generate(resources, instance, {"player_ids": [1, 2, 3]})
    result = run_checks(resources, instance, only="coverage")
    assert result.success
    assert list(evaluations(result)) == ["coverage"]  # the step evaluates what was selected, nothing else
    assert evaluations(result)["coverage"].metadata["missing"].value == 17


def test_checks_are_partitioned_like_the_asset() -> None:
    blocking = {}
    for check in (images_valid, failure_rate_check, coverage, pending_review):
        (spec,) = check.check_specs
        assert spec.partitions_def == player_portraits.partitions_def
        blocking[spec.name] = spec.blocking
    assert blocking == {"images_valid": True, "failure_rate": False, "coverage": False, "pending_review": False}
