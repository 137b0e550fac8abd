"""Runs that overlap and a store that dies under load: every paid call ends with exactly one audit row.

Real parts: the SDK against the local GeminiTestServer, a real folder for images, SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from portrait_pipeline.audit.models import PlayerImageAsset
from portrait_pipeline.defs.resources import DatabaseResource
from portrait_pipeline.errors import StorageError
from portrait_pipeline.generation.engine import PlayerOutcome
from portrait_pipeline.generation.partition import PartitionRequest, run_partition
from portrait_pipeline.generation.player import ImageGenerationService
from portrait_pipeline.storage import LocalImageStorage, StoredObject
from tests.test_engine_faults import (
    DRAFT_YEAR,
    STYLE,
    StartServer,
    add_players,
    assets_of,
    calls_by_player,
    committed_images,
    fault_when,
    gemini_for,
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
