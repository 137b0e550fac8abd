"""How long a new-prospects sensor tick takes on a large roster: first tick, idle tick, tick after a few changes.

    .venv/bin/python -m bench.sensor_eval                       # a temporary SQLite file
    .venv/bin/python -m bench.sensor_eval --database-url postgresql://postgres@127.0.0.1:5432/test

PostgreSQL runs in a fresh schema that is dropped afterwards. Dagster gives a sensor 60 s; we want well under 1 s.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import dagster as dg
import psycopg
from sqlalchemy import insert, text, update
from sqlalchemy.engine import make_url

from portrait_pipeline.audit import db
from portrait_pipeline.audit.models import Player, PlayerImageAsset, PlayerImageSnapshot, utcnow
from portrait_pipeline.defs.resources import DatabaseResource, PortraitSettings
from portrait_pipeline.defs.sensors import new_prospects_sensor

FIRST_DRAFT_YEAR = 2006


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--players", type=int, default=10_000, help="roster size (default 10000)")
    parser.add_argument("--years", type=int, default=20, help="draft years the roster spreads over (default 20)")
    parser.add_argument("--changes", type=int, default=100, help="players changed before the third tick")
    parser.add_argument("--styles", default="default", help="PORTRAIT_SENSOR_STYLES, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="evaluations per measurement; the median is shown")
    parser.add_argument("--database-url", help="default: a temporary SQLite file; postgresql:// uses a new schema")
    parser.add_argument("--index", action="store_true", help="add an (updated_at, id) index on players first")
    return parser.parse_args()


@contextmanager
def scratch_database(url: str | None) -> Iterator[str]:
    """A migrated, empty database that disappears afterwards."""
    if url is None:
        with tempfile.TemporaryDirectory() as folder:
            scratch = f"sqlite:///{Path(folder) / 'bench.db'}"
            db.upgrade(scratch)
            yield scratch
            db.engine_for(scratch).dispose()
        return
    if not url.startswith("postgres"):
        db.upgrade(url)
        yield url
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    parsed = make_url(url)
    scratch = parsed.set(query={**parsed.query, "options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )
    try:
        db.upgrade(scratch)
        yield scratch
    finally:
        db.engine_for(scratch).dispose()
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def seed(database: DatabaseResource, players: int, years: int) -> None:
    """`players` rows over `years` classes, one in ten with a reference photo, half of each class with a portrait."""
    start = datetime.now(UTC) - timedelta(days=1)
    rows = [
        {
            "id": player_id,
            "slug": f"player-{player_id}",
            "display_name": f"Player {player_id}",
            "first_name": "Player",
            "last_name": str(player_id),
            "draft_year": FIRST_DRAFT_YEAR + player_id % years,
            "reference_image_url": f"https://example.com/{player_id}.jpg" if player_id % 10 == 0 else None,
            "updated_at": start + timedelta(milliseconds=player_id),
            "created_at": start,
        }
        for player_id in range(1, players + 1)
    ]
    with database.session() as session:
        session.execute(insert(Player), rows)
        snapshot = PlayerImageSnapshot(
            run_key="bench",
            version=1,
            is_current=True,
            style="default",
            cohort="bench",
            system_prompt="bench",
            system_prompt_version="v2.1",
            image_size="1K",
            model="offline-renderer",
        )
        session.add(snapshot)
        session.flush()
        assets = [
            {
                "snapshot_id": snapshot.id,
                "player_id": player_id,
                "style": "default",
                "status": "succeeded",
                "is_current": True,
                "model": "offline-renderer",
                "system_prompt_version": "v2.1",
            }
            for player_id in range(1, players + 1)
            if (player_id // years) % 2 == 0  # half of every draft class, not every other class
        ]
        session.execute(insert(PlayerImageAsset), assets)


def change_players(database: DatabaseResource, players: int, changes: int) -> None:
    """Give `changes` players spread over the roster a reference photo, as a roster import would."""
    ids = random.Random(0).sample(range(1, players + 1), min(changes, players))
    with database.session() as session:
        session.execute(
            update(Player)
            .where(Player.id.in_(ids))
            .values(reference_image_url="https://example.com/new.jpg", updated_at=utcnow())
        )


def tick(
    database: DatabaseResource, settings: PortraitSettings, instance: dg.DagsterInstance, cursor: str | None
) -> dg.SensorResult:
    """One evaluation, as the daemon runs it: context, resources, the sensor function."""
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"database": database, "settings": settings}
    )
    result = new_prospects_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def timed(evaluate: Callable[[], dg.SensorResult], repeat: int) -> tuple[float, dg.SensorResult]:
    """Median milliseconds over `repeat` evaluations (each reads only), and the last result."""
    samples: list[float] = []
    result = evaluate()
    for _ in range(repeat):
        started = time.perf_counter()
        result = evaluate()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), result


def added_partitions(result: dg.SensorResult) -> list[str]:
    requests = result.dynamic_partitions_requests or []
    return [key for r in requests if isinstance(r, dg.AddDynamicPartitionsRequest) for key in r.partition_keys]


def report(label: str, ms: float, result: dg.SensorResult) -> None:
    runs = len(result.run_requests or [])
    added = len(added_partitions(result))
    print(f"{label:<28}{ms:>9.1f} ms{runs:>8} run requests{added:>6} partitions added")


def main() -> None:
    args = parse_args()
    with scratch_database(args.database_url) as url:
        database = DatabaseResource(url=url)
        seed(database, args.players, args.years)
        if args.index:
            with database.session() as session:
                session.execute(text("CREATE INDEX ix_bench_players_updated_at_id ON players (updated_at, id)"))
        with database.session() as session:  # fresh statistics, as a database in service would have
            session.execute(text("ANALYZE"))
        database.check()  # the code server keeps its engine between ticks; do not time the first connection
        settings = PortraitSettings(sensor_styles=args.styles.split(","))
        instance = dg.DagsterInstance.ephemeral()

        def evaluate(cursor: str | None) -> Callable[[], dg.SensorResult]:
            return partial(tick, database, settings, instance, cursor)

        print(
            f"{make_url(url).get_backend_name()}: {args.players} players over {args.years} draft years, "
            f"half with a current portrait; styles {args.styles}; index on (updated_at, id): {args.index}"
        )
        ms, first = timed(evaluate(None), args.repeat)
        report("(a) first tick, no cursor", ms, first)
        instance.add_dynamic_partitions("draft_years", added_partitions(first))  # as the daemon would
        ms, idle = timed(evaluate(first.cursor), args.repeat)
        report("(b) no change since", ms, idle)
        change_players(database, args.players, args.changes)
        ms, changed = timed(evaluate(first.cursor), args.repeat)
        report(f"(c) {args.changes} players changed", ms, changed)


if __name__ == "__main__":
    main()
