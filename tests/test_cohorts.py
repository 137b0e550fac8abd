"""Which players a run is about: the seed's selectors, draft-year partitions, and who already has an image."""

from collections.abc import Iterator
from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy.orm import Session

from portrait_pipeline.audit import records as audit
from portrait_pipeline.audit.models import Player
from portrait_pipeline.audit.queries import (
    draft_year_key,
    parse_draft_year_key,
    players_in_draft_year,
    players_with_current_image,
)
from portrait_pipeline.cohorts import Selection, default_current_draft_year, select_players
from portrait_pipeline.defs.resources import DatabaseResource
from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.storage import StoredObject

CURRENT_DRAFT_YEAR = 2025


Roster = dict[str, int]  # the ids of the players inserted for a test, by slug

# slug, draft_year, nba_active
PLAYERS: list[tuple[str, int | None, bool]] = [
    ("cooper-flagg", 2025, False),
    ("ace-bailey", 2025, False),
    ("aj-dybantsa", 2026, False),
    ("luka-doncic", 2018, True),
    ("owen-fairbanks", None, True),
    ("walk-on", None, False),
]


@pytest.fixture
def session(database: DatabaseResource) -> Iterator[Session]:
    with database.session() as db:
        yield db


@pytest.fixture
def roster(session: Session) -> Roster:
    players = [
        Player(
            slug=slug,
            display_name=slug.replace("-", " ").title(),
            first_name=slug.split("-")[0].title(),
            last_name=slug.split("-")[-1].title(),
            draft_year=draft_year,
            nba_active=nba_active,
        )
        for slug, draft_year, nba_active in PLAYERS
    ]
    session.add_all(players)
    session.flush()
    return {player.slug: player.id for player in players}


def _slugs(players: list[Player]) -> list[str]:
    return [player.slug for player in players]


@pytest.mark.parametrize(
    ("today", "draft_year"),
    [
        (date(2025, 1, 1), 2025),
        (date(2025, 6, 1), 2025),
        (date(2025, 6, 30), 2025),
        (date(2025, 7, 1), 2026),
        (date(2025, 12, 31), 2026),
    ],
)
def test_current_draft_year_is_this_junes_until_july(today: date, draft_year: int) -> None:
    assert default_current_draft_year(today) == draft_year


def test_current_draft_year_defaults_to_today() -> None:
    assert default_current_draft_year() in (date.today().year, date.today().year + 1)


@pytest.mark.parametrize(("draft_year", "key"), [(2025, "2025"), (1998, "1998"), (None, "undrafted")])
def test_draft_year_key_round_trips(draft_year: int | None, key: str) -> None:
    assert draft_year_key(draft_year) == key
    assert parse_draft_year_key(key) == draft_year


@pytest.mark.parametrize("key", ["", "none", "Undrafted", "20x5", "-2025", "2025 "])
def test_parse_draft_year_key_refuses_other_keys(key: str) -> None:
    with pytest.raises(InvalidInput, match="expected a year like 2025 or 'undrafted'"):
        parse_draft_year_key(key)


def test_parse_draft_year_key_refuses_superscript_digits() -> None:
    with pytest.raises(InvalidInput):
        parse_draft_year_key("2025²")


@pytest.mark.parametrize(
    ("selection", "label"),
    [
        (Selection(cohort="current_draft"), "current_draft_2025"),
        (Selection(cohort="current_nba"), "current_nba"),
        (Selection(draft_year=2026), "draft_2026"),
        (Selection(player_id=1), "player"),
        (Selection(player_slug="cooper-flagg"), "player"),
        (Selection(all_players=True), "all"),
    ],
)
def test_selection_label_names_the_selector(selection: Selection, label: str) -> None:
    assert selection.label(CURRENT_DRAFT_YEAR) == label


def test_select_by_player_id(session: Session, roster: Roster) -> None:
    players = select_players(session, Selection(player_id=roster["luka-doncic"]), CURRENT_DRAFT_YEAR)
    assert _slugs(players) == ["luka-doncic"]


def test_select_by_player_slug(session: Session, roster: Roster) -> None:
    assert _slugs(select_players(session, Selection(player_slug="ace-bailey"), CURRENT_DRAFT_YEAR)) == ["ace-bailey"]


@pytest.mark.parametrize(
    ("selection", "slugs"),
    [
        (Selection(cohort="current_draft"), ["cooper-flagg", "ace-bailey"]),
        (Selection(cohort="current_nba"), ["luka-doncic", "owen-fairbanks"]),
        (Selection(draft_year=2026), ["aj-dybantsa"]),
        (Selection(draft_year=2018), ["luka-doncic"]),
        (Selection(draft_year=1990), []),
        (Selection(all_players=True), [slug for slug, _, _ in PLAYERS]),
    ],
)
def test_select_by_cohort_draft_year_or_all(
    session: Session, roster: Roster, selection: Selection, slugs: list[str]
) -> None:
    assert _slugs(select_players(session, selection, CURRENT_DRAFT_YEAR)) == slugs


def test_current_draft_cohort_follows_the_current_draft_year(session: Session, roster: Roster) -> None:
    assert _slugs(select_players(session, Selection(cohort="current_draft"), 2026)) == ["aj-dybantsa"]


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (Selection(player_id=99999), "--player-id 99999: no such player"),
        (Selection(player_slug="nobody-here"), "--player-slug nobody-here: no such player"),
    ],
)
def test_unknown_single_player_names_the_flag(
    session: Session, roster: Roster, selection: Selection, message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        select_players(session, selection, CURRENT_DRAFT_YEAR)
    assert str(caught.value) == message


def test_empty_cohort_is_not_an_error(session: Session) -> None:
    assert select_players(session, Selection(cohort="current_draft"), CURRENT_DRAFT_YEAR) == []


@pytest.mark.parametrize(
    ("key", "slugs"),
    [
        ("2025", ["cooper-flagg", "ace-bailey"]),
        ("2026", ["aj-dybantsa"]),
        ("undrafted", ["owen-fairbanks", "walk-on"]),
        ("2030", []),
    ],
)
def test_players_in_draft_year(session: Session, roster: Roster, key: str, slugs: list[str]) -> None:
    assert _slugs(players_in_draft_year(session, key)) == slugs


def test_players_in_draft_year_narrowed_to_ids(session: Session, roster: Roster) -> None:
    ids = [roster["ace-bailey"], roster["luka-doncic"], roster["walk-on"]]
    assert _slugs(players_in_draft_year(session, "2025", ids)) == ["ace-bailey"]
    assert _slugs(players_in_draft_year(session, "undrafted", ids)) == ["walk-on"]
    assert players_in_draft_year(session, "2026", ids) == []


def test_players_with_current_image(session: Session, roster: Roster) -> None:
    snapshot = audit.start_snapshot(
        session,
        audit.SnapshotSpec(
            run_key="draft_2025_v1",
            style="default",
            cohort="current_draft",
            draft_year=2025,
            population_size=2,
            system_prompt="system",
            system_prompt_version="v2.1",
            image_size="1K",
            model="offline-renderer",
            estimated_cost_usd=Decimal("0"),
        ),
    )
    record = audit.GenerationRecord(
        user_prompt="prompt", model="offline-renderer", system_prompt_version="v2.1", generation_time_sec=0.1
    )
    flagg = session.get_one(Player, roster["cooper-flagg"])
    bailey = session.get_one(Player, roster["ace-bailey"])
    stored = StoredObject(bucket=None, key="players/x.png", public_url="file:///x.png", sha256="0" * 64, size=5)
    audit.record_success(session, snapshot, flagg, "default", record, stored)
    audit.record_failure(session, snapshot, bailey, "default", record, "model refused")

    everyone = list(roster.values())
    assert players_with_current_image(session, "default", everyone) == {flagg.id}
    assert players_with_current_image(session, "vector", everyone) == set()
    assert players_with_current_image(session, "default", [bailey.id]) == set()
    assert players_with_current_image(session, "default", []) == set()
