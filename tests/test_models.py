"""The audit schema's guarantees, enforced by both databases, and the audit functions that rely on them."""

from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portrait_pipeline.audit import queries
from portrait_pipeline.audit import records as audit
from portrait_pipeline.audit.models import Player, PlayerImageAsset, PlayerImageSnapshot
from portrait_pipeline.defs.resources import DatabaseResource
from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.storage import StoredObject

# Which constraint refused a row, as PostgreSQL (constraint name) or SQLite (column list) words it.
SLUG_UNIQUE = r"players_slug_key|players\.slug"
SNAPSHOT_PLAYER_UNIQUE = r"uq_asset_snapshot_player|player_image_assets\.snapshot_id, player_image_assets\.player_id"
CURRENT_INDEX = r"uq_asset_current_player_style|player_image_assets\.player_id, player_image_assets\.style"
RUN_KEY_VERSION_UNIQUE = r"uq_snapshot_run_key_version|player_image_snapshots\.run_key, player_image_snapshots\.version"

RECORD = audit.GenerationRecord(
    user_prompt="Portrait of a basketball player: Cooper Flagg.",
    model="offline-renderer",
    system_prompt_version="v2.1",
    generation_time_sec=0.25,
    cost_usd=Decimal("0.134"),
)


def _player(session: Session, slug: str = "cooper-flagg", draft_year: int | None = 2025) -> Player:
    player = Player(slug=slug, display_name=slug, first_name="First", last_name="Last", draft_year=draft_year)
    session.add(player)
    session.flush()
    return player


def _spec(run_key: str = "draft_2025_v1", style: str = "default", draft_year: int | None = 2025) -> audit.SnapshotSpec:
    return audit.SnapshotSpec(
        run_key=run_key,
        style=style,
        cohort="current_draft",
        draft_year=draft_year,
        population_size=3,
        system_prompt="You create player portraits.",
        system_prompt_version="v2.1",
        image_size="1K",
        model="offline-renderer",
        estimated_cost_usd=Decimal("0.402"),
    )


def _stored(name: str) -> StoredObject:
    key = f"portraits/default/{name}.png"
    return StoredObject(bucket=None, key=key, public_url=f"file:///images/{key}", sha256=name.ljust(64, "0"), size=42)


def _asset(snapshot_id: int, player_id: int, *, is_current: bool, style: str = "default") -> PlayerImageAsset:
    return PlayerImageAsset(
        snapshot_id=snapshot_id,
        player_id=player_id,
        style=style,
        status="succeeded",
        is_current=is_current,
        model="offline-renderer",
        system_prompt_version="v2.1",
    )


def _current_ids(database: DatabaseResource, player_id: int, style: str = "default") -> list[int]:
    with database.session() as session:
        query = select(PlayerImageAsset.id).where(
            PlayerImageAsset.player_id == player_id,
            PlayerImageAsset.style == style,
            PlayerImageAsset.is_current.is_(True),
        )
        return list(session.scalars(query))


def test_player_slug_is_unique(database: DatabaseResource) -> None:
    with database.session() as session:
        _player(session, "jordan-miles")
    with pytest.raises(IntegrityError, match=SLUG_UNIQUE), database.session() as session:
        _player(session, "jordan-miles")
    with database.session() as session:
        assert session.scalars(select(Player.slug)).all() == ["jordan-miles"]


def test_one_asset_per_player_per_snapshot(database: DatabaseResource) -> None:
    with database.session() as session:
        player_id = _player(session).id
        snapshot_id = audit.start_snapshot(session, _spec()).id
        session.add(_asset(snapshot_id, player_id, is_current=False))
    with pytest.raises(IntegrityError, match=SNAPSHOT_PLAYER_UNIQUE), database.session() as session:
        session.add(_asset(snapshot_id, player_id, is_current=False, style="vector"))
        session.flush()


def test_only_one_current_asset_per_player_and_style(database: DatabaseResource) -> None:
    with database.session() as session:
        player_id = _player(session).id
        snapshots = [audit.start_snapshot(session, _spec()).id for _ in range(5)]
        session.add(_asset(snapshots[0], player_id, is_current=True))
        # Any number of non-current rows, and a current row in another style, are fine.
        session.add_all(_asset(snapshot_id, player_id, is_current=False) for snapshot_id in snapshots[1:3])
        session.add(_asset(snapshots[3], player_id, is_current=True, style="vector"))
    with pytest.raises(IntegrityError, match=CURRENT_INDEX), database.session() as session:
        session.add(_asset(snapshots[4], player_id, is_current=True))
        session.flush()
    assert len(_current_ids(database, player_id)) == 1


def test_a_current_asset_each_for_different_players(database: DatabaseResource) -> None:
    with database.session() as session:
        snapshot_id = audit.start_snapshot(session, _spec()).id
        first, second = _player(session, "ace-bailey").id, _player(session, "dylan-harper").id
        session.add_all([_asset(snapshot_id, first, is_current=True), _asset(snapshot_id, second, is_current=True)])
    assert len(_current_ids(database, first)) == len(_current_ids(database, second)) == 1


def test_snapshot_versions_are_monotonic_per_run_key(database: DatabaseResource) -> None:
    with database.session() as session:
        versions = [audit.start_snapshot(session, _spec("draft_2025_v1")).version for _ in range(3)]
        other = [audit.start_snapshot(session, _spec("nba_refresh")).version for _ in range(2)]
    with database.session() as session:
        later = audit.start_snapshot(session, _spec("draft_2025_v1"))
        assert (later.status, later.is_current) == ("running", False)
    assert versions == [1, 2, 3]
    assert other == [1, 2]
    assert later.version == 4


def test_run_key_and_version_are_unique(database: DatabaseResource) -> None:
    with database.session() as session:
        snapshot = audit.start_snapshot(session, _spec())
        fields = {column.key: getattr(snapshot, column.key) for column in PlayerImageSnapshot.__table__.columns}
    with pytest.raises(IntegrityError, match=RUN_KEY_VERSION_UNIQUE), database.session() as session:
        session.add(PlayerImageSnapshot(**{**fields, "id": None}))
        session.flush()


def test_record_success_makes_the_new_asset_current(database: DatabaseResource) -> None:
    with database.session() as session:
        player = _player(session)
        first = audit.record_success(
            session, audit.start_snapshot(session, _spec()), player, "default", RECORD, _stored("a")
        )
        vector = audit.record_success(
            session, audit.start_snapshot(session, _spec()), player, "vector", RECORD, _stored("v")
        )
        second = audit.record_success(
            session, audit.start_snapshot(session, _spec()), player, "default", RECORD, _stored("b")
        )
        player_id = player.id

    assert _current_ids(database, player_id) == [second.id]
    assert _current_ids(database, player_id, "vector") == [vector.id]
    with database.session() as session:
        previous = session.get_one(PlayerImageAsset, first.id)
        latest = queries.current_asset(session, player_id, "default")
        assert previous.is_current is False
        assert latest is not None
        assert (latest.id, latest.status, latest.s3_key) == (second.id, "succeeded", "portraits/default/b.png")
        assert (latest.content_sha256, latest.bytes, latest.cost_usd) == ("b".ljust(64, "0"), 42, Decimal("0.134"))


def test_record_failure_keeps_the_previous_image_current(database: DatabaseResource) -> None:
    with database.session() as session:
        player = _player(session)
        good = audit.record_success(
            session, audit.start_snapshot(session, _spec()), player, "default", RECORD, _stored("a")
        )
        failed = audit.record_failure(
            session, audit.start_snapshot(session, _spec()), player, "default", RECORD, "refused"
        )
        player_id = player.id
    assert _current_ids(database, player_id) == [good.id]
    with database.session() as session:
        row = session.get_one(PlayerImageAsset, failed.id)
        assert (row.status, row.is_current, row.error_message, row.s3_key) == ("failed", False, "refused", None)


def test_promote_rolls_back_to_an_earlier_asset(database: DatabaseResource) -> None:
    with database.session() as session:
        player = _player(session)
        assets = [
            audit.record_success(
                session, audit.start_snapshot(session, _spec()), player, "default", RECORD, _stored(name)
            )
            for name in ("a", "b", "c")
        ]
        player_id = player.id
    assert _current_ids(database, player_id) == [assets[2].id]

    with database.session() as session:
        audit.promote(session, assets[0].id)
    assert _current_ids(database, player_id) == [assets[0].id]

    with database.session() as session:
        audit.promote(session, assets[0].id)  # promoting the current image again changes nothing
    assert _current_ids(database, player_id) == [assets[0].id]


def test_promote_refuses_failed_and_unknown_assets(database: DatabaseResource) -> None:
    with database.session() as session:
        player = _player(session)
        good = audit.record_success(
            session, audit.start_snapshot(session, _spec()), player, "default", RECORD, _stored("a")
        )
        failed = audit.record_failure(session, audit.start_snapshot(session, _spec()), player, "default", RECORD, "x")
        player_id = player.id
    with pytest.raises(InvalidInput, match="that generation failed"), database.session() as session:
        audit.promote(session, failed.id)
    with pytest.raises(InvalidInput, match="asset 99999: no such image"), database.session() as session:
        audit.promote(session, 99999)
    assert _current_ids(database, player_id) == [good.id]


def test_finish_snapshot_counts_outcomes_and_marks_only_the_newest_current(database: DatabaseResource) -> None:
    with database.session() as session:
        players = [_player(session, slug) for slug in ("ace-bailey", "cooper-flagg", "dylan-harper")]
        first = audit.start_snapshot(session, _spec())
        audit.finish_snapshot(session, first.id, skipped=3, status="succeeded")
        vector = audit.start_snapshot(session, _spec(style="vector"))
        audit.finish_snapshot(session, vector.id, skipped=0, status="succeeded")
        other_year = audit.start_snapshot(session, _spec(draft_year=2026))
        audit.finish_snapshot(session, other_year.id, skipped=0, status="succeeded")

        second = audit.start_snapshot(session, _spec())
        audit.record_success(session, second, players[0], "default", RECORD, _stored("a"))
        audit.record_success(session, second, players[1], "default", RECORD, _stored("b"))
        audit.record_failure(session, second, players[2], "default", RECORD, "refused")
        finished = audit.finish_snapshot(session, second.id, skipped=1, status="partial")
        assert finished.finished_at is not None

    with database.session() as session:
        rows = {row.id: row for row in session.scalars(select(PlayerImageSnapshot))}
    assert {row_id for row_id, row in rows.items() if row.is_current} == {second.id, vector.id, other_year.id}
    done = rows[second.id]
    assert (done.success_count, done.failure_count, done.skipped_count, done.status) == (2, 1, 1, "partial")
    assert (rows[first.id].success_count, rows[first.id].skipped_count) == (0, 3)


def test_a_run_where_every_player_failed_does_not_displace_the_current_snapshot(database: DatabaseResource) -> None:
    with database.session() as session:
        player = _player(session, "ace-bailey")
        good = audit.start_snapshot(session, _spec())
        audit.record_success(session, good, player, "default", RECORD, _stored("a"))
        audit.finish_snapshot(session, good.id, skipped=0, status="succeeded")
        bad = audit.start_snapshot(session, _spec())
        audit.record_failure(session, bad, player, "default", RECORD, "Gemini answered 503")
        audit.finish_snapshot(session, bad.id, skipped=0, status="failed")
    with database.session() as session:
        current = set(session.scalars(select(PlayerImageSnapshot.id).where(PlayerImageSnapshot.is_current.is_(True))))
    assert current == {good.id}


def test_finish_snapshot_scopes_undrafted_snapshots_together(database: DatabaseResource) -> None:
    with database.session() as session:
        drafted = audit.start_snapshot(session, _spec(draft_year=2025))
        audit.finish_snapshot(session, drafted.id, skipped=0, status="succeeded")
        ids = []
        for _ in range(2):
            snapshot = audit.start_snapshot(session, _spec("undrafted_v1", draft_year=None))
            audit.finish_snapshot(session, snapshot.id, skipped=0, status="succeeded")
            ids.append(snapshot.id)
    with database.session() as session:
        current = set(session.scalars(select(PlayerImageSnapshot.id).where(PlayerImageSnapshot.is_current.is_(True))))
    assert current == {drafted.id, ids[1]}
