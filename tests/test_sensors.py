"""The new-prospects sensor, evaluated on an ephemeral instance against both databases."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import select

from portrait_pipeline.audit import batch_jobs
from portrait_pipeline.audit.models import Player, PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.defs import runs
from portrait_pipeline.defs.assets import player_portraits
from portrait_pipeline.defs.partitions import draft_years
from portrait_pipeline.defs.resources import DatabaseResource, GeminiResource, ImageStorageResource, PortraitSettings
from portrait_pipeline.defs.sensors import new_prospects_sensor
from portrait_pipeline.errors import InvalidInput
from tests.helpers import resources_for

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
TAGS = {"portrait/launched_by": "new_prospects_sensor"}
REFERENCE = "https://example.com/photo.jpg"


def player(player_id: int, draft_year: int | None, second: int, **fields: Any) -> Player:
    """A roster row changed `second` seconds after T0, so cursors and run keys can be written out."""
    return Player(
        id=player_id,
        slug=f"player-{player_id}",
        display_name=f"Player {player_id}",
        first_name="Player",
        last_name=str(player_id),
        draft_year=draft_year,
        updated_at=T0 + timedelta(seconds=second),
        **fields,
    )


def add(database: DatabaseResource, *players: Player) -> None:
    with database.session() as session:
        session.add_all(players)


def give_current_image(database: DatabaseResource, player_id: int, style: str = "default") -> None:
    """The audit rows a successful run leaves behind; they do not touch the player's updated_at."""
    with database.session() as session:
        snapshot = PlayerImageSnapshot(
            run_key=f"seed_{player_id}_{style}",
            version=1,
            is_current=True,
            style=style,
            cohort="test",
            system_prompt="prompt",
            system_prompt_version="v2.1",
            image_size="1K",
            model="offline-renderer",
        )
        session.add(snapshot)
        session.flush()
        session.add(
            PlayerImageAsset(
                snapshot_id=snapshot.id,
                player_id=player_id,
                style=style,
                status="succeeded",
                is_current=True,
                model="offline-renderer",
                system_prompt_version="v2.1",
            )
        )


def cursor(second: int | datetime, player_id: int) -> str:
    moment = second if isinstance(second, datetime) else T0 + timedelta(seconds=second)
    return f'{{"updated_at": "{moment.isoformat()}", "id": {player_id}}}'


def request(partition: str, second: int | datetime, *, fetch_likeness: bool = False) -> dg.RunRequest:
    moment = second if isinstance(second, datetime) else T0 + timedelta(seconds=second)
    return dg.RunRequest(
        run_key=f"new_prospects:{partition}:{moment.isoformat()}",
        partition_key=partition,
        run_config={"ops": {"player_portraits": {"config": {"missing_only": True, "fetch_likeness": fetch_likeness}}}},
        tags=TAGS,
    )


def evaluate(
    database: DatabaseResource,
    settings: PortraitSettings,
    instance: dg.DagsterInstance,
    since: str | None = None,
) -> dg.SensorResult:
    """One tick, then the partition additions applied as the daemon would."""
    # As a context manager (see test_schedules.evaluate): an open context puts back a dead defs-state storage later.
    with dg.build_sensor_context(
        instance=instance, cursor=since, resources={"database": database, "settings": settings}
    ) as context:
        result = new_prospects_sensor(context)
    assert isinstance(result, dg.SensorResult)
    for add_request in result.dynamic_partitions_requests or []:
        assert isinstance(add_request, dg.AddDynamicPartitionsRequest)
        instance.add_dynamic_partitions(add_request.partitions_def_name, add_request.partition_keys)
    return result


def run_keys(result: dg.SensorResult) -> list[str | None]:
    return [run.run_key for run in result.run_requests or []]


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


def test_sensor_skips_when_no_player_exists(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance
) -> None:
    result = evaluate(database, settings, instance)
    assert result.run_requests == [] and result.dynamic_partitions_requests == []
    assert result.skip_reason is not None and result.cursor is None


def test_sensor_requests_missing_partitions_for_new_class(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance
) -> None:
    add(database, player(1, 2026, 1), player(2, 2026, 2, reference_image_url=REFERENCE), player(3, None, 3))
    result = evaluate(database, settings, instance)
    assert result.dynamic_partitions_requests == [draft_years.build_add_request(["2026", "undrafted"])]
    assert result.run_requests == [request("2026|default", 2, fetch_likeness=True), request("undrafted|default", 3)]
    assert result.cursor == cursor(3, 3)
    assert result.skip_reason is None


def test_sensor_adds_only_draft_years_without_a_partition(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance
) -> None:
    instance.add_dynamic_partitions("draft_years", ["2026"])
    add(database, player(1, 2026, 1), player(2, 2027, 2))
    result = evaluate(database, settings, instance)
    assert result.dynamic_partitions_requests == [draft_years.build_add_request(["2027"])]
    assert run_keys(result) == [request("2026|default", 1).run_key, request("2027|default", 2).run_key]


def test_second_evaluation_with_the_returned_cursor_requests_nothing(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance
) -> None:
    add(database, player(1, 2026, 1), player(2, 2026, 2))
    first = evaluate(database, settings, instance)
    second = evaluate(database, settings, instance, first.cursor)
    assert second.run_requests == [] and second.dynamic_partitions_requests == []
    assert second.skip_reason is not None and second.cursor == first.cursor == cursor(2, 2)


def test_reevaluating_from_the_old_cursor_repeats_the_same_run_keys(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance
) -> None:
    add(database, player(1, 2026, 1), player(2, 2026, 2))
    first = evaluate(database, settings, instance)
    add(database, player(3, 2027, 3))
    again = evaluate(database, settings, instance)  # a lost cursor: every change is read once more
    # Dagster launches a run key once, so only the 2027 run is new.
    assert run_keys(again) == [*run_keys(first), request("2027|default", 3).run_key]
    assert again.cursor == cursor(3, 3)


def test_players_with_a_current_image_get_no_request(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance
) -> None:
    add(
        database,
        player(1, 2026, 1),
        player(2, 2026, 2, reference_image_url=REFERENCE),
        player(3, 2027, 3),
        player(4, 2027, 4, reference_image_url=REFERENCE),
    )
    for player_id in (1, 2, 4):
        give_current_image(database, player_id)
    result = evaluate(database, settings, instance)
    # Player 4's reference does not ask for likeness: only player 3 is missing, and has none.
    assert result.run_requests == [request("2027|default", 4)]
    assert result.dynamic_partitions_requests == [draft_years.build_add_request(["2026", "2027"])]
    assert result.cursor == cursor(4, 4)


def test_players_in_a_pending_batch_job_are_in_progress_not_missing(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance
) -> None:
    add(database, player(1, 2026, 1), player(2, 2026, 2), player(3, 2027, 3))
    give_current_image(database, 1)
    with database.session() as db:  # player 2's and 3's portraits are in a Batch API job that has not ended
        snapshot_id = db.scalars(select(PlayerImageSnapshot.id)).one()
        for key, player_id in (("2026|default", 2), ("2027|default", 3)):
            job = batch_jobs.reserve_job(
                db,
                partition_key=key,
                style="default",
                snapshot_id=snapshot_id,
                model="gemini-3-pro-image",
                image_size="1K",
                player_ids=[player_id],
                dagster_run_id=None,
            )
            batch_jobs.confirm_job(db, job.id, f"batches/job{player_id}", None)
        batch_jobs.set_state(db, job.id, "JOB_STATE_SUCCEEDED", collected=True)  # 3's job is collected: missing
    result = evaluate(database, settings, instance)
    assert result.run_requests == [request("2027|default", 3)]


def test_image_in_another_style_does_not_count(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance
) -> None:
    add(database, player(1, 2026, 1))
    give_current_image(database, 1, "comic")
    assert evaluate(database, settings, instance).run_requests == [request("2026|default", 1)]


@pytest.mark.parametrize(
    ("styles_with_image", "requested"),
    [
        ((), ["2026|default", "2026|comic"]),
        (("default",), ["2026|comic"]),
        (("default", "comic"), []),
    ],
)
def test_each_automated_style_gets_its_own_run(
    database: DatabaseResource,
    instance: dg.DagsterInstance,
    styles_with_image: Sequence[str],
    requested: list[str],
) -> None:
    settings = PortraitSettings(current_draft_year=2025, sensor_styles="default,comic")
    add(database, player(1, 2026, 1))
    for style in styles_with_image:
        give_current_image(database, 1, style)
    result = evaluate(database, settings, instance)
    assert result.run_requests == [request(partition, 1) for partition in requested]
    assert result.cursor == cursor(1, 1)


def test_player_update_is_seen_through_updated_at(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance
) -> None:
    add(database, player(1, 2026, 1), player(2, 2026, 2))
    first = evaluate(database, settings, instance)
    with database.session() as session:
        session.get_one(Player, 1).reference_image_url = REFERENCE
    with database.session() as session:
        updated_at = session.get_one(Player, 1).updated_at
    updated_at = updated_at.replace(tzinfo=UTC) if updated_at.tzinfo is None else updated_at.astimezone(UTC)
    assert updated_at > T0 + timedelta(seconds=2)

    result = evaluate(database, settings, instance, first.cursor)
    assert result.run_requests == [request("2026|default", updated_at, fetch_likeness=True)]
    assert result.dynamic_partitions_requests == []
    assert result.cursor == cursor(updated_at, 1)


def test_changes_in_one_draft_year_leave_other_years_alone(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance
) -> None:
    add(database, player(1, 2026, 1))
    first = evaluate(database, settings, instance)
    add(database, player(2, 2027, 2), player(3, 2027, 3, reference_image_url=REFERENCE))
    result = evaluate(database, settings, instance, first.cursor)
    assert result.run_requests == [request("2027|default", 3, fetch_likeness=True)]
    assert result.dynamic_partitions_requests == [draft_years.build_add_request(["2027"])]


def test_players_changed_in_the_same_instant_are_ordered_by_id(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance
) -> None:
    add(database, player(1, 2026, 5), player(2, 2026, 5))
    result = evaluate(database, settings, instance, cursor(5, 1))
    assert result.run_requests == [request("2026|default", 5)]
    assert result.cursor == cursor(5, 2)
    assert evaluate(database, settings, instance, result.cursor).run_requests == []


@pytest.mark.parametrize("bad_cursor", ["not json", '{"id": 3}', '{"updated_at": "yesterday", "id": 3}'])
def test_edited_cursor_is_an_error_that_says_how_to_recover(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance, bad_cursor: str
) -> None:
    with pytest.raises(InvalidInput, match="clear the cursor"):
        evaluate(database, settings, instance, bad_cursor)


def test_sensor_requests_resolve_against_the_definitions(
    database: DatabaseResource,
    settings: PortraitSettings,
    storage_resource: ImageStorageResource,
    offline_gemini: GeminiResource,
) -> None:
    """The daemon's path: partition keys valid once the returned partitions exist, run config fits the asset."""
    add(database, player(1, 2026, 1, reference_image_url=REFERENCE))
    resources = {"database": database, "settings": settings}
    defs = dg.Definitions(
        assets=[player_portraits],
        sensors=[new_prospects_sensor],
        resources={**resources_for(database, storage_resource, offline_gemini), "settings": settings},
    )
    with (
        dg.instance_for_test() as instance,
        dg.build_sensor_context(
            instance=instance, instance_ref=instance.get_ref(), definitions=defs, resources=resources
        ) as context,
    ):
        data = new_prospects_sensor.evaluate_tick(context)
    [run] = data.run_requests or []
    assert run.tags["dagster/partition/draft_year"] == "2026" and run.tags["dagster/partition/style"] == "default"
    assert new_prospects_sensor.job_name is not None
    job = defs.get_repository_def().get_job(new_prospects_sensor.job_name)
    assert dg.validate_run_config(job, run.run_config)["ops"]["player_portraits"]["config"]["fetch_likeness"]


def test_sensor_tick_marks_failed_a_run_whose_worker_process_died(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance
) -> None:
    """A CLI run killed with -9 stays STARTED; the tick sees its worker's pid is gone from this host."""
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid names no process now
    alive_tags = runs.worker_tags()  # this process: alive
    dead_tags = {**alive_tags, runs.PID_TAG: str(dead.pid)}
    other_host = {**dead_tags, runs.HOST_TAG: "another-machine"}
    started = {}
    for name, tags in {"dead": dead_tags, "alive": alive_tags, "elsewhere": other_host}.items():
        run = instance.add_run(dg.DagsterRun(job_name="portraits_job", status=dg.DagsterRunStatus.STARTED, tags=tags))
        started[name] = run.run_id
    evaluate(database, settings, instance)
    status = {name: instance.get_run_by_id(run_id).status for name, run_id in started.items()}  # type: ignore[union-attr]
    assert status == {
        "dead": dg.DagsterRunStatus.FAILURE,
        "alive": dg.DagsterRunStatus.STARTED,
        "elsewhere": dg.DagsterRunStatus.STARTED,  # another host's pid means nothing here
    }
