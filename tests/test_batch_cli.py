"""`portrait-pipeline batch list` and `batch cancel`: the real console script against the local Gemini server."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from portrait_pipeline.audit.db import upgrade
from portrait_pipeline.defs.resources import (
    DatabaseResource,
    GeminiResource,
    ImageStorageResource,
    LikenessResource,
    PortraitSettings,
    generation_service,
)
from portrait_pipeline.generation import batch
from portrait_pipeline.generation.partition import PartitionRequest
from portrait_pipeline.model_registry import DEFAULT_IMAGE_MODEL, pricing
from portrait_pipeline.roster import import_roster, read_roster
from tests.helpers import current_catalogue, run_cli
from tests.servers import gemini as fake

API_KEY = "AIzaTEST-secret-key-0123456789abcdef"


@pytest.fixture
def server() -> Iterator[fake.GeminiTestServer]:
    with fake.GeminiTestServer(api_key=API_KEY, models=current_catalogue(), batch_pending_s=600) as running:
        yield running


def test_batch_list_shows_a_pending_job_and_batch_cancel_cancels_it(
    tmp_path: Path, database_url: str, demo_roster: Path, server: fake.GeminiTestServer
) -> None:
    upgrade(database_url)
    database = DatabaseResource(url=database_url)
    with database.session() as db:
        import_roster(db, read_roster(demo_roster))
    gemini = GeminiResource(api_key=API_KEY, base_url=server.base_url)
    storage = ImageStorageResource(local=True, local_dir=str(tmp_path / "images"))
    lane = pricing(DEFAULT_IMAGE_MODEL, lane="batch")
    request = PartitionRequest("2025", "default", player_ids=(1, 2), lane="batch")
    service = generation_service(storage, gemini, LikenessResource(), PortraitSettings())
    batch.submit_partition(
        database.check(), gemini.client(), service, request, lane, lane.usd_per_image("1K"), batch.BatchSettings()
    )
    [name] = server.batch_names
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GEMINI_", "S3_", "DAGSTER_"))}
    env |= {
        "DATABASE_URL": database_url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "IMAGE_LOCAL_DIR": str(tmp_path / "images"),
        "GEMINI_API_KEY": API_KEY,
        "GEMINI_BASE_URL": server.base_url,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(args, env)

    listed = cli("batch", "list")
    assert listed.returncode == 0, listed.stderr
    [line] = [line for line in listed.stdout.splitlines() if line.startswith(name)]
    price = lane.usd_per_image("1K") * 2
    assert "2025" in line and " 2 " in line and "pending" in line and f"${price:.2f}" in line
    assert "1 pending (2 players)" in listed.stdout

    cancelled = cli("batch", "cancel", name)
    assert cancelled.returncode == 0, cancelled.stderr
    assert server.batch_request_counts["cancel"] == 1 and API_KEY not in cancelled.stdout + cancelled.stderr

    unknown = cli("batch", "cancel", "batches/nope")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines()[-1] == (
        "portrait-pipeline: error: batch cancel batches/nope: no such job in the audit database (see `batch list`)"
    )
