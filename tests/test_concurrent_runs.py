"""Runs that overlap and a store that dies under load: every paid call ends with exactly one audit row.

Real parts: the SDK against the local GeminiTestServer, a real folder for images, SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from portrait_pipeline.audit.models import GenerationLease, PlayerImageAsset, PlayerImageSnapshot, utcnow
from portrait_pipeline.defs.resources import DatabaseResource
from portrait_pipeline.errors import StorageError
from portrait_pipeline.generation.engine import PlayerOutcome
from portrait_pipeline.generation.partition import PartitionRequest, PartitionResult, run_partition
from portrait_pipeline.generation.player import ImageGenerationService
from portrait_pipeline.storage import LocalImageStorage, StoredObject
from tests.servers import gemini as fake
from tests.test_engine_faults import (
    DRAFT_YEAR,
    STYLE,
    StartServer,
    add_players,
    assets_of,
    calls_by_player,
    committed_images,
    current_images,
    fault_when,
    gemini_for,
    image_calls,
    paid_calls,
    start_server,  # noqa: F401
)


class DyingStore(LocalImageStorage):
    """A real folder with an object store's latency that dies when `dead` is set: from then on every put fails after
    `dying_s`, as boto3's retries against a killed S3 do (connection refused, backoff, give up)."""

    def __init__(self, root: Path, put_s: float, dying_s: float) -> None:
        super().__init__(root)
        self.put_s, self.dying_s = put_s, dying_s
        self.dead = threading.Event()

    def put(self, key: str, data: bytes, *, immutable: bool, content_type: str = "image/png") -> StoredObject:
        if self.dead.is_set():
            time.sleep(self.dying_s)
            raise StorageError(f"cannot write s3://portraits/{key}: EndpointConnectionError")
        time.sleep(self.put_s)
        return super().put(key, data, immutable=immutable, content_type=content_type)


def test_a_store_dying_under_load_loses_no_paid_result_and_does_not_stall(
    database: DatabaseResource,
    image_dir: Path,
    start_server: StartServer,  # noqa: F811
) -> None:
    """40 players, 16 at once, the store dies after 8 images while a reader polls the progress. Before the fix,
    SQLite held its database-wide write lock through each dying alias put (1.5 s): the players queued behind it
    waited out the 30 s busy timeout and their paid answers got no row ("database is locked")."""
    server = start_server(latency_s=0.25)
    players = add_players(database, 40)
    store = DyingStore(image_dir, put_s=0.15, dying_s=1.5)
    service = ImageGenerationService(gemini_for(server, max_concurrency=16).renderer(), store)
    request = PartitionRequest(DRAFT_YEAR, STYLE, image_size="512")
    engine = database.check()
    if engine.dialect.name == "sqlite":  # readers never block the writer, and a writer waits its turn
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    polls, done = [0], threading.Event()

    def poll() -> None:  # the CLI's progress poll: a reader on the same database all along
        while not done.wait(0.02):
            with database.session() as db:
                db.scalar(select(func.count()).select_from(PlayerImageAsset))
            polls[0] += 1

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    outcomes: list[PlayerOutcome] = []
    started = time.monotonic()
    try:
        # The dead store fails the contact sheet at the end too: the run raises that, after the players.
        with (
            fault_when(lambda: committed_images(database) >= 8, store.dead.set),
            pytest.raises(StorageError, match="contact-sheets"),
        ):
            run_partition(engine, service, request, max_concurrency=16, on_outcome=outcomes.append)
    finally:
        done.set()
        reader.join()
    elapsed = time.monotonic() - started
    print(f"wall time {elapsed:.1f} s, {polls[0]} progress polls, {paid_calls(server)} paid calls")
    answered = {name for name, calls in calls_by_player(server).items() if any(c.status == 200 for c in calls)}
    recorded = {f"Fault Tester {players.index(asset.player_id) + 1:03d}" for asset in assets_of(database)}
    unrecorded = [outcome.reason for outcome in outcomes if outcome.asset_id is None]
    assert unrecorded == [] and answered == recorded and paid_calls(server) == len(assets_of(database))
    assert elapsed < 20  # the busy timeout alone is 30 s; dying puts in parallel take a few seconds


def overlapping_run(
    database: DatabaseResource, server: fake.GeminiTestServer, image_dir: Path, request: PartitionRequest
) -> Callable[[], PartitionResult]:
    """A run of the partition in its own thread with its own client (as a second process would have)."""
    service = ImageGenerationService(gemini_for(server).renderer(), LocalImageStorage(image_dir))
    results: list[PartitionResult] = []
    thread = threading.Thread(
        target=lambda: results.append(run_partition(database.check(), service, request, max_concurrency=4))
    )
    thread.start()

    def result() -> PartitionResult:
        thread.join()
        return results[0]

    return result


def test_two_missing_only_runs_of_a_partition_at_once_pay_once_per_player(
    database: DatabaseResource,
    image_dir: Path,
    start_server: StartServer,  # noqa: F811
) -> None:
    """Before the claims, both runs planned all 30 players and paid for 60 images."""
    server = start_server(latency_s=0.25)
    players = add_players(database, 30)
    request = PartitionRequest(DRAFT_YEAR, STYLE, image_size="512", missing_only=True)
    first = overlapping_run(database, server, image_dir, request)
    second = overlapping_run(database, server, image_dir, request)
    results = [first(), second()]
    assert len(image_calls(server)) == paid_calls(server) == len(players)
    assert current_images(database) == dict.fromkeys(players, 1)
    generated = [outcome.player_id for result in results for outcome in result.generated]
    assert sorted(generated) == players  # each player by exactly one of the runs
    for result in results:
        assert result.failed == [] and result.failure is None
        # What a run did not generate, it skipped: at plan time, claimed by the other run, or finished by it.
        assert len(result.generated) + len(result.skipped_elsewhere) + len(result.plan.skipped) == len(players)
    assert sum(len(result.skipped_elsewhere) for result in results) > 0  # they did overlap
    with database.session() as db:
        assert db.scalars(select(GenerationLease)).all() == []  # every claim released with its row


def test_a_dead_runs_claim_expires_a_live_one_is_renewed_and_respected(
    database: DatabaseResource,
    image_dir: Path,
    start_server: StartServer,  # noqa: F811
) -> None:
    """Player 1 is claimed by a run that died (expired), player 2 by a live run whose call outlasts its 1 s TTL:
    this run takes player 1 over and skips player 2; the live run renewed its claim, so nobody paid twice."""
    server = start_server()
    players = add_players(database, 3)
    server.enqueue(fake.slow_reply(2.0))  # the live run's call: twice its claim's TTL
    live = overlapping_run(
        database, server, image_dir, PartitionRequest(DRAFT_YEAR, STYLE, "512", player_ids=(players[1],), claim_ttl_s=1)
    )
    dead_at = utcnow() - timedelta(minutes=5)
    with database.session() as db:
        db.add(
            GenerationLease(
                player_id=players[0], style=STYLE, owner="dead run", acquired_at=dead_at, expires_at=dead_at
            )
        )
    while len(image_calls(server)) < 1:
        time.sleep(0.01)
    time.sleep(1.5)  # the live claim would have expired by now without its renewals
    result = run_partition(
        database.check(),
        ImageGenerationService(gemini_for(server).renderer(), LocalImageStorage(image_dir)),
        PartitionRequest(DRAFT_YEAR, STYLE, "512", missing_only=True),
    )
    live_result = live()
    assert sorted(outcome.player_id for outcome in result.generated) == [players[0], players[2]]
    (skipped,) = result.skipped_elsewhere
    assert skipped.player_id == players[1] and (skipped.reason or "").startswith("in progress elsewhere: on ")
    assert [outcome.player_id for outcome in live_result.generated] == [players[1]]
    assert paid_calls(server) == len(players)
    assert current_images(database) == dict.fromkeys(players, 1)
    with database.session() as db:
        assert db.scalars(select(GenerationLease)).all() == []
        snapshot = db.scalars(select(PlayerImageSnapshot).order_by(PlayerImageSnapshot.id.desc())).first()
        assert snapshot is not None and (snapshot.status, snapshot.skipped_count) == ("succeeded", 1)


def test_missing_only_checks_again_after_the_claim_for_an_image_another_run_finished_since_the_plan(
    database: DatabaseResource,
    image_dir: Path,
    start_server: StartServer,  # noqa: F811
) -> None:
    """Run A is generating player 2 when run B plans it as missing; B reaches player 2 after A has stored it and
    released the claim: B must see the new image and skip, not pay for a second one."""
    server = start_server()
    first, second = add_players(database, 2)
    # A's player 2, then B's player 1: B reaches player 2 2 s after A's answer, time enough for A to store it and
    # release its claim on a loaded 2-core machine running two test workers (0.5 s was not, once in five runs).
    server.enqueue(fake.slow_reply(1.0), fake.slow_reply(3.0))
    a = overlapping_run(database, server, image_dir, PartitionRequest(DRAFT_YEAR, STYLE, "512", player_ids=(second,)))
    while len(image_calls(server)) < 1:
        time.sleep(0.01)
    b = run_partition(
        database.check(),
        ImageGenerationService(gemini_for(server).renderer(), LocalImageStorage(image_dir)),
        PartitionRequest(DRAFT_YEAR, STYLE, "512", missing_only=True),
        max_concurrency=1,
    )
    assert [outcome.player_id for outcome in a().generated] == [second]
    assert [player.id for player in b.plan.to_generate] == [first, second]  # planned while A was at it
    assert [(o.player_id, o.reason) for o in b.skipped_elsewhere] == [(second, "finished by another run meanwhile")]
    assert paid_calls(server) == 2 and current_images(database) == {first: 1, second: 1}
