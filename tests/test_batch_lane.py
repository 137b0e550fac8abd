"""The batch lane end to end: the real SDK's Batch API against the local Gemini server, real databases, real storage."""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pytest
from PIL import Image
from sqlalchemy import select, update

from portrait_pipeline.audit import batch_jobs
from portrait_pipeline.audit.models import BatchJobRecord, Player, PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.defs.resources import (
    DatabaseResource,
    GeminiResource,
    ImageStorageResource,
    LikenessResource,
    PortraitSettings,
    generation_service,
)
from portrait_pipeline.errors import GenerationFailed
from portrait_pipeline.generation import batch
from portrait_pipeline.generation.partition import PartitionRequest, PartitionResult, plan_partition
from portrait_pipeline.generation.player import player_prompt
from portrait_pipeline.model_registry import DEFAULT_IMAGE_MODEL, DEFAULT_VISION_MODEL, pricing
from portrait_pipeline.storage import sha256_hex
from tests.helpers import generate_requests, materialize_portraits, resources_for
from tests.servers import gemini as fake
from tests.servers.files import FileServer

API_KEY = "AIzaTEST-secret-key-0123456789abcdef"
FAST = batch.BatchSettings(poll_initial_s=0.02, poll_max_s=0.05)
PLAYERS = (1, 2, 3, 4)


def request_for(**overrides: object) -> PartitionRequest:
    fields: dict[str, object] = {"draft_year_key": "2025", "style": "default", "player_ids": PLAYERS, "lane": "batch"}
    return PartitionRequest(**(fields | overrides))  # type: ignore[arg-type]


def run(
    database: DatabaseResource,
    storage: ImageStorageResource,
    gemini: GeminiResource,
    settings: batch.BatchSettings = FAST,
    **overrides: object,
) -> PartitionResult:
    service = generation_service(storage, gemini, LikenessResource(), PortraitSettings())
    return batch.run_batch_partition(database.check(), service, gemini.client(), request_for(**overrides), settings)


def assets(database: DatabaseResource) -> list[PlayerImageAsset]:
    with database.session() as db:
        return list(db.scalars(select(PlayerImageAsset).order_by(PlayerImageAsset.player_id)))


def jobs(database: DatabaseResource) -> list[BatchJobRecord]:
    with database.session() as db:
        return list(db.scalars(select(BatchJobRecord).order_by(BatchJobRecord.id)))


BATCH_PRICE = pricing(DEFAULT_IMAGE_MODEL).batch_usd("1K")
STANDARD_PRICE = pricing(DEFAULT_IMAGE_MODEL).standard_usd("1K")


def test_a_partition_goes_through_one_inline_job_at_the_batch_price(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    result = run(roster_loaded, storage_resource, gemini)
    assert server.batch_request_counts["create"] == 1 and server.batch_request_counts["upload"] == 0
    assert not generate_requests(server)  # nothing through the standard lane
    assert [outcome.status for outcome in result.outcomes] == ["succeeded"] * len(PLAYERS)
    assert BATCH_PRICE is not None and STANDARD_PRICE is not None and BATCH_PRICE * 2 == STANDARD_PRICE
    rows = assets(roster_loaded)
    assert [row.player_id for row in rows] == list(PLAYERS)
    storage = storage_resource.get_storage()
    for row in rows:
        assert row.status == "succeeded" and row.is_current and row.cost_usd == BATCH_PRICE
        assert row.output_tokens == fake.IMAGE_TOKENS and row.prompt_tokens
        assert storage.exists(row.s3_key or "")
    assert result.cost_usd == BATCH_PRICE * len(PLAYERS)
    [job] = jobs(roster_loaded)
    assert job.state == "JOB_STATE_SUCCEEDED" and job.collected_at is not None
    assert batch_jobs.players_of(job) == list(PLAYERS)
    with roster_loaded.session() as db:
        snapshot = db.get_one(PlayerImageSnapshot, result.snapshot_id)
        assert snapshot.status == "succeeded" and snapshot.success_count == len(PLAYERS)
    assert result.contact_sheet is not None


def test_a_big_job_goes_as_a_jsonl_file_split_into_jobs(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    settings = batch.BatchSettings(poll_initial_s=0.02, poll_max_s=0.05, inline_limit_bytes=100, max_requests_per_job=3)
    result = run(roster_loaded, storage_resource, gemini, settings)
    assert server.batch_request_counts["create"] == 2 and server.batch_request_counts["upload"] == 2
    assert server.batch_request_counts["download"] == 2
    assert [outcome.status for outcome in result.outcomes] == ["succeeded"] * len(PLAYERS)
    assert all(row.cost_usd == BATCH_PRICE for row in assets(roster_loaded))
    assert [job.request_count for job in jobs(roster_loaded)] == [3, 1]
    assert all(job.input_file for job in jobs(roster_loaded))


def test_a_run_killed_after_submitting_is_collected_by_the_next_without_a_new_job(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    service = generation_service(storage_resource, gemini, LikenessResource(), PortraitSettings())
    lane = pricing(DEFAULT_IMAGE_MODEL, lane="batch")
    # The first run submits and commits its job, then dies before it waits.
    batch.submit_partition(
        roster_loaded.check(), gemini.client(), service, request_for(), lane, lane.usd_per_image("1K"), FAST
    )
    assert server.batch_request_counts["create"] == 1
    [job] = jobs(roster_loaded)
    assert job.collected_at is None
    with roster_loaded.session() as db:
        assert db.get_one(PlayerImageSnapshot, job.snapshot_id).status == "submitted"
        # missing_only (either lane) counts the job's players as in progress.
        standard = request_for(lane="standard", missing_only=True)
        plan = plan_partition(db, storage_resource.get_storage(), standard, pricing(DEFAULT_IMAGE_MODEL))
        assert plan.to_generate == [] and {ref.id for ref in plan.skipped} == set(PLAYERS)

    result = run(roster_loaded, storage_resource, gemini)
    assert server.batch_request_counts["create"] == 1  # nothing submitted twice
    assert sorted(outcome.player_id for outcome in result.generated) == list(PLAYERS)
    rows = assets(roster_loaded)
    assert [row.player_id for row in rows] == list(PLAYERS)  # each stored once
    assert all(row.snapshot_id == job.snapshot_id for row in rows)
    with roster_loaded.session() as db:
        assert db.get_one(PlayerImageSnapshot, job.snapshot_id).status == "succeeded"


@pytest.mark.parametrize("state", ["JOB_STATE_EXPIRED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"])
def test_a_job_that_does_not_succeed_fails_its_players_with_its_state_and_a_rerun_resubmits(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
    state: str,
) -> None:
    slow = batch.BatchSettings(poll_initial_s=0.02, poll_max_s=0.05)
    server.batch_pending_s = 60.0

    def expire_then_wait(seconds: float) -> None:
        for name in server.batch_names:
            server.force_batch_state(name, state)

    service = generation_service(storage_resource, gemini, LikenessResource(), PortraitSettings())
    request = request_for(player_ids=(1, 2))
    result = batch.run_batch_partition(
        roster_loaded.check(), service, gemini.client(), request, slow, None, expire_then_wait
    )
    assert [outcome.status for outcome in result.outcomes] == ["failed", "failed"]
    assert all(state in (outcome.reason or "") for outcome in result.outcomes)
    assert all(row.status == "failed" and row.cost_usd == 0 for row in assets(roster_loaded))
    assert [job.state for job in jobs(roster_loaded)] == [state]

    server.batch_pending_s = 0.0
    again = batch.run_batch_partition(roster_loaded.check(), service, gemini.client(), request, slow)
    assert server.batch_request_counts["create"] == 2
    assert [outcome.status for outcome in again.outcomes] == ["succeeded", "succeeded"]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (fake.error_reply(400, "Invalid image size."), "error 400: Invalid image size."),
        (fake.safety_reply("IMAGE_SAFETY"), "finish reason IMAGE_SAFETY"),
        (fake.blocked_reply("SAFETY"), "blocked the prompt (SAFETY)"),
    ],
)
def test_a_request_error_or_safety_block_fails_that_player_with_the_reason(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
    reply: fake.Reply,
    reason: str,
) -> None:
    server.script_batch("2", reply)
    result = run(roster_loaded, storage_resource, gemini)
    by_player = {outcome.player_id: outcome for outcome in result.outcomes}
    assert by_player[2].status == "failed" and reason in (by_player[2].reason or "")
    assert [by_player[player].status for player in (1, 3, 4)] == ["succeeded"] * 3
    failed = [row for row in assets(roster_loaded) if row.player_id == 2]
    assert failed[0].status == "failed" and reason in (failed[0].error_message or "")


def test_the_asset_in_the_batch_lane_submits_waits_collects_and_materializes(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    server: fake.GeminiTestServer,
) -> None:
    gemini = GeminiResource(api_key=API_KEY, base_url=server.base_url, batch_poll_initial_s=0.02, batch_poll_max_s=0.05)
    config = {"player_ids": [1, 2], "lane": "batch"}
    result = materialize_portraits(resources_for(roster_loaded, storage_resource, gemini), ("2025", "default"), config)
    assert result.success
    assert server.batch_request_counts["create"] == 1 and not generate_requests(server)
    metadata = result.asset_materializations_for_node("player_portraits")[0].metadata
    assert metadata["lane"].value == "batch" and metadata["generated"].value == 2
    assert BATCH_PRICE is not None and metadata["cost_usd"].value == pytest.approx(float(2 * BATCH_PRICE))
    assert metadata["estimated_batch_cost_usd"].value == pytest.approx(float(2 * BATCH_PRICE))
    [name] = server.batch_names
    assert f"batch job {name} ended JOB_STATE_SUCCEEDED: 2 player(s) recorded" in str(metadata["batch_jobs"].value)


def test_two_runs_of_a_partition_at_once_make_one_job_and_store_each_player_once(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    service = generation_service(storage_resource, gemini, LikenessResource(), PortraitSettings())
    engine = roster_loaded.check()
    barrier = threading.Barrier(2)

    def one(run_key: str) -> PartitionResult:
        request = request_for(missing_only=True, run_key=run_key)  # two launches: two snapshots of their own
        barrier.wait()
        return batch.run_batch_partition(engine, service, gemini.client(), request, FAST)

    with ThreadPoolExecutor(2) as pool:
        results = [future.result() for future in [pool.submit(one, "a"), pool.submit(one, "b")]]
    covered = [player for job in jobs(roster_loaded) for player in batch_jobs.players_of(job)]
    assert sorted(covered) == list(PLAYERS)  # every player in exactly one job, however the two runs interleaved
    assert server.batch_request_counts["create"] == len(jobs(roster_loaded))
    assert sorted(row.player_id for row in assets(roster_loaded)) == list(PLAYERS)  # stored once
    assert all(outcome.status == "succeeded" for result in results for outcome in result.outcomes)
    assert all(job.collected_at is not None for job in jobs(roster_loaded))


def test_generate_batch_flag_sets_the_lane_of_the_run_config_and_the_core_request() -> None:
    from portrait_pipeline.cli.launch import run_settings
    from portrait_pipeline.cli.main import build_parser
    from portrait_pipeline.defs.config import PortraitRunConfig, partition_request

    for argv, lane in ((["--batch"], "batch"), ([], "standard")):
        args = build_parser().parse_args(["generate", "--draft-year", "2025", *argv])
        config = PortraitRunConfig(**run_settings(args))
        assert config.lane == lane
        assert partition_request(config, "2025|default", DEFAULT_IMAGE_MODEL).lane == lane


RESOLVE_AT_ONCE = batch.BatchSettings(poll_initial_s=0.02, poll_max_s=0.05, creating_grace_s=0)


def test_a_create_that_timed_out_but_made_a_job_is_adopted_by_the_next_run_not_paid_again(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    server: fake.GeminiTestServer,
) -> None:
    gemini = GeminiResource(api_key=API_KEY, base_url=server.base_url, timeout_s=1, retry_initial_s=0.05)
    server.enqueue(fake.slow_reply(1.5), kind="batch_create")  # the job is made after the client gave up
    with pytest.raises(GenerationFailed, match="did not answer"):
        run(roster_loaded, storage_resource, gemini)
    [row] = jobs(roster_loaded)
    assert row.state == batch_jobs.CREATING
    with roster_loaded.session() as db:  # in progress meanwhile: nobody submits them
        assert batch_jobs.players_in_pending_jobs(db, "default", PLAYERS) == set(PLAYERS)
    time.sleep(0.7)  # the server finishes creating the job

    result = run(roster_loaded, storage_resource, gemini, RESOLVE_AT_ONCE)
    # The 1 s timeout that made the create time out may make a list time out (and be retried) on a loaded host.
    assert server.batch_request_counts["create"] == 1 and server.batch_request_counts["list"] >= 1
    assert any("adopted" in note for note in result.notes)
    assert sorted(outcome.player_id for outcome in result.generated) == list(PLAYERS)
    assert sorted(row.player_id for row in assets(roster_loaded)) == list(PLAYERS)


def test_a_create_the_api_refused_or_never_got_frees_the_players(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    server.enqueue(fake.error_reply(400, "Bad batch."), kind="batch_create")
    with pytest.raises(GenerationFailed, match="400"):
        run(roster_loaded, storage_resource, gemini)
    assert jobs(roster_loaded) == []  # refused: nothing was made, nothing is held
    with roster_loaded.session() as db:
        assert [snapshot.status for snapshot in db.scalars(select(PlayerImageSnapshot))] == ["failed"]

    with roster_loaded.session() as db:  # a run that died before its create request left the API
        batch_jobs.reserve_job(
            db,
            partition_key="2025|default",
            style="default",
            snapshot_id=db.scalars(select(PlayerImageSnapshot.id)).first() or 0,
            model=DEFAULT_IMAGE_MODEL,
            image_size="1K",
            player_ids=PLAYERS,
            dagster_run_id=None,
        )
    result = run(roster_loaded, storage_resource, gemini, RESOLVE_AT_ONCE)
    assert any("never reached the API" in note for note in result.notes)
    assert server.batch_request_counts["create"] == 2  # the refused one and this run's
    assert sorted(row.player_id for row in assets(roster_loaded)) == list(PLAYERS)


def test_without_gemini_a_batch_run_falls_back_to_the_offline_renderer_with_a_warning(
    roster_loaded: DatabaseResource, storage_resource: ImageStorageResource, offline_gemini: GeminiResource
) -> None:
    config = {"player_ids": [1], "lane": "batch"}  # what the schedules launch by default
    resources = resources_for(roster_loaded, storage_resource, offline_gemini)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_portraits(resources, ("2025", "default"), config, instance)
    assert result.success
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("lane batch needs GEMINI_API_KEY" in message for message in logs)
    assert [row.status for row in assets(roster_loaded)] == ["succeeded"]


def test_a_job_is_collected_at_its_own_models_batch_price_after_the_model_setting_changed(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    service = generation_service(storage_resource, gemini, LikenessResource(), PortraitSettings())
    lane = pricing(DEFAULT_IMAGE_MODEL, lane="batch")
    request = request_for(player_ids=(1,))
    batch.submit_partition(
        roster_loaded.check(), gemini.client(), service, request, lane, lane.usd_per_image("1K"), FAST
    )
    redeployed = gemini.model_copy(update={"image_model": "gemini-3.1-flash-image"})  # a new default meanwhile
    run(roster_loaded, storage_resource, redeployed, player_ids=(1,))
    [row] = assets(roster_loaded)
    assert (row.model, row.cost_usd) == (DEFAULT_IMAGE_MODEL, BATCH_PRICE)


def test_likeness_descriptions_come_first_and_the_answers_are_recorded_with_them_by_any_later_run(
    roster_loaded: DatabaseResource,
    storage_resource: ImageStorageResource,
    gemini: GeminiResource,
    server: fake.GeminiTestServer,
) -> None:
    """Player 1's photo is described (a standard call), player 2's is refused, player 3 has none. The run that
    submitted dies before collecting; a later run without --fetch-likeness collects: the rows still carry what each
    request carried."""
    photo = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((300, 360)).save(photo, format="PNG")
    with FileServer({"/ref/one.png": ("image/png", photo.getvalue())}) as references:
        url, refused_url = references.url("/ref/one.png"), "http://10.0.0.7/photo.jpg"
        with roster_loaded.session() as db:
            db.execute(update(Player).where(Player.id == 1).values(reference_image_url=url))
            db.execute(update(Player).where(Player.id == 2).values(reference_image_url=refused_url))
            db.commit()
        likeness = LikenessResource(allow_hosts=references.host_port)
        service = generation_service(storage_resource, gemini, likeness, PortraitSettings())
        lane = pricing(DEFAULT_IMAGE_MODEL, lane="batch")
        request = request_for(player_ids=(1, 2, 3), fetch_likeness=True)
        submitted = batch.submit_partition(
            roster_loaded.check(), gemini.client(), service, request, lane, lane.usd_per_image("1K"), FAST
        )
    assert len(generate_requests(server, DEFAULT_VISION_MODEL)) == 1  # described first, on the standard lane
    assert not generate_requests(server, DEFAULT_IMAGE_MODEL)
    [refusal] = submitted.refused
    assert refusal.player_id == 2 and refusal.status == "failed" and refused_url in (refusal.reason or "")
    [job] = jobs(roster_loaded)
    assert batch_jobs.players_of(job) == [1, 3]  # a refused reference is not sent
    [create] = [record for record in server.requests if record.kind == "batch_create"]
    sent = json.dumps(create.body)
    assert sent.count(fake.DEFAULT_DESCRIPTION) == 1 and "inlineData" not in sent  # words only, never the photo

    # A later run of the job's players without --fetch-likeness: the job's keys say what each request carried.
    result = run(roster_loaded, storage_resource, gemini, player_ids=(1, 3))
    assert server.batch_request_counts["create"] == 1
    assert sorted(outcome.player_id for outcome in result.generated) == [1, 3]
    described, failed, plain = assets(roster_loaded)
    with roster_loaded.session() as db:
        player = db.get_one(Player, 1)
        expected_prompt = player_prompt(player, fake.DEFAULT_DESCRIPTION)  # the standard lane's prompt
    assert described.status == "succeeded" and described.cost_usd == BATCH_PRICE
    assert described.user_prompt == expected_prompt and json.dumps(expected_prompt)[1:-1] in sent
    assert described.likeness_description == fake.DEFAULT_DESCRIPTION and described.used_likeness_ref
    assert (described.reference_image_url, described.reference_sha256) == (url, sha256_hex(photo.getvalue()))
    assert failed.status == "failed" and failed.cost_usd == 0 and failed.reference_image_url == refused_url
    assert plain.status == "succeeded" and not plain.used_likeness_ref and plain.likeness_description is None
    with roster_loaded.session() as db:
        snapshot = db.get_one(PlayerImageSnapshot, submitted.snapshot_id)
        assert (snapshot.status, snapshot.success_count, snapshot.failure_count) == ("partial", 2, 1)
