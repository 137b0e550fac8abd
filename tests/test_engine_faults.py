"""Fault injection: the engine against a misbehaving Gemini, a failing disk and a killed run, on both databases.

Nothing is mocked: the real SDK talks to the local GeminiTestServer, images go to a real folder, and the
audit rows are read back from SQLite or PostgreSQL.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import func, select, text

from portrait_pipeline import naming
from portrait_pipeline.audit.models import Player, PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.defs.resources import (
    DatabaseResource,
    GeminiResource,
    ImageStorageResource,
    LikenessResource,
    PortraitSettings,
)
from portrait_pipeline.generation.partition import PartitionRequest, run_partition
from portrait_pipeline.generation.player import ImageGenerationService
from portrait_pipeline.model_registry import DEFAULT_IMAGE_MODEL
from portrait_pipeline.storage import LocalImageStorage, StoredObject
from portrait_pipeline.styles import Style
from tests import helpers
from tests.helpers import current_catalogue, generate_requests, materialize_portraits, resources_for
from tests.servers import gemini as fake
from tests.servers.files import FileServer

REPO_ROOT = Path(__file__).resolve().parents[1]
API_KEY = "fault-injection-key"
IMAGE_MODEL = DEFAULT_IMAGE_MODEL  # $0.134 an image
DRAFT_YEAR = "2030"
STYLE: Style = "default"
# A small 4:5 answer and 512 portraits keep Pillow's share of each test to milliseconds.
SERVER_IMAGE = (320, 400)
_PLAYER_IN_PROMPT = re.compile(r"\b(Fault Tester [0-9]{3})\b")  # the only place a name appears

StartServer = Callable[..., fake.GeminiTestServer]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Start GeminiTestServers with the given faults; all are stopped after the test."""
    with ExitStack() as stack:

        def start(**faults: Any) -> fake.GeminiTestServer:
            settings = {"image_size": SERVER_IMAGE, "models": current_catalogue(), **faults}
            return stack.enter_context(fake.GeminiTestServer(**settings))

        yield start


def gemini_for(server: fake.GeminiTestServer, **settings: Any) -> GeminiResource:
    """Quick retries and no client-side rate limit unless a test asks for one."""
    return helpers.gemini_for(server, API_KEY, **{"max_concurrency": 4, **settings})


def add_players(database: DatabaseResource, count: int) -> list[int]:
    """`count` fictional players of DRAFT_YEAR; their names appear in each request's prompt."""
    with database.session() as db:
        players = [
            Player(
                slug=f"fault-tester-{index:03d}",
                display_name=f"Fault Tester {index:03d}",
                first_name="Fault",
                last_name=f"Tester {index:03d}",
                position="SF",
                school="Injection State",
                draft_year=int(DRAFT_YEAR),
            )
            for index in range(1, count + 1)
        ]
        db.add_all(players)
        db.flush()
        return [player.id for player in players]


def run(
    database: DatabaseResource,
    storage: ImageStorageResource,
    gemini: GeminiResource,
    config: dict[str, Any] | None = None,
) -> dg.ExecuteInProcessResult:
    return materialize_portraits(
        resources_for(database, storage, gemini), (DRAFT_YEAR, STYLE), {"image_size": "512", **(config or {})}
    )


def summary(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """The materialization's metadata values (generated, failed, not_started, stopped, cost_usd...)."""
    metadata = result.asset_materializations_for_node("player_portraits")[0].metadata
    return {key: value.value for key, value in metadata.items()}


def image_calls(server: fake.GeminiTestServer) -> list[fake.RecordedRequest]:
    return generate_requests(server, IMAGE_MODEL)


def paid_calls(server: fake.GeminiTestServer) -> int:
    """Image requests the server answered 200: each one is an image Google bills."""
    return sum(1 for request in image_calls(server) if request.status == 200)


def calls_by_player(server: fake.GeminiTestServer) -> dict[str, list[fake.RecordedRequest]]:
    calls: dict[str, list[fake.RecordedRequest]] = defaultdict(list)
    for request in image_calls(server):
        match = _PLAYER_IN_PROMPT.search(json.dumps(request.body))
        assert match, f"no player name in {request.body}"
        calls[match.group(1)].append(request)
    return calls


def assets_of(database: DatabaseResource) -> list[PlayerImageAsset]:
    with database.session() as db:
        return list(db.scalars(select(PlayerImageAsset).order_by(PlayerImageAsset.id)))


def current_images(database: DatabaseResource) -> dict[int, int]:
    """Player id → how many current images the player has for STYLE."""
    with database.session() as db:
        rows = db.execute(
            select(PlayerImageAsset.player_id, func.count())
            .where(PlayerImageAsset.style == STYLE, PlayerImageAsset.is_current.is_(True))
            .group_by(PlayerImageAsset.player_id)
        ).all()
    return {player_id: count for player_id, count in rows}


def committed_images(database: DatabaseResource) -> int:
    with database.session() as db:
        return db.scalar(select(func.count()).where(PlayerImageAsset.status == "succeeded")) or 0


def test_random_server_errors_are_retried_until_every_player_has_an_image(
    database: DatabaseResource, storage_resource: ImageStorageResource, start_server: StartServer
) -> None:
    server = start_server(failure_rate=0.3, seed=11)
    players = add_players(database, 12)
    result = run(database, storage_resource, gemini_for(server, max_attempts=10))
    assert result.success
    statuses = [request.status for request in image_calls(server)]
    assert statuses.count(500) > 0
    assert set(statuses) == {200, 500}
    assert statuses.count(200) == len(players)  # a 500 is retried, and each player is paid for once
    assert current_images(database) == dict.fromkeys(players, 1)
    assert (summary(result)["generated"], summary(result)["failed"]) == (12, 0)
    storage = storage_resource.get_storage()
    assert all(storage.exists(asset.s3_key or "") for asset in assets_of(database))


def test_rate_limit_bursts_wait_the_retry_delay_the_server_asked_for(
    database: DatabaseResource, storage_resource: ImageStorageResource, start_server: StartServer
) -> None:
    server = start_server()
    players = add_players(database, 4)
    # Every first call is refused, then two of the retries are refused again: a burst, then a second one.
    server.enqueue(*[fake.rate_limited_reply(0.6)] * 6)
    result = run(database, storage_resource, gemini_for(server, max_concurrency=4))
    assert result.success
    waits = []
    for calls in calls_by_player(server).values():
        assert calls[-1].status == 200
        for refused, retry in pairwise(calls):
            if refused.status == 429:
                assert refused.ended is not None
                # Our own backoff is 0.05-0.2 s: only RetryInfo's 0.6 s explains a gap this long.
                waits.append(retry.started - refused.ended)
    assert len(waits) == 6 and min(waits) >= 0.6
    assert current_images(database) == dict.fromkeys(players, 1)


def test_calls_in_flight_never_exceed_max_concurrency(
    database: DatabaseResource, storage_resource: ImageStorageResource, start_server: StartServer
) -> None:
    server = start_server(latency_s=0.3)
    players = add_players(database, 16)
    # The image model's pool (the quality judge's calls have a pool of their own model's: judging is off here).
    unjudged = PortraitSettings(current_draft_year=2025, quality_judge=False)
    resources = resources_for(database, storage_resource, gemini_for(server, max_concurrency=4), settings=unjudged)
    result = materialize_portraits(resources, (DRAFT_YEAR, STYLE), {"image_size": "512"})
    assert result.success
    assert server.peak_in_flight == 4  # reached, never passed
    assert len(current_images(database)) == len(players)


class SlowDisk(LocalImageStorage):
    """A real folder on a disk that takes `delay_s` per write; records when each write finished."""

    def __init__(self, root: Path, delay_s: float) -> None:
        super().__init__(root)
        self.delay_s = delay_s
        self.written: dict[str, float] = {}

    def put(self, key: str, data: bytes, *, immutable: bool, content_type: str = "image/png") -> StoredObject:
        time.sleep(self.delay_s)
        stored = super().put(key, data, immutable=immutable, content_type=content_type)
        self.written[key] = time.monotonic()
        return stored


def test_storing_an_image_frees_its_call_for_the_next_player_with_back_pressure(
    database: DatabaseResource, image_dir: Path, start_server: StartServer
) -> None:
    """max_concurrency=1 on a slow disk: the next call goes out while the last image is being written, but a
    third waits until the first image is stored (one image in the call, one in storage)."""
    server = start_server()
    players = add_players(database, 4)
    disk = SlowDisk(image_dir, delay_s=0.3)
    service = ImageGenerationService(gemini_for(server, max_concurrency=1).renderer(), disk)
    request = PartitionRequest(DRAFT_YEAR, STYLE, image_size="512")
    result = run_partition(database.check(), service, request, max_concurrency=1)
    assert [outcome.status for outcome in result.outcomes] == ["succeeded"] * len(players)
    calls = sorted(image_calls(server), key=lambda call: call.started)
    assert len(calls) == len(players) and server.peak_in_flight == 1
    first_alias = naming.current_key(players[0], "fault-tester-001", STYLE)
    first_history = next(key for key in disk.written if key.startswith(f"portraits/{STYLE}/{players[0]}_"))
    assert calls[1].started < disk.written[first_history]  # the second call did not wait for the first write
    assert calls[2].started > disk.written[first_alias]  # the third waited until the first image was stored


def test_more_calls_in_flight_than_pooled_db_connections_neither_stall_nor_fail(
    database: DatabaseResource, storage_resource: ImageStorageResource, start_server: StartServer
) -> None:
    """SQLite's pool holds 15 connections and PostgreSQL's 20: a call in flight must not hold one."""
    server = start_server(latency_s=0.5)
    players = add_players(database, 26)
    started = time.monotonic()
    result = run(database, storage_resource, gemini_for(server, max_concurrency=24))
    elapsed = time.monotonic() - started
    assert result.success and summary(result)["failed"] == 0
    assert server.peak_in_flight_of(IMAGE_MODEL) == 24  # (the judge's calls have a pool of their own)
    assert current_images(database) == dict.fromkeys(players, 1)
    assert elapsed < 15  # a connection wait in the event loop would stall it for the pool timeout (30 s)


def test_likeness_fetches_and_descriptions_in_flight_do_not_hold_db_connections(
    database: DatabaseResource, storage_resource: ImageStorageResource, start_server: StartServer
) -> None:
    """26 players with their own reference photos, 24 at once: each fetch and vision call must not hold one of
    the pool's 15 (SQLite) or 20 (PostgreSQL) connections while it waits."""
    server = start_server(latency_s=0.5)
    players = add_players(database, 26)
    photos = {f"/ref/{player}.png": ("image/png", fake.make_png((64 + player, 80))) for player in players}
    with FileServer(photos) as references:
        with database.session() as db:
            for player in players:
                db.get_one(Player, player).reference_image_url = references.url(f"/ref/{player}.png")
        resources = resources_for(
            database,
            storage_resource,
            gemini_for(server, max_concurrency=24),
            LikenessResource(allow_hosts=references.host_port),
        )
        started = time.monotonic()
        result = materialize_portraits(resources, (DRAFT_YEAR, STYLE), {"image_size": "512", "fetch_likeness": True})
        elapsed = time.monotonic() - started
    assert result.success and summary(result)["failed"] == 0
    assert len([request for request in generate_requests(server) if request.model != IMAGE_MODEL]) == len(players)
    assert current_images(database) == dict.fromkeys(players, 1)
    assert elapsed < 15  # a connection wait would stall the run for the pool timeout (30 s)


def test_requests_per_minute_spreads_the_calls(
    database: DatabaseResource, storage_resource: ImageStorageResource, start_server: StartServer
) -> None:
    server = start_server()
    add_players(database, 6)
    result = run(database, storage_resource, gemini_for(server, max_concurrency=6, requests_per_minute=120))
    assert result.success
    starts = sorted(request.started for request in image_calls(server))
    assert len(starts) == 6
    # 120 a minute is 2 a second with a burst of 2: calls 3 to 6 are let through 0.5 s apart (2.0 s in all).
    # The server sees each call a little after the limiter let it go; allow that much on a busy machine.
    transit = 0.15
    assert starts[-1] - starts[0] >= 2.0 - 2 * transit
    for first in range(len(starts)):
        for last in range(first, len(starts)):
            assert last - first + 1 <= 2 + 2 * (starts[last] - starts[first] + transit)


def test_a_hung_call_times_out_and_is_retried_without_holding_up_the_others(
    database: DatabaseResource, storage_resource: ImageStorageResource, start_server: StartServer
) -> None:
    server = start_server()
    players = add_players(database, 3)
    server.enqueue(fake.hang_reply())
    result = run(database, storage_resource, gemini_for(server, max_concurrency=3, timeout_s=1.0))
    assert result.success
    calls = calls_by_player(server)
    (hung_player,) = [name for name, requests in calls.items() if requests[0].status is None]
    hung, retry = calls[hung_player]
    assert retry.status == 200 and retry.started - hung.started >= 1.0
    others = [requests for name, requests in calls.items() if name != hung_player]
    # The others were answered while the hung call was still waiting for its timeout.
    assert all(len(requests) == 1 and requests[0].status == 200 for requests in others)
    assert all((requests[0].ended or float("inf")) < hung.started + 1.0 for requests in others)
    assert current_images(database) == dict.fromkeys(players, 1)


@contextmanager
def fault_when(ready: Callable[[], bool], inject: Callable[[], None]) -> Iterator[threading.Event]:
    """Inject a real fault from a watcher thread the moment `ready()` holds; yields an event set once it has."""
    stop, injected = threading.Event(), threading.Event()

    def watch() -> None:
        while not stop.wait(0.002):
            if ready():
                inject()
                injected.set()
                return

    watcher = threading.Thread(target=watch, name="fault-injection", daemon=True)
    watcher.start()
    try:
        yield injected
    finally:
        stop.set()
        watcher.join()


@contextmanager
def players_folder_becomes_a_file(
    database: DatabaseResource, image_dir: Path, server: fake.GeminiTestServer, during_call: int
) -> Iterator[None]:
    """A real storage fault: while image call number `during_call` is at Gemini, `players/` becomes a regular file.

    Writing that player's serving alias (`players/<id>_<slug>_<style>.png`), and every later one, then fails
    with an OSError. The fault waits until the players before it are committed: with max_concurrency=1 they are
    stored while that call is out (the slow fourth call leaves them a second).
    """
    folder = image_dir / "players"

    def ready() -> bool:
        return len(image_calls(server)) >= during_call and committed_images(database) >= during_call - 1

    def break_folder() -> None:
        folder.rename(image_dir / "players-before-the-fault")
        folder.write_bytes(b"a file where the folder was")

    with fault_when(ready, break_folder):
        yield


def slow_fourth_call(server: fake.GeminiTestServer) -> None:
    """Three quick images, then a call that takes 1 s: time enough to break the folder while it is out."""
    server.enqueue(fake.Reply(), fake.Reply(), fake.Reply(), fake.slow_reply(1.0))


def test_storage_failing_mid_run_fails_those_players_with_the_reason_and_keeps_the_others(
    database: DatabaseResource, image_dir: Path, storage_resource: ImageStorageResource, start_server: StartServer
) -> None:
    server = start_server()
    players = add_players(database, 6)
    slow_fourth_call(server)
    with players_folder_becomes_a_file(database, image_dir, server, during_call=4):
        result = run(database, storage_resource, gemini_for(server, max_concurrency=1))
    assert result.success  # some players got an image: a partial run, not a failed one
    assets = assets_of(database)
    succeeded = [asset for asset in assets if asset.status == "succeeded"]
    failed = [asset for asset in assets if asset.status == "failed"]
    assert [asset.player_id for asset in succeeded] == players[:3]
    assert [asset.player_id for asset in failed] == players[3:]
    for asset in failed:
        assert f"cannot write {image_dir / 'players'}/" in (asset.error_message or "")
        assert not asset.is_current and asset.s3_key is None
    storage = storage_resource.get_storage()
    assert all(asset.is_current and storage.exists(asset.s3_key or "") for asset in succeeded)
    assert (summary(result)["generated"], summary(result)["failed"]) == (3, 3)
    assert "cannot write" in summary(result)["failures"]


def test_storage_failures_in_a_row_trip_the_breaker_and_no_later_call_starts(
    database: DatabaseResource, image_dir: Path, storage_resource: ImageStorageResource, start_server: StartServer
) -> None:
    server = start_server()
    players = add_players(database, 10)
    slow_fourth_call(server)
    with players_folder_becomes_a_file(database, image_dir, server, during_call=4):
        result = run(database, storage_resource, gemini_for(server, max_concurrency=1), {"max_consecutive_failures": 2})
    assert not result.success
    failure = result.failure_data_for_node("player_portraits")
    assert failure is not None and failure.user_failure_data is not None
    metadata = {key: value.value for key, value in failure.user_failure_data.metadata.items()}
    assert metadata["stopped"] == "circuit breaker: 2 consecutive failures, no new calls started"
    # Player 6's call started after the first failure (one in a row) and was at Gemini when the second one
    # tripped the breaker: it is answered and recorded. Storing one image at a time (max_concurrency=1) holds
    # every later call back until the failure before it is known, so nothing else starts.
    assert (metadata["generated"], metadata["failed"], metadata["not_started"]) == (3, 3, 4)
    assert "circuit breaker" in (failure.user_failure_data.description or "")
    recorded = {asset.player_id: asset.status for asset in assets_of(database)}
    assert recorded == {**dict.fromkeys(players[:3], "succeeded"), **dict.fromkeys(players[3:6], "failed")}
    assert len(image_calls(server)) == 6  # the players after the trip were never sent
    with database.session() as db:
        assert db.scalars(select(PlayerImageSnapshot.status)).one() == "failed"


@contextmanager
def audit_table_vanishes_after(database: DatabaseResource, committed: int) -> Iterator[None]:
    """A real database fault: once `committed` images are in, `player_image_assets` is renamed away (as when a
    migration is rolled back under a running job), so every later write of the run fails; put back afterwards."""

    def rename(old: str, new: str) -> None:
        with database.session() as db:
            db.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))

    gone = threading.Event()
    try:
        with fault_when(
            lambda: committed_images(database) >= committed, partial(rename, "player_image_assets", "gone")
        ) as gone:
            yield
    finally:
        if gone.is_set():
            rename("gone", "player_image_assets")


def test_a_database_fault_mid_run_fails_those_players_trips_the_breaker_and_the_run_says_so(
    database: DatabaseResource, storage_resource: ImageStorageResource, start_server: StartServer
) -> None:
    server = start_server(latency_s=0.2)
    add_players(database, 10)
    with audit_table_vanishes_after(database, committed=3):
        gemini = gemini_for(server, max_concurrency=1)
        result = run(database, storage_resource, gemini, {"max_consecutive_failures": 2})
    assert not result.success
    failure = result.failure_data_for_node("player_portraits")
    assert failure is not None and failure.user_failure_data is not None
    metadata: dict[str, Any] = {key: value.value for key, value in failure.user_failure_data.metadata.items()}
    # The breaker trips at the limit (2); a player already storing when it trips may fail too, so the count at the
    # moment it stops starting calls can be above the limit.
    tripped = re.fullmatch(r"circuit breaker: (\d+) consecutive failures, no new calls started", metadata["stopped"])
    assert tripped is not None and int(tripped.group(1)) >= 2
    assert metadata["generated"] == 3 and metadata["failed"] >= 2 and metadata["not_started"] >= 1
    assert "player_image_assets" in metadata["failures"]  # the database's own words, per player
    # Nothing started after the breaker: the not-started players made no call. (A player whose first database read
    # fails now fails before its call, unpaid, so failed players may have made none.)
    assert metadata["generated"] < len(image_calls(server)) <= metadata["generated"] + metadata["failed"]
    assert committed_images(database) == 3


def test_budget_stops_starting_calls_before_the_next_image_would_pass_it(
    database: DatabaseResource, storage_resource: ImageStorageResource, start_server: StartServer
) -> None:
    server = start_server(latency_s=0.2)
    add_players(database, 6)
    # $0.41 pays for three images at $0.134 ($0.402), not for a fourth. Images only: the quality judge's share of
    # the budget is tested in test_quality_judge.py.
    unjudged = PortraitSettings(current_draft_year=2025, quality_judge=False)
    resources = resources_for(database, storage_resource, gemini_for(server, max_concurrency=2), settings=unjudged)
    result = materialize_portraits(resources, (DRAFT_YEAR, STYLE), {"image_size": "512", "max_cost_usd": 0.41})
    assert result.success
    figures = summary(result)
    assert (figures["generated"], figures["failed"], figures["not_started"]) == (3, 0, 3)
    assert figures["stopped"].startswith("budget:") and "$0.41" in figures["stopped"]
    assert figures["cost_usd"] == pytest.approx(0.402)
    assert paid_calls(server) == len(image_calls(server)) == 3
    with database.session() as db:
        assert db.scalars(select(PlayerImageSnapshot.status)).one() == "stopped"


def test_a_killed_run_resumed_with_missing_only_pays_again_only_for_the_calls_it_had_in_flight(
    database: DatabaseResource,
    image_dir: Path,
    storage_resource: ImageStorageResource,
    start_server: StartServer,
    tmp_path: Path,
) -> None:
    concurrency = 3
    server = start_server(latency_s=0.4)
    players = add_players(database, 12)
    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir()
    command = [
        *(sys.executable, "-m", "tests.engine_worker"),
        *("--database-url", database.url, "--image-dir", str(image_dir), "--base-url", server.base_url),
        *("--draft-year", DRAFT_YEAR, "--style", STYLE, "--max-concurrency", str(concurrency)),
        *("--dagster-home", str(dagster_home)),
    ]
    worker = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        # Kill with every slot waiting on Gemini: no player is between its storage write and its commit.
        while committed_images(database) < 4 or server.in_flight < concurrency:
            assert worker.poll() is None, "the worker finished before it could be killed"
            assert time.monotonic() < deadline, "the worker never committed 4 images"
            time.sleep(0.002)
        worker.kill()  # SIGKILL: no cleanup, no finally blocks, no snapshot closing
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    while server.in_flight:  # the calls in flight at the kill are still answered (and billed)
        time.sleep(0.01)
    committed_before = committed_images(database)
    paid_before = paid_calls(server)
    wasted = paid_before - committed_before  # images Google made that the killed run never recorded
    # In flight at the kill: the calls at Gemini (<= concurrency) and answered images being stored (<= concurrency).
    assert committed_before >= 4 and 0 < wasted <= 2 * concurrency

    with database.session() as db:
        killed = db.scalars(select(PlayerImageSnapshot)).one()
    assert (killed.status, killed.finished_at) == ("running", None)  # nobody closed it
    # Dagster learns the run is over (run monitoring, or "terminate" in the UI); the next run closes its snapshot.
    instance = dg.DagsterInstance.local_temp(str(dagster_home))
    killed_run = instance.get_run_by_id(killed.dagster_run_id or "")
    assert killed_run is not None and killed_run.status == dg.DagsterRunStatus.STARTED
    instance.report_run_failed(killed_run)

    resources = resources_for(database, storage_resource, gemini_for(server, max_concurrency=concurrency))
    config = {"image_size": "512", "missing_only": True}
    result = materialize_portraits(resources, (DRAFT_YEAR, STYLE), config, instance)
    assert result.success
    with database.session() as db:
        closed = db.get_one(PlayerImageSnapshot, killed.id)
        assert (closed.status, closed.success_count, closed.is_current) == ("interrupted", committed_before, False)
        assert closed.finished_at is not None
        current = db.scalars(select(PlayerImageSnapshot).where(PlayerImageSnapshot.is_current.is_(True))).one()
    assert current.version == 2
    figures = summary(result)
    assert (figures["skipped"], figures["generated"]) == (committed_before, len(players) - committed_before)
    assert current_images(database) == dict.fromkeys(players, 1)
    # The invariant: every player is paid for once, plus only the calls the kill left in flight.
    assert paid_calls(server) == len(players) + wasted
    storage = storage_resource.get_storage()
    with database.session() as db:
        keys = db.scalars(select(PlayerImageAsset.s3_key).where(PlayerImageAsset.is_current.is_(True))).all()
    assert len(keys) == len(players) and all(storage.exists(key or "") for key in keys)
