"""Serving URLs in the seed's order, promotion and rollback (also racing on PostgreSQL), and a player's history."""

import threading
from collections.abc import Callable
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from portrait_pipeline import naming
from portrait_pipeline.audit import records as audit
from portrait_pipeline.audit import serving as image_assets_service
from portrait_pipeline.audit.db import session_scope
from portrait_pipeline.audit.models import Player, PlayerImageAsset
from portrait_pipeline.audit.serving import history, promote_asset, resolve_photo_url
from portrait_pipeline.defs.resources import DatabaseResource
from portrait_pipeline.errors import InvalidInput, StorageError
from portrait_pipeline.generation.offline import render_portrait
from portrait_pipeline.storage import LocalImageStorage, sha256_hex

PLAYER_ID, SLUG, NAME = 1661, "cooper-flagg", "Cooper Flagg"
RACE_ROUNDS = 20
# SQLSTATEs PostgreSQL uses to abort one side of a conflict cleanly: serialization failure, deadlock.
SERIALIZATION_STATES = {"40001", "40P01"}


@pytest.fixture
def player(database: DatabaseResource) -> Player:
    with database.session() as db:
        row = Player(
            id=PLAYER_ID, slug=SLUG, display_name=NAME, first_name="Cooper", last_name="Flagg", draft_year=2025
        )
        db.add(row)
    return row


def generate(
    db: Session,
    storage: LocalImageStorage,
    seed: str,
    style: str = "default",
    *,
    run_key: str = "draft_2025_v1",
    likeness: str | None = None,
) -> PlayerImageAsset:
    """One successful generation as the engine leaves it: history object, serving alias, audit row made current."""
    player = db.get_one(Player, PLAYER_ID)
    data = render_portrait(seed, "default", 400, 500)
    stored = storage.put(naming.history_key(player.id, player.slug, style, sha256_hex(data)), data, immutable=True)
    storage.put(naming.current_key(player.id, player.slug, style), data, immutable=False)
    snapshot = audit.start_snapshot(db, _spec(run_key, style))
    record = audit.GenerationRecord(f"prompt {seed}", "offline-renderer", "v2.1", 0.1, likeness, width=400, height=500)
    asset = audit.record_success(db, snapshot, player, style, record, stored)
    audit.finish_snapshot(db, snapshot.id, skipped=0, status="succeeded")
    return asset


def fail(db: Session, style: str = "default", *, run_key: str = "draft_2025_v1") -> PlayerImageAsset:
    snapshot = audit.start_snapshot(db, _spec(run_key, style))
    record = audit.GenerationRecord("prompt", "offline-renderer", "v2.1", 0.1)
    asset = audit.record_failure(db, snapshot, db.get_one(Player, PLAYER_ID), style, record, "SAFETY: blocked")
    audit.finish_snapshot(db, snapshot.id, skipped=0, status="partial")
    return asset


def _spec(run_key: str, style: str) -> audit.SnapshotSpec:
    return audit.SnapshotSpec(
        run_key=run_key,
        style=style,
        cohort="draft_2025",
        draft_year=2025,
        population_size=1,
        system_prompt="You create player portraits.",
        system_prompt_version="v2.1",
        image_size="512",
        model="offline-renderer",
        estimated_cost_usd=Decimal("0"),
    )


def place(storage: LocalImageStorage, key: str) -> None:
    """A file left by the legacy app or copied by hand: it has no audit row."""
    storage.put(key, b"image", immutable=False)


def current_rows(db: Session, style: str = "default") -> list[PlayerImageAsset]:
    return list(
        db.scalars(
            select(PlayerImageAsset).where(
                PlayerImageAsset.player_id == PLAYER_ID,
                PlayerImageAsset.style == style,
                PlayerImageAsset.is_current.is_(True),
            )
        )
    )


def served(storage: LocalImageStorage, style: str = "default") -> str:
    """The sha256 of what the app serves under the seed's name."""
    return sha256_hex(storage.get(naming.current_key(PLAYER_ID, SLUG, style)))


# --- resolve_photo_url: the seed's lookup order ----------------------------------------------------------------

NEW_COMIC = naming.current_key(PLAYER_ID, SLUG, "comic")
LEGACY_COMIC = naming.legacy_key(PLAYER_ID, "comic")
NEW_DEFAULT = naming.current_key(PLAYER_ID, SLUG, "default")
LEGACY_DEFAULT = naming.legacy_key(PLAYER_ID, "default")


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        (["db comic", NEW_COMIC, LEGACY_COMIC], "db comic"),
        ([NEW_COMIC, LEGACY_COMIC, NEW_DEFAULT], NEW_COMIC),
        ([LEGACY_COMIC, NEW_DEFAULT], LEGACY_COMIC),
        (["db default", LEGACY_COMIC], LEGACY_COMIC),
        ([NEW_DEFAULT, LEGACY_DEFAULT], NEW_DEFAULT),
        ([LEGACY_DEFAULT], LEGACY_DEFAULT),
        (["failed comic"], "placeholder"),
        ([], "placeholder"),
    ],
    ids=[
        "prefers_current_db_image_over_files",
        "returns_new_format_when_no_db_image",
        "returns_legacy_format_when_no_new_format",
        "requested_style_file_beats_default_db_image",
        "falls_back_to_default_style",
        "falls_back_to_legacy_default",
        "ignores_failed_generations",
        "returns_placeholder_when_nothing_exists",
    ],
)
def test_resolve_photo_url_follows_the_seed_order(
    database: DatabaseResource, player: Player, local_storage: LocalImageStorage, present: list[str], expected: str
) -> None:
    generated: dict[str, str] = {}
    with database.session() as db:
        for item in present:
            if item.startswith("db "):
                style = item.removeprefix("db ")
                asset = generate(db, local_storage, f"seed-{style}", style)
                generated[item] = asset.public_url or ""
            elif item.startswith("failed "):
                fail(db, item.removeprefix("failed "))
            else:
                place(local_storage, item)
        url = resolve_photo_url(db, local_storage, player, "comic")
    if expected == "placeholder":
        assert url == naming.placeholder_url(NAME)
    elif expected in generated:
        assert url == generated[expected] and "/portraits/comic/" in url
    else:
        assert url == local_storage.public_url(expected)


# --- promotion and rollback ------------------------------------------------------------------------------------


def test_promote_rolls_back_to_an_earlier_generation_and_serves_its_bytes(
    database: DatabaseResource, player: Player, local_storage: LocalImageStorage
) -> None:
    with database.session() as db:
        first = generate(db, local_storage, "first")
        second = generate(db, local_storage, "second")
    assert served(local_storage) == second.content_sha256

    with database.session() as db:
        promoted = promote_asset(db, local_storage, first.id)
        assert promoted.id == first.id and promoted.is_current
        assert [row.id for row in current_rows(db)] == [first.id]
        assert resolve_photo_url(db, local_storage, player) == first.public_url
    assert served(local_storage) == first.content_sha256

    with database.session() as db:
        promote_asset(db, local_storage, second.id)
        assert [row.id for row in current_rows(db)] == [second.id]
    assert served(local_storage) == second.content_sha256


def test_promote_leaves_other_styles_alone(
    database: DatabaseResource, player: Player, local_storage: LocalImageStorage
) -> None:
    with database.session() as db:
        old = generate(db, local_storage, "old")
        generate(db, local_storage, "new")
        comic = generate(db, local_storage, "comic", "comic")
        promote_asset(db, local_storage, old.id)
        assert [row.id for row in current_rows(db, "comic")] == [comic.id]
    assert served(local_storage, "comic") == comic.content_sha256


@pytest.mark.parametrize(
    ("target", "message"),
    [("missing", "no such image"), ("failed", "there is no image to promote")],
)
def test_promote_refuses_what_cannot_be_served_and_changes_nothing(
    database: DatabaseResource, player: Player, local_storage: LocalImageStorage, target: str, message: str
) -> None:
    with database.session() as db:
        current = generate(db, local_storage, "current")
        failed = fail(db)
    asset_id = failed.id if target == "failed" else 9999
    with database.session() as db, pytest.raises(InvalidInput, match=message):
        promote_asset(db, local_storage, asset_id)
    with database.session() as db:
        assert [row.id for row in current_rows(db)] == [current.id]
    assert served(local_storage) == current.content_sha256


def test_promote_refuses_bytes_that_no_longer_match_the_audit(
    database: DatabaseResource, player: Player, local_storage: LocalImageStorage
) -> None:
    with database.session() as db:
        old = generate(db, local_storage, "old")
        new = generate(db, local_storage, "new")
    local_storage.path_for(old.s3_key or "").write_bytes(render_portrait("tampered", "default", 400, 500))
    with database.session() as db, pytest.raises(StorageError, match="differ from the audited sha256"):
        promote_asset(db, local_storage, old.id)
    with database.session() as db:
        assert [row.id for row in current_rows(db)] == [new.id]
    assert served(local_storage) == new.content_sha256


def test_a_promotion_that_does_not_commit_puts_the_alias_back(
    database: DatabaseResource, player: Player, local_storage: LocalImageStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    with database.session() as db:
        old = generate(db, local_storage, "old")
        new = generate(db, local_storage, "new")

    def lost_connection(db: Session, asset_id: int, publish: Callable[[], object] | None = None) -> PlayerImageAsset:
        assert publish is not None
        publish()  # the alias is written, then the commit never happens
        assert served(local_storage) == old.content_sha256
        raise ConnectionError("server closed the connection")

    monkeypatch.setattr(image_assets_service.audit, "promote", lost_connection)
    with database.session() as db, pytest.raises(ConnectionError):
        promote_asset(db, local_storage, old.id)
    with database.session() as db:
        assert [row.id for row in current_rows(db)] == [new.id]
    assert served(local_storage) == new.content_sha256


Promote = Callable[[Session, LocalImageStorage, int], PlayerImageAsset]


def _audit_promote(db: Session, _storage: LocalImageStorage, asset_id: int) -> PlayerImageAsset:
    return audit.promote(db, asset_id)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("promote", [_audit_promote, promote_asset], ids=["audit.promote", "promote_asset"])
def test_racing_promotions_leave_exactly_one_current_image(
    database: DatabaseResource, player: Player, local_storage: LocalImageStorage, promote: Promote
) -> None:
    with database.session() as db:
        a, b, c = (generate(db, local_storage, seed) for seed in ("a", "b", "c"))
    engine = database.engine
    errors: list[BaseException] = []
    winners: list[int] = []

    def contender(asset_id: int, barrier: threading.Barrier) -> None:
        try:
            with session_scope(engine) as db:
                barrier.wait(timeout=10)
                promote(db, local_storage, asset_id)
        except BaseException as exc:
            errors.append(exc)

    for _ in range(RACE_ROUNDS):
        with session_scope(engine) as db:
            promote_asset(db, local_storage, c.id)  # both contenders start from a third image
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=contender, args=(asset.id, barrier)) for asset in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads), "a promotion hung"
        with session_scope(engine) as db:
            rows = current_rows(db)
            total = db.scalar(select(func.count()).select_from(PlayerImageAsset).where(PlayerImageAsset.is_current))
        assert len(rows) == 1 and rows[0].id in (a.id, b.id) and total == 1
        winners.append(rows[0].id)
        if promote is promote_asset:
            assert served(local_storage) == rows[0].content_sha256, "the alias serves an image that is not current"

    unexpected = [exc for exc in errors if not _is_serialization_failure(exc)]
    assert unexpected == []


def _is_serialization_failure(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in SERIALIZATION_STATES


# --- history ---------------------------------------------------------------------------------------------------


def test_history_lists_every_generation_oldest_first(
    database: DatabaseResource, player: Player, local_storage: LocalImageStorage
) -> None:
    with database.session() as db:
        first = generate(db, local_storage, "first", run_key="draft_2025_v1")
        fail(db, "comic", run_key="comic_try")
        second = generate(db, local_storage, "second", run_key="draft_2025_v1", likeness="Short curly hair.")
        promote_asset(db, local_storage, first.id)
        entries = history(db, PLAYER_ID)
    assert [(e.asset_id, e.style, e.run_key, e.snapshot_version, e.status, e.is_current) for e in entries] == [
        (first.id, "default", "draft_2025_v1", 1, "succeeded", True),
        (entries[1].asset_id, "comic", "comic_try", 1, "failed", False),
        (second.id, "default", "draft_2025_v1", 2, "succeeded", False),
    ]
    assert [e.used_likeness for e in entries] == [False, False, True]
    assert [e.image_url for e in entries] == [first.public_url, None, second.public_url]
    assert entries[1].error_message == "SAFETY: blocked"
    assert {(e.model, e.prompt_version) for e in entries} == {("offline-renderer", "v2.1")}
    assert entries[0].created_at <= entries[1].created_at <= entries[2].created_at


def test_history_of_an_unknown_player_is_an_error(database: DatabaseResource) -> None:
    with database.session() as db, pytest.raises(InvalidInput, match="player 42: no such player"):
        history(db, 42)
