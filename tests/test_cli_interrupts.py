"""Ctrl-C, SIGTERM and kill -9 against the real `portrait-pipeline generate`, and what its summary and exit status say.

The console script runs in a subprocess against the local Gemini server (real SDK), a temp Dagster instance and
SQLite or PostgreSQL; the test sends real signals and reads back the server's log, the audit rows and the runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import func, select, text

from portrait_pipeline.audit.db import engine_for, session_scope, upgrade
from portrait_pipeline.audit.models import ImageQualityScore, Player, PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.interrupts import CALL_CANCELLED
from portrait_pipeline.model_registry import DEFAULT_IMAGE_MODEL, pricing
from tests.helpers import current_catalogue, finish, generate_requests, wait_for
from tests.servers import gemini as fake

CLI = str(Path(sys.executable).with_name("portrait-pipeline"))
API_KEY = "interrupt-test-key"
IMAGE_MODEL = DEFAULT_IMAGE_MODEL
DRAFT_YEAR = "2031"
PRICE_512 = pricing(IMAGE_MODEL).usd_per_image("512")  # gemini-3-pro-image has no 512: made and billed at 1K


@pytest.fixture
def server() -> Iterator[fake.GeminiTestServer]:
    catalogue = current_catalogue()
    with fake.GeminiTestServer(api_key=API_KEY, image_size=(320, 400), latency_s=0.3, models=catalogue) as running:
        yield running


@pytest.fixture
def env(tmp_path: Path, database_url: str, server: fake.GeminiTestServer) -> dict[str, str]:
    upgrade(database_url)
    base = {key: value for key, value in os.environ.items() if not key.startswith(("GEMINI_", "S3_", "DAGSTER_"))}
    return {
        **base,
        "DATABASE_URL": database_url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "IMAGE_LOCAL_DIR": str(tmp_path / "images"),
        "GEMINI_API_KEY": API_KEY,
        "GEMINI_BASE_URL": server.base_url,
        "GEMINI_MAX_CONCURRENCY": "4",
        "GEMINI_REQUESTS_PER_MINUTE": "60000",
        "CURRENT_DRAFT_YEAR": DRAFT_YEAR,
    }


def add_players(url: str, count: int) -> None:
    with session_scope(engine_for(url)) as db:
        db.add_all(
            Player(
                slug=f"signal-tester-{index:03d}",
                display_name=f"Signal Tester {index:03d}",
                first_name="Signal",
                last_name=f"Tester {index:03d}",
                position="PG",
                school="Interrupt State",
                draft_year=int(DRAFT_YEAR),
            )
            for index in range(1, count + 1)
        )


def generate(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    command = [CLI, "generate", "--draft-year", DRAFT_YEAR, "--size", "512", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rows(url: str) -> list[PlayerImageAsset]:
    with session_scope(engine_for(url)) as db:
        return list(db.scalars(select(PlayerImageAsset).order_by(PlayerImageAsset.id)))


def row_count(url: str) -> int:
    with session_scope(engine_for(url)) as db:
        return db.scalar(select(func.count()).select_from(PlayerImageAsset)) or 0


def image_calls(server: fake.GeminiTestServer) -> list[fake.RecordedRequest]:
    return generate_requests(server, IMAGE_MODEL)


def answered(server: fake.GeminiTestServer) -> int:
    """generateContent requests the server answered 200: each one is an image Google bills."""
    return sum(1 for request in image_calls(server) if request.status == 200)


def settle(server: fake.GeminiTestServer) -> None:
    deadline = time.monotonic() + 10
    while server.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)


def dagster_run(env: dict[str, str], run_id: str) -> dg.DagsterRun:
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        run = instance.get_run_by_id(run_id)
    assert run is not None
    return run


def only_snapshot(url: str) -> PlayerImageSnapshot:
    with session_scope(engine_for(url)) as db:
        return db.scalars(select(PlayerImageSnapshot)).one()


def test_a_signal_stops_new_calls_records_every_answer_and_exits_128_plus_the_signal(
    env: dict[str, str], server: fake.GeminiTestServer, database_url: str
) -> None:
    """SIGINT on SQLite, SIGTERM on PostgreSQL (the handling is the same; two runs keep the test fast)."""
    signum = signal.SIGINT if database_url.startswith("sqlite") else signal.SIGTERM
    add_players(database_url, 60)
    process = generate(env)
    wait_for(lambda: row_count(database_url) >= 6, process)
    process.send_signal(signum)
    signalled = time.monotonic()
    status, out, err = finish(process)
    settle(server)

    assert status == 128 + signum, out + err
    assert f"INTERRUPTED (interrupted by {signal.Signals(signum).name})" in out
    assert "Traceback" not in out + err, err[:1500]
    recorded = rows(database_url)
    # No paid call without a row, and the run stopped well short of its 60 players.
    assert answered(server) == len(recorded) < 60
    assert all(row.status == "succeeded" for row in recorded)  # the grace period let every answer be stored
    # Nothing was sent after the signal but what the loop had already started at that instant.
    assert [call for call in image_calls(server) if call.started > signalled + 0.1] == []
    snapshot = only_snapshot(database_url)
    assert (snapshot.status, snapshot.success_count, snapshot.is_current) == ("interrupted", len(recorded), False)
    run = dagster_run(env, snapshot.dagster_run_id or "")
    assert run.status in (dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE)
    summary = next(line for line in out.splitlines() if line.startswith(f"{DRAFT_YEAR}|default "))
    assert summary.split()[1:6] == ["FAILURE", str(len(recorded)), "0", "0", str(60 - len(recorded))]


def test_calls_still_at_gemini_when_the_grace_period_ends_are_cancelled_with_a_row_each(
    tmp_path: Path, env: dict[str, str], server: fake.GeminiTestServer, database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the database plays no part here: SQLite is enough")
    server.latency_s = 5.0
    add_players(database_url, 12)
    process = generate(env, "--grace-period", "0.5")
    wait_for(lambda: server.in_flight >= 4, process)
    process.send_signal(signal.SIGINT)
    signalled = time.monotonic()
    status, out, err = finish(process)
    ended = time.monotonic() - signalled
    settle(server)

    assert status == 130, out + err
    assert ended < 4.0  # the grace period, then at once; not the 5 s the calls would have taken
    recorded = rows(database_url)
    # Each request sent has its row: cancelled, marked as possibly billed, at the image's price.
    assert len(recorded) == len(image_calls(server)) == 4
    assert {row.error_message for row in recorded} == {CALL_CANCELLED}
    assert {row.cost_usd for row in recorded} == {PRICE_512}
    assert "$0.54" in out  # 4 x $0.134, from the rows


def test_a_run_killed_with_sigkill_is_marked_failed_by_the_next_cli_start_and_its_snapshot_closed(
    env: dict[str, str], server: fake.GeminiTestServer, database_url: str
) -> None:
    add_players(database_url, 16)
    process = generate(env)
    wait_for(lambda: row_count(database_url) >= 4, process)
    process.kill()
    process.wait()
    settle(server)
    killed = only_snapshot(database_url)
    assert dagster_run(env, killed.dagster_run_id or "").status == dg.DagsterRunStatus.STARTED

    status, out, err = finish(generate(env, "--missing-only"))
    assert status == 0, out + err
    run = dagster_run(env, killed.dagster_run_id or "")
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert f"run {run.run_id}: its worker died" in err
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        failure = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert "died without ending the run" in (failure[0].message or "")
    with session_scope(engine_for(database_url)) as db:
        closed = db.get_one(PlayerImageSnapshot, killed.id)
        assert closed.status == "interrupted" and closed.finished_at is not None
        current = db.scalar(select(func.count()).where(PlayerImageAsset.is_current.is_(True)))
    assert current == 16


def test_a_run_that_fails_after_storing_images_is_not_shown_as_done(
    env: dict[str, str], server: fake.GeminiTestServer, database_url: str, tmp_path: Path
) -> None:
    """The issue's case: the images of an earlier run are not in the storage the next run uses (the demo's local
    files, then S3), so composing the partition's contact sheet fails after the new image is stored."""
    if not database_url.startswith("sqlite"):
        pytest.skip("the database plays no part here: SQLite is enough")
    add_players(database_url, 3)
    assert finish(generate(env))[0] == 0
    status, out, err = finish(generate({**env, "IMAGE_LOCAL_DIR": str(tmp_path / "elsewhere")}, "--limit", "1"))
    assert status == 1, out + err
    summary = next(line for line in out.splitlines() if line.startswith(f"{DRAFT_YEAR}|default "))
    assert summary.split()[1:3] == ["FAILURE", "1"]
    assert f"RUN FAILED {DRAFT_YEAR}|default: " in out
    assert "Traceback" not in out + err  # the stack trace is in the run's log


def test_answers_that_storage_refuses_are_paid_failures_and_their_cost_is_shown(
    env: dict[str, str], server: fake.GeminiTestServer, database_url: str, tmp_path: Path
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the database plays no part here: SQLite is enough")
    add_players(database_url, 3)
    images = Path(env["IMAGE_LOCAL_DIR"])
    images.mkdir()
    (images / "players").write_bytes(b"a file where the serving folder should be")  # every alias write fails
    # One call at a time: concurrent SQLite writers are another issue's (14, item 3) business.
    status, out, err = finish(generate({**env, "GEMINI_MAX_CONCURRENCY": "1"}))
    assert status == 1, out + err
    recorded = rows(database_url)
    assert [row.status for row in recorded] == ["failed"] * 3 and answered(server) == 3
    assert sum(row.cost_usd for row in recorded) == 3 * PRICE_512
    with session_scope(engine_for(database_url)) as db:  # the judge looked at each image before its store failed
        judged = sum(db.scalars(select(ImageQualityScore.cost_usd)), Decimal("0"))
    assert f"cost ${3 * PRICE_512 + judged:.2f}" in out
    assert len([line for line in out.splitlines() if line.startswith("FAILED Signal Tester")]) == 3


def test_the_audit_database_going_away_after_committed_images_exits_1_not_2(
    env: dict[str, str], server: fake.GeminiTestServer, database_url: str
) -> None:
    add_players(database_url, 30)
    process = generate(env, "--limit", "30")
    wait_for(lambda: row_count(database_url) >= 5, process)
    with session_scope(engine_for(database_url)) as db:
        db.execute(text("ALTER TABLE player_image_assets RENAME TO gone"))
    try:
        status, out, err = finish(process)
    finally:
        with session_scope(engine_for(database_url)) as db:
            db.execute(text("ALTER TABLE gone RENAME TO player_image_assets"))
    assert status == 1, out + err
    assert f"AUDIT UNREADABLE {DRAFT_YEAR}|default" in out
    summary = next(line for line in out.splitlines() if line.startswith(f"{DRAFT_YEAR}|default "))
    assert summary.split()[1] == "FAILURE" and int(summary.split()[2]) >= 5
    assert "Traceback" not in out + err, err[:1500]
