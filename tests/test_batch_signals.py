"""SIGTERM / SIGINT while a batch run waits on its job: the real `portrait-pipeline generate --batch` in a subprocess,
the local Gemini server (real SDK), a real signal; then a rerun collects the job without submitting anything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import select

from portrait_pipeline.audit.db import engine_for, session_scope, upgrade
from portrait_pipeline.audit.models import BatchJobRecord, Player, PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.model_registry import DEFAULT_IMAGE_MODEL, pricing
from tests.helpers import current_catalogue, finish, wait_for
from tests.servers import gemini as fake

CLI = str(Path(sys.executable).with_name("portrait-pipeline"))
API_KEY = "batch-signal-test-key"
DRAFT_YEAR = "2031"
PLAYERS = 3


@pytest.fixture
def server() -> Iterator[fake.GeminiTestServer]:
    # The job stays pending until the test lets it succeed; the run polls with the default backoff (30 s first).
    with fake.GeminiTestServer(
        api_key=API_KEY, models=current_catalogue(), image_size=(320, 400), batch_pending_s=3600
    ) as running:
        yield running


@pytest.fixture
def env(tmp_path: Path, database_url: str, server: fake.GeminiTestServer) -> dict[str, str]:
    upgrade(database_url)
    with session_scope(engine_for(database_url)) as db:
        db.add_all(
            Player(
                slug=f"batch-signal-{index}",
                display_name=f"Batch Signal {index}",
                first_name="Batch",
                last_name=f"Signal {index}",
                position="C",
                draft_year=int(DRAFT_YEAR),
            )
            for index in range(1, PLAYERS + 1)
        )
    base = {key: value for key, value in os.environ.items() if not key.startswith(("GEMINI_", "S3_", "DAGSTER_"))}
    return base | {
        "DATABASE_URL": database_url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "IMAGE_LOCAL_DIR": str(tmp_path / "images"),
        "GEMINI_API_KEY": API_KEY,
        "GEMINI_BASE_URL": server.base_url,
        "CURRENT_DRAFT_YEAR": DRAFT_YEAR,
    }


def generate(env: dict[str, str]) -> subprocess.Popen[str]:
    command = [CLI, "generate", "--draft-year", DRAFT_YEAR, "--batch"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def jobs(url: str) -> list[BatchJobRecord]:
    with session_scope(engine_for(url)) as db:
        return list(db.scalars(select(BatchJobRecord)))


def test_a_signal_while_waiting_ends_the_run_at_once_leaves_the_job_pending_and_a_rerun_collects_it(
    env: dict[str, str], server: fake.GeminiTestServer, database_url: str
) -> None:
    """SIGTERM on SQLite, SIGINT on PostgreSQL (the handling is the same; two runs keep the test fast)."""
    signum = signal.SIGTERM if database_url.startswith("sqlite") else signal.SIGINT
    process = generate(env)
    # Submitted, recorded, and polled once: the run now sleeps out its first backoff (30 s).
    wait_for(lambda: [job.state for job in jobs(database_url)] == ["JOB_STATE_PENDING"], process, timeout=90)
    wait_for(lambda: server.batch_request_counts["get"] >= 1, process, timeout=90)
    time.sleep(0.3)
    process.send_signal(signum)
    signalled = time.time()
    status, out, err = finish(process, timeout=120)

    assert status == 128 + signum, out + err
    assert "Traceback" not in out + err, err[-2000:]
    # At once, not after the backoff: the step failed within seconds (the CLI's own exit varies with the host's
    # load), and the run never polled again.
    [job] = jobs(database_url)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        [failure] = instance.all_logs(job.dagster_run_id or "", of_type=dg.DagsterEventType.STEP_FAILURE)
    assert failure.timestamp - signalled < 5
    assert server.batch_request_counts["get"] == 1
    assert server.batch_request_counts["cancel"] == 0  # a paid job is never cancelled by a stop
    assert job.collected_at is None and job.state == "JOB_STATE_PENDING" and job.request_count == PLAYERS
    with session_scope(engine_for(database_url)) as db:
        snapshot = db.get_one(PlayerImageSnapshot, job.snapshot_id)
        assert snapshot.status == "interrupted" and snapshot.finished_at is not None and not snapshot.is_current
        assert db.scalars(select(PlayerImageAsset)).all() == []

    server.batch_pending_s = 0.0  # the job is done by the time the rerun polls
    status, out, err = finish(generate(env), timeout=120)
    assert status == 0, out + err
    assert server.batch_request_counts["create"] == 1  # collected, not submitted again
    with session_scope(engine_for(database_url)) as db:
        rows = db.scalars(select(PlayerImageAsset)).all()
        assert sorted(row.player_id for row in rows) == list(range(1, PLAYERS + 1))
        assert {(row.status, row.snapshot_id, row.cost_usd) for row in rows} == {
            ("succeeded", job.snapshot_id, pricing(DEFAULT_IMAGE_MODEL).batch_usd("1K"))
        }
        collected = db.get_one(PlayerImageSnapshot, job.snapshot_id)
        assert collected.status == "succeeded" and collected.success_count == PLAYERS and collected.is_current
        assert db.get_one(BatchJobRecord, job.id).collected_at is not None
