"""The batch collector sensor, evaluated with `build_sensor_context` on a real instance, against the local Gemini
server (real SDK) and both databases; then the run it requests collects the job."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest
from sqlalchemy import select

from portrait_pipeline.audit.models import BatchJobRecord, PlayerImageAsset
from portrait_pipeline.defs.partitions import portrait_partition_key
from portrait_pipeline.defs.resources import (
    DatabaseResource,
    GeminiResource,
    ImageStorageResource,
    LikenessResource,
    PortraitSettings,
    generation_service,
)
from portrait_pipeline.defs.sensors import batch_collector_sensor
from portrait_pipeline.generation import batch
from portrait_pipeline.generation.partition import PartitionRequest
from portrait_pipeline.model_registry import DEFAULT_IMAGE_MODEL, pricing
from tests.helpers import current_catalogue, materialize_portraits, resources_for
from tests.servers import gemini as fake

API_KEY = "AIzaTEST-sensor-key-0123456789abcdef"


@pytest.fixture
def server() -> Iterator[fake.GeminiTestServer]:
    with fake.GeminiTestServer(api_key=API_KEY, models=current_catalogue(), batch_pending_s=3600) as running:
        yield running


def evaluate(instance: dg.DagsterInstance, database: DatabaseResource, gemini: GeminiResource) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, resources={"database": database, "gemini": gemini}) as context:
        result = batch_collector_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def test_a_finished_job_whose_run_is_gone_gets_one_collecting_run_that_stores_it(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    server: fake.GeminiTestServer,
) -> None:
    gemini = GeminiResource(api_key=API_KEY, base_url=server.base_url, batch_poll_initial_s=0.02, batch_poll_max_s=0.05)
    service = generation_service(storage_resource, gemini, LikenessResource(), PortraitSettings())
    lane = pricing(DEFAULT_IMAGE_MODEL, lane="batch")
    request = PartitionRequest("2025", "default", player_ids=(1, 2), lane="batch", dagster_run_id="dead-run")
    settings = gemini.batch_settings()
    # The submitting run dies right after recording its job.
    batch.submit_partition(
        roster_loaded.check(), gemini.client(), service, request, lane, lane.usd_per_image("1K"), settings
    )
    [name] = server.batch_names
    instance = dg.DagsterInstance.ephemeral()

    still_running = evaluate(instance, roster_loaded, gemini)
    assert still_running.run_requests == [] and "still running at the API" in str(still_running.skip_reason)

    server.batch_pending_s = 0.0  # the job has ended at the API
    live = instance.add_run(
        dg.DagsterRun(
            job_name="portraits_job", status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": "2025|default"}
        )
    )
    waited_on = evaluate(instance, roster_loaded, gemini)
    assert waited_on.run_requests == []  # a live run of the partition collects it itself
    gets = server.batch_request_counts["get"]
    instance.report_run_failed(live)

    [run_request] = evaluate(instance, roster_loaded, gemini).run_requests or []
    assert server.batch_request_counts["get"] == gets + 1  # one poll per orphaned job, its answers not read
    assert run_request.run_key == f"batch_collect:{name}"
    assert run_request.partition_key == portrait_partition_key("2025", "default")
    config = run_request.run_config["ops"]["player_portraits"]["config"]
    assert config == {"missing_only": True, "player_ids": [1, 2], "lane": "batch"}
    again = evaluate(instance, roster_loaded, gemini).run_requests or []
    assert [each.run_key for each in again] == [run_request.run_key]  # the same key: Dagster launches it once

    collected = materialize_portraits(
        resources_for(roster_loaded, storage_resource, gemini), ("2025", "default"), config
    )
    assert collected.success
    assert server.batch_request_counts["create"] == 1  # stored, not submitted again
    with roster_loaded.session() as db:
        rows = db.scalars(select(PlayerImageAsset).order_by(PlayerImageAsset.player_id)).all()
        assert [(row.player_id, row.status) for row in rows] == [(1, "succeeded"), (2, "succeeded")]
        assert db.scalars(select(BatchJobRecord)).one().collected_at is not None
    assert evaluate(instance, roster_loaded, gemini).run_requests == []  # nothing pending any more
