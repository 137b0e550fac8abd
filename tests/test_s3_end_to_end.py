"""A whole partition materialized into a real S3 server (SeaweedFS, authentication on), on both databases."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import func, select

from portrait_pipeline import images, naming
from portrait_pipeline.audit.models import Base, Player, PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.defs.assets import player_portraits
from portrait_pipeline.defs.io_managers import PortraitIOManager
from portrait_pipeline.defs.partitions import portrait_partition_key
from portrait_pipeline.defs.resources import DatabaseResource, GeminiResource, ImageStorageResource
from portrait_pipeline.naming import partition_index_key as index_key
from portrait_pipeline.storage import ALIAS_CACHE_CONTROL, IMMUTABLE_CACHE_CONTROL, PROBE_PREFIX
from tests.helpers import materialize_portraits, resources_for
from tests.servers import gemini as fake
from tests.servers.s3_fixtures import SeaweedEnv, seaweed  # noqa: F401

PARTITION = ("2025", "default")
PLAYERS_IN_2025 = 20
CDN = "https://cdn.example.test/portraits"
WRONG_SECRET = "Wr0ngSecret-e2e-" + "y" * 24
GEMINI_KEY = "AIzaTEST-e2e-key-0123456789abcdef"
CLI = str(Path(sys.executable).with_name("portrait-pipeline"))
# Every player gets its own row: the circuit breaker (10 failures in a row by default) must not stop the batch.
EVERY_PLAYER = {"max_consecutive_failures": 100}
# The pipeline's own keys are fixed, not random like the other S3 tests' prefixes.
PIPELINE_PREFIXES = ("players/", "portraits/", "contact-sheets/")


@pytest.fixture
def empty_bucket(seaweed: SeaweedEnv) -> Iterator[SeaweedEnv]:  # noqa: F811
    """Start each test without another test's objects under the pipeline's fixed keys."""
    for prefix in PIPELINE_PREFIXES:
        seaweed.delete_prefix(prefix)
    yield seaweed
    for prefix in PIPELINE_PREFIXES:
        seaweed.delete_prefix(prefix)


def s3_storage(
    env: SeaweedEnv, *, access_key: str, secret_key: str, public_url_base: str | None = None
) -> ImageStorageResource:
    return ImageStorageResource(
        bucket_name=env.bucket,
        endpoint_url=env.endpoint_url,
        access_key_id=access_key,
        secret_access_key=secret_key,
        region="us-east-1",
        public_url_base=public_url_base,
    )


def materialize(
    database: DatabaseResource,
    storage: ImageStorageResource,
    gemini: GeminiResource,
    instance: dg.DagsterInstance,
    config: dict[str, Any] | None = None,
) -> dg.ExecuteInProcessResult:
    return materialize_portraits(resources_for(database, storage, gemini), PARTITION, config, instance)


def keys_in_bucket(env: SeaweedEnv) -> set[str]:
    """Every key of the shared bucket, other tests' included: compare before and after a run."""
    pages = env.client().get_paginator("list_objects_v2").paginate(Bucket=env.bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", ())}


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert error is not None
    return error.to_string()


def everything_recorded(instance: dg.DagsterInstance, run_id: str, database: DatabaseResource) -> str:
    """The run, its whole event log and every row of every table, as text: where a leaked secret would be."""
    said = [dg.serialize_value(instance.get_run_by_id(run_id))]
    said.extend(dg.serialize_value(entry) for entry in instance.all_logs(run_id))
    with database.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            said.extend(repr(tuple(row)) for row in connection.execute(table.select()))
    return "\n".join(said)


def count(database: DatabaseResource, model: type[Base]) -> int:
    with database.session() as db:
        return db.scalar(select(func.count()).select_from(model)) or 0


def test_partition_lands_in_s3_and_every_audit_row_points_at_its_png(
    roster_loaded: DatabaseResource, empty_bucket: SeaweedEnv, offline_gemini: GeminiResource
) -> None:
    env = empty_bucket
    storage = s3_storage(env, access_key=env.writer.access_key, secret_key=env.writer.secret_key)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(roster_loaded, storage, offline_gemini, instance, {"run_key": "s3-e2e"})
    assert result.success

    with roster_loaded.session() as db:
        snapshot = db.scalars(select(PlayerImageSnapshot)).one()
        rows = db.execute(select(PlayerImageAsset, Player).join(Player).order_by(Player.id)).all()
        slugs = {player.id: player.slug for _, player in rows}
        assets = [asset for asset, _ in rows]
    assert (snapshot.status, snapshot.success_count, snapshot.failure_count) == ("succeeded", PLAYERS_IN_2025, 0)
    assert len(assets) == PLAYERS_IN_2025

    client = env.client()
    url_base = f"{env.endpoint_url}/{env.bucket}"  # path-style, as the client addresses the object
    for asset in assets:
        slug = slugs[asset.player_id]
        assert asset.status == "succeeded" and asset.is_current
        assert asset.s3_bucket == env.bucket
        assert asset.s3_key == naming.history_key(asset.player_id, slug, "default", asset.content_sha256 or "")
        assert asset.public_url == f"{url_base}/{asset.s3_key}"

        history = client.get_object(Bucket=env.bucket, Key=asset.s3_key)
        data = history["Body"].read()
        assert hashlib.sha256(data).hexdigest() == asset.content_sha256
        assert len(data) == asset.bytes
        assert images.inspect(data).width == 800 and images.inspect(data).height == 1000
        assert history["ContentType"] == "image/png"
        assert history["CacheControl"] == IMMUTABLE_CACHE_CONTROL
        assert history["ETag"].strip('"') == hashlib.md5(data).hexdigest()

        alias = client.get_object(Bucket=env.bucket, Key=f"players/{asset.player_id}_{slug}_default.png")
        assert alias["Body"].read() == data
        assert alias["ContentType"] == "image/png"
        assert alias["CacheControl"] == ALIAS_CACHE_CONTROL == "public, max-age=300"

    metadata = result.asset_materializations_for_node("player_portraits")[0].metadata
    assert metadata["storage"].value == "s3://portraits"
    assert metadata["bucket"].value == env.bucket
    assert metadata["index_key"].value == index_key(*PARTITION) == "portraits/default/_partitions/2025.json"
    assert metadata["images"].value == PLAYERS_IN_2025
    assert metadata["keys"].value == [asset.s3_key for asset in assets]
    assert metadata["public_urls"].value == [asset.public_url for asset in assets]

    index = client.get_object(Bucket=env.bucket, Key=index_key(*PARTITION))
    assert index["ContentType"] == "application/json" and index["CacheControl"] == ALIAS_CACHE_CONTROL
    assert [row["key"] for row in json.loads(index["Body"].read())] == [asset.s3_key for asset in assets]

    context = dg.build_input_context(
        asset_key=dg.AssetKey("player_portraits"),
        partition_key=str(portrait_partition_key(*PARTITION)),
        asset_partitions_def=player_portraits.partitions_def,
        instance=instance,
    )
    loaded = PortraitIOManager(storage=storage).load_input(context)
    assert sorted(loaded) == [(asset.player_id, asset.style) for asset in assets]
    for asset in assets:
        expected = client.get_object(Bucket=env.bucket, Key=asset.s3_key)["Body"].read()
        assert loaded[(asset.player_id, asset.style)] == expected

    assert env.writer.secret_key not in everything_recorded(instance, result.run_id, roster_loaded)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # only URLs differ: one database is enough
def test_public_urls_use_the_cdn_base_when_one_is_set(
    roster_loaded: DatabaseResource, empty_bucket: SeaweedEnv, offline_gemini: GeminiResource
) -> None:
    env = empty_bucket
    storage = s3_storage(env, access_key=env.writer.access_key, secret_key=env.writer.secret_key, public_url_base=CDN)
    result = materialize(roster_loaded, storage, offline_gemini, dg.DagsterInstance.ephemeral())
    assert result.success

    with roster_loaded.session() as db:
        assets = list(db.scalars(select(PlayerImageAsset).order_by(PlayerImageAsset.player_id)))
    assert len(assets) == PLAYERS_IN_2025
    client = env.client()
    for asset in assets:
        assert asset.public_url == f"{CDN}/{asset.s3_key}"
        head = client.head_object(Bucket=env.bucket, Key=(asset.public_url or "").removeprefix(f"{CDN}/"))
        assert head["ContentLength"] == asset.bytes
    metadata = result.asset_materializations_for_node("player_portraits")[0].metadata
    assert metadata["public_urls"].value == [asset.public_url for asset in assets]
    index = json.loads(client.get_object(Bucket=env.bucket, Key=index_key(*PARTITION))["Body"].read())
    assert [row["public_url"] for row in index] == [asset.public_url for asset in assets]


@pytest.mark.parametrize(
    ("access_key", "code"),
    [(None, "SignatureDoesNotMatch"), ("AKNOSUCHKEY0000000", "InvalidAccessKeyId")],
    ids=["wrong-secret", "unknown-access-key"],
)
def test_wrong_keys_fail_the_run_before_anything_is_generated_or_audited(
    roster_loaded: DatabaseResource,
    empty_bucket: SeaweedEnv,
    offline_gemini: GeminiResource,
    access_key: str | None,
    code: str,
) -> None:
    env = empty_bucket
    storage = s3_storage(env, access_key=access_key or env.writer.access_key, secret_key=WRONG_SECRET)
    before = keys_in_bucket(env)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(roster_loaded, storage, offline_gemini, instance)

    assert not result.success
    message = failure_message(result)
    assert "StorageError" in message
    assert f"cannot use bucket s3://{env.bucket}: {code} (HTTP 403)" in message
    recorded = everything_recorded(instance, result.run_id, roster_loaded)
    assert "cannot use bucket s3://portraits" in recorded  # the failure itself is in what was searched
    assert WRONG_SECRET not in recorded
    assert env.writer.secret_key not in recorded
    # check_ready runs before the snapshot is opened: nothing in the audit trail, nothing in the bucket.
    assert count(roster_loaded, PlayerImageSnapshot) == 0
    assert count(roster_loaded, PlayerImageAsset) == 0
    assert keys_in_bucket(env) == before  # the run wrote nothing


@pytest.fixture
def gemini_server() -> Iterator[fake.GeminiTestServer]:
    with fake.GeminiTestServer(api_key=GEMINI_KEY) as running:
        yield running


def test_read_only_identity_is_refused_before_any_paid_call(
    roster_loaded: DatabaseResource, empty_bucket: SeaweedEnv, gemini_server: fake.GeminiTestServer
) -> None:
    """HEAD and LIST succeed for a reader: only the write probe tells that every image would fail to store."""
    env = empty_bucket
    storage = s3_storage(env, access_key=env.reader.access_key, secret_key=env.reader.secret_key)
    gemini = GeminiResource(api_key=GEMINI_KEY, base_url=gemini_server.base_url, requests_per_minute=60_000)
    before = keys_in_bucket(env)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(roster_loaded, storage, gemini, instance, EVERY_PLAYER)

    assert not result.success
    message = failure_message(result)
    assert f"bucket s3://{env.bucket} is not writable with these credentials" in message
    assert f"cannot write s3://{env.bucket}/{PROBE_PREFIX}" in message and "AccessDenied (HTTP 403)" in message
    assert gemini_server.request_counts["generate_content"] == 0  # nothing paid
    assert count(roster_loaded, PlayerImageSnapshot) == 0
    assert count(roster_loaded, PlayerImageAsset) == 0
    assert keys_in_bucket(env) == before  # the run wrote nothing
    recorded = everything_recorded(instance, result.run_id, roster_loaded)
    assert "AccessDenied" in recorded
    assert env.reader.secret_key not in recorded


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the CLI's exit path: one database is enough
def test_cli_with_a_read_only_identity_exits_2_naming_access_denied_and_pays_nothing(
    roster_loaded: DatabaseResource,
    empty_bucket: SeaweedEnv,
    gemini_server: fake.GeminiTestServer,
    tmp_path: Path,
) -> None:
    env = empty_bucket
    base = {key: value for key, value in os.environ.items() if not key.startswith(("GEMINI_", "S3_", "DAGSTER_"))}
    cli_env = {
        **base,
        "DATABASE_URL": roster_loaded.url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "GEMINI_API_KEY": GEMINI_KEY,
        "GEMINI_BASE_URL": gemini_server.base_url,
        "S3_BUCKET_NAME": env.bucket,
        "S3_ENDPOINT_URL": env.endpoint_url,
        "S3_ACCESS_KEY_ID": env.reader.access_key,
        "S3_SECRET_ACCESS_KEY": env.reader.secret_key,
        "CURRENT_DRAFT_YEAR": "2025",
    }
    before = keys_in_bucket(env)
    result = subprocess.run(
        [CLI, "generate", "--draft-year", "2025"], env=cli_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("portrait-pipeline:")]
    assert len(errors) == 1, result.stderr  # one line: what, where, why
    assert f"bucket s3://{env.bucket} is not writable" in errors[0] and "AccessDenied (HTTP 403)" in errors[0]
    assert env.reader.secret_key not in result.stdout + result.stderr
    assert gemini_server.request_counts["generate_content"] == 0
    assert count(roster_loaded, PlayerImageSnapshot) == 0
    assert keys_in_bucket(env) == before
