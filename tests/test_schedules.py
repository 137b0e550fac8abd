"""The draft-class and NBA schedules, evaluated for one tick on a persistent test instance against both databases."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pytest

from portrait_pipeline.audit.models import Player
from portrait_pipeline.defs.assets import player_portraits
from portrait_pipeline.defs.resources import DatabaseResource, GeminiResource, ImageStorageResource, PortraitSettings
from portrait_pipeline.defs.schedules import (
    DRAFT_CLASS_BACKFILL_CRON,
    NBA_REFRESH_CRON,
    draft_class_backfill,
    nba_refresh,
)
from tests.helpers import resources_for

TICK = datetime(2025, 5, 5, 6, 0, tzinfo=UTC)


def player(player_id: int, draft_year: int | None, *, nba_active: bool = False) -> Player:
    return Player(
        id=player_id,
        slug=f"player-{player_id}",
        display_name=f"Player {player_id}",
        first_name="Player",
        last_name=str(player_id),
        draft_year=draft_year,
        nba_active=nba_active,
    )


def add(database: DatabaseResource, *players: Player) -> None:
    with database.session() as session:
        session.add_all(players)


def request(schedule: str, partition: str, config: dict[str, Any], tick: datetime = TICK) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"{schedule}:{partition}:{tick.isoformat()}",
        partition_key=partition,
        run_config={"ops": {"player_portraits": {"config": config}}},
        tags={"portrait/launched_by": schedule},
    )


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """Schedule contexts need a persistent instance (an ephemeral one has no ref)."""
    with dg.instance_for_test() as instance:
        yield instance


def evaluate(
    schedule: dg.ScheduleDefinition,
    database: DatabaseResource,
    settings: PortraitSettings,
    instance: dg.DagsterInstance,
    tick: datetime = TICK,
) -> Any:
    # As a context manager: left open, the context's exit stack (which set Dagster's defs-state storage) was closed
    # only when garbage-collected, in some later test, and put back a storage whose instance had gone.
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=tick, resources={"database": database, "settings": settings}
    ) as context:
        return schedule(context)


def test_schedules_are_off_until_turned_on() -> None:
    assert draft_class_backfill.default_status == dg.DefaultScheduleStatus.STOPPED
    assert nba_refresh.default_status == dg.DefaultScheduleStatus.STOPPED
    assert draft_class_backfill.cron_schedule == DRAFT_CLASS_BACKFILL_CRON == "0 6 * 5-7 1"
    assert nba_refresh.cron_schedule == NBA_REFRESH_CRON == "0 6 1 * *"


BATCH = {"lane": "batch"}  # the schedules' default lane (PORTRAIT_SCHEDULE_LANE)


def test_draft_class_backfill_requests_every_automated_style_of_the_current_class(
    database: DatabaseResource, instance: dg.DagsterInstance
) -> None:
    settings = PortraitSettings(current_draft_year=2025, sensor_styles="default,vector")
    add(database, player(1, 2025), player(2, 2025), player(3, 2026))
    result = evaluate(draft_class_backfill, database, settings, instance)
    config = {"missing_only": True, "cohort": "current_draft_2025", "lane": "batch"}  # backfills: half price
    assert result == [
        request("draft_class_backfill", "2025|default", config),
        request("draft_class_backfill", "2025|vector", config),
    ]
    assert instance.get_dynamic_partitions("draft_years") == ["2025"]


def test_draft_class_backfill_skips_when_the_class_has_no_players(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance
) -> None:
    add(database, player(1, 2026))
    result = evaluate(draft_class_backfill, database, settings, instance)
    assert isinstance(result, dg.SkipReason) and "2025" in (result.skip_message or "")
    assert instance.get_dynamic_partitions("draft_years") == []


def test_draft_class_backfill_keeps_an_existing_partition(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance
) -> None:
    instance.add_dynamic_partitions("draft_years", ["2024", "2025"])
    add(database, player(1, 2025))
    assert len(evaluate(draft_class_backfill, database, settings, instance)) == 1
    assert instance.get_dynamic_partitions("draft_years") == ["2024", "2025"]


def test_nba_refresh_covers_only_active_players(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance
) -> None:
    add(
        database,
        player(1, 2020, nba_active=True),
        player(2, 2020),
        player(3, 2020, nba_active=True),
        player(4, 2021, nba_active=True),
        player(5, None, nba_active=True),
        player(6, 2025),
    )
    result = evaluate(nba_refresh, database, settings, instance)
    assert result == [
        request(
            "nba_refresh",
            "2020|default",
            {"missing_only": True, "player_ids": [1, 3], "cohort": "current_nba", **BATCH},
        ),
        request(
            "nba_refresh", "2021|default", {"missing_only": True, "player_ids": [4], "cohort": "current_nba", **BATCH}
        ),
        request(
            "nba_refresh",
            "undrafted|default",
            {"missing_only": True, "player_ids": [5], "cohort": "current_nba", **BATCH},
        ),
    ]
    assert instance.get_dynamic_partitions("draft_years") == ["2020", "2021", "undrafted"]


def test_nba_refresh_skips_without_active_players(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance
) -> None:
    add(database, player(1, 2020), player(2, 2025))
    assert isinstance(evaluate(nba_refresh, database, settings, instance), dg.SkipReason)
    assert instance.get_dynamic_partitions("draft_years") == []


@pytest.mark.parametrize("schedule", [draft_class_backfill, nba_refresh])
def test_each_tick_gets_its_own_run_keys(
    schedule: dg.ScheduleDefinition,
    database: DatabaseResource,
    settings: PortraitSettings,
    instance: dg.DagsterInstance,
) -> None:
    add(database, player(1, 2025, nba_active=True))
    first = [run.run_key for run in evaluate(schedule, database, settings, instance)]
    repeated = [run.run_key for run in evaluate(schedule, database, settings, instance)]
    next_tick = [
        run.run_key for run in evaluate(schedule, database, settings, instance, datetime(2025, 6, 1, 6, 0, tzinfo=UTC))
    ]
    assert first == repeated
    assert set(first).isdisjoint(next_tick)


@pytest.mark.parametrize("schedule", [draft_class_backfill, nba_refresh])
def test_schedule_requests_resolve_against_the_definitions(
    schedule: dg.ScheduleDefinition,
    database: DatabaseResource,
    settings: PortraitSettings,
    instance: dg.DagsterInstance,
    storage_resource: ImageStorageResource,
    offline_gemini: GeminiResource,
) -> None:
    """The daemon's path: the partition the schedule added is valid, and the run config fits the asset."""
    add(database, player(1, 2025, nba_active=True))
    resources = {"database": database, "settings": settings}
    defs = dg.Definitions(
        assets=[player_portraits],
        schedules=[schedule],
        resources={**resources_for(database, storage_resource, offline_gemini), "settings": settings},
    )
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=TICK, resources=resources, repository_def=defs.get_repository_def()
    ) as context:
        [run] = schedule.evaluate_tick(context).run_requests or []
    assert run.tags["dagster/partition/draft_year"] == "2025" and run.tags["dagster/schedule_name"] == schedule.name
    job = defs.get_repository_def().get_job(schedule.job_name)
    assert dg.validate_run_config(job, run.run_config)["ops"]["player_portraits"]["config"]["missing_only"]
