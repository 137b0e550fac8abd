"""Roster import: real-world names become valid slugs, bad rows are all reported, and nothing half-imports."""

from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from portrait_pipeline.audit.models import Player
from portrait_pipeline.defs.resources import DatabaseResource
from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.roster import ImportResult, RosterRow, UndraftedByOmission, import_roster, read_roster

HEADER = "name,draft_year,position,school,nba_active,reference_image_url"


def _csv(tmp_path: Path, *lines: str, header: str = HEADER, name: str = "roster.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def _only(rows: list[RosterRow]) -> RosterRow:
    assert len(rows) == 1
    return rows[0]


def _player_count(database: DatabaseResource) -> int:
    with database.session() as session:
        return session.scalar(select(func.count()).select_from(Player)) or 0


@pytest.mark.parametrize(
    ("name", "slug", "first_name", "last_name"),
    [
        ("Luka Dončić", "luka-doncic", "Luka", "Dončić"),
        ("Tomás Ibáñez", "tomas-ibanez", "Tomás", "Ibáñez"),
        ("De'Aaron Fox", "deaaron-fox", "De'Aaron", "Fox"),
        ("Karl-Anthony Towns", "karl-anthony-towns", "Karl-Anthony", "Towns"),
        ("Jalen Brooks Jr.", "jalen-brooks-jr", "Jalen", "Brooks Jr."),
        ("Elijah Turner III", "elijah-turner-iii", "Elijah", "Turner III"),
        ("Nene", "nene", "Nene", "Nene"),
        ("  Cooper    Flagg ", "cooper-flagg", "Cooper", "Flagg"),
    ],
)
def test_read_roster_turns_real_names_into_slugs_and_name_parts(
    tmp_path: Path, name: str, slug: str, first_name: str, last_name: str
) -> None:
    row = _only(read_roster(_csv(tmp_path, f'"{name}",2025,PG,Duke,false,')))
    assert (row.slug, row.first_name, row.last_name) == (slug, first_name, last_name)
    assert row.display_name == " ".join(name.split())


def test_read_roster_keeps_every_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, "Marcus Okafor,2025,PF,Duke,true,https://example.com/okafor.jpg")
    row = _only(read_roster(path))
    assert row == RosterRow(
        line=2,
        slug="marcus-okafor",
        display_name="Marcus Okafor",
        first_name="Marcus",
        last_name="Okafor",
        position="PF",
        school="Duke",
        draft_year=2025,
        nba_active=True,
        reference_image_url="https://example.com/okafor.jpg",
    )


def test_two_players_with_one_name_get_unique_slugs_in_file_order(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "Jordan Miles,2025,PG,Gonzaga,false,",
        "Someone Else,2025,C,Duke,false,",
        "Jordan Miles,2025,F,Villanova,false,",
        "Jordan Miles,2026,G,Kansas,false,",
    )
    rows = read_roster(path)
    assert [(row.slug, row.school) for row in rows] == [
        ("jordan-miles", "Gonzaga"),
        ("someone-else", "Duke"),
        ("jordan-miles-2", "Villanova"),
        ("jordan-miles-3", "Kansas"),
    ]


def test_explicit_slug_column_wins_over_the_name(tmp_path: Path) -> None:
    header = "name,draft_year,slug"
    path = _csv(tmp_path, "Jordan Miles,2025,jordan-miles-gonzaga", "Jordan Miles,2025,", header=header)
    assert [row.slug for row in read_roster(path)] == ["jordan-miles-gonzaga", "jordan-miles"]


def test_explicit_slug_that_collides_is_refused(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "Jordan Miles,2025,",
        "Jordan Miles,2025,",
        "Other Person,2025,jordan-miles-2",
        header="name,draft_year,slug",
    )
    with pytest.raises(InvalidInput, match="jordan-miles-2 used twice"):
        read_roster(path)


def test_explicit_unsafe_slug_is_refused_with_its_row(tmp_path: Path) -> None:
    path = _csv(tmp_path, "Jordan Miles,2025,../../etc", header="name,draft_year,slug")
    with pytest.raises(InvalidInput, match=r"row 2: slug '\.\./\.\./etc'"):
        read_roster(path)


@pytest.mark.parametrize(("value", "draft_year"), [("", None), ("undrafted", None), ("2025", 2025), ("1947", 1947)])
def test_draft_year_empty_or_undrafted_means_undrafted(tmp_path: Path, value: str, draft_year: int | None) -> None:
    assert _only(read_roster(_csv(tmp_path, f"Owen Fairbanks,{value},G,Loyola Chicago,true,"))).draft_year == draft_year


@pytest.mark.parametrize(
    ("value", "nba_active"), [("true", True), ("Yes", True), ("1", True), ("false", False), ("", False), ("no", False)]
)
def test_nba_active_accepts_common_booleans(tmp_path: Path, value: str, nba_active: bool) -> None:
    assert _only(read_roster(_csv(tmp_path, f"Marcus Bell,2020,PG,Syracuse,{value},"))).nba_active is nba_active


def test_minimal_roster_needs_only_names_and_warns_that_all_are_undrafted(tmp_path: Path) -> None:
    with pytest.warns(UndraftedByOmission, match="no draft_year column: every player in it is imported as undrafted"):
        row = _only(read_roster(_csv(tmp_path, "Cooper Flagg", header="name")))
    assert (row.slug, row.draft_year, row.nba_active, row.position, row.school) == (
        "cooper-flagg",
        None,
        False,
        None,
        None,
    )


def test_utf8_bom_from_spreadsheets_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffname,draft_year\nNikola Radović,2025\n".encode())
    assert _only(read_roster(path)).slug == "nikola-radovic"


def test_every_bad_row_is_reported_with_its_row_number_in_one_error(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "Good Player,2025,PG,Duke,false,",
        ",2025,PG,Duke,false,",
        "Bad Year,20x5,SG,Kentucky,false,",
        "Ftp Reference,2025,C,Baylor,false,ftp://example.com/photo.jpg",
        "File Reference,2025,C,Baylor,false,file:///etc/passwd",
        "Maybe Active,2025,F,Purdue,maybe,",
        "Another Good,2026,G,Kansas,false,https://example.com/photo.jpg",
    )
    with pytest.raises(InvalidInput) as caught:
        read_roster(path)
    message = str(caught.value)
    assert message.startswith("roster not imported, nothing written:")
    assert "roster.csv row 3: name is empty" in message
    assert "roster.csv row 4: draft_year '20x5'" in message
    assert "roster.csv row 5: reference_image_url 'ftp://example.com/photo.jpg'" in message
    assert "roster.csv row 6: reference_image_url 'file:///etc/passwd'" in message
    assert "roster.csv row 7: nba_active 'maybe'" in message
    assert "row 2" not in message
    assert "row 8" not in message
    assert message.count(" row ") == 5


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "https://",
        "example.com/a.jpg",
        "//example.com/a.jpg",
    ],
)
def test_reference_url_must_be_http_with_a_host(tmp_path: Path, url: str) -> None:
    with pytest.raises(InvalidInput, match="only http"):
        read_roster(_csv(tmp_path, f"Cooper Flagg,2025,F,Duke,false,{url}"))


@pytest.mark.parametrize("year", ["20x5", "25", "202", "20255", "1900", "2101", "2025.0", "-2025"])
def test_draft_year_must_be_a_plausible_four_digit_year(tmp_path: Path, year: str) -> None:
    with pytest.raises(InvalidInput, match="row 2: draft_year"):
        read_roster(_csv(tmp_path, f"Cooper Flagg,{year},F,Duke,false,"))


@pytest.mark.parametrize(("column", "value"), [("position", "P" * 41), ("school", "S" * 201)])
def test_overlong_fields_are_refused(tmp_path: Path, column: str, value: str) -> None:
    with pytest.raises(InvalidInput, match=f"row 2: {column} has control characters or is over"):
        read_roster(_csv(tmp_path, f"Cooper Flagg,{value}", header=f"name,{column}"))


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        read_roster(tmp_path / "nope.csv")


def test_file_without_name_column_is_reported(tmp_path: Path) -> None:
    path = _csv(tmp_path, "Cooper Flagg,2025", header="player,draft_year")
    with pytest.raises(InvalidInput, match=r"no `name` column \(found: player, draft_year\)"):
        read_roster(path)


def test_unknown_columns_are_reported(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"unknown column\(s\) height"):
        read_roster(_csv(tmp_path, "Cooper Flagg,2025,6-9", header="name,draft_year,height"))


def test_non_utf8_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("name\nTomás Ibáñez\n".encode("latin-1"))
    with pytest.raises(InvalidInput, match="cannot be read as UTF-8"):
        read_roster(path)


def test_bad_row_after_a_blank_line_is_reported_at_its_real_line(tmp_path: Path) -> None:
    path = _csv(tmp_path, "Good Player,2025,PG,Duke,false,", "", "Bad Year,20x5,SG,Kentucky,false,")
    with pytest.raises(InvalidInput, match=r"roster\.csv row 4: draft_year"):
        read_roster(path)


def test_quoted_value_with_a_line_break_is_refused_not_glued(tmp_path: Path) -> None:
    path = _csv(tmp_path, 'Cooper Flagg,"Real\nMadrid"', header="name,school")
    with pytest.raises(InvalidInput, match="row 2: school has control characters"):
        read_roster(path)


def test_demo_roster_parses(demo_roster: Path) -> None:
    rows = read_roster(demo_roster)
    years = Counter(row.draft_year for row in rows)
    assert 35 <= len(rows) <= 45
    assert years[2025] >= 15
    assert years[2026] >= 10
    assert 1 <= sum(row.nba_active for row in rows) <= 10
    assert len({row.slug for row in rows}) == len(rows)
    assert {"jordan-miles", "jordan-miles-2", "tomas-ibanez", "deandre-whitfield"} <= {row.slug for row in rows}


# --- import into the database (SQLite and PostgreSQL) ----------------------------------------------------------


def test_import_then_reimport_is_idempotent(tmp_path: Path, database: DatabaseResource) -> None:
    path = _csv(
        tmp_path,
        "Luka Dončić,2018,PG,Real Madrid,true,",
        "Jordan Miles,2025,PG,Gonzaga,false,",
        "Jordan Miles,2025,F,Villanova,false,",
        "Owen Fairbanks,,G,Loyola Chicago,true,",
    )
    rows = read_roster(path)
    with database.session() as session:
        first = import_roster(session, rows)
    assert first == ImportResult(created=4, updated=0, draft_years=[2018, 2025, None])

    with database.session() as session:
        again = import_roster(session, read_roster(path))
    assert (again.created, again.updated) == (0, 0)
    assert _player_count(database) == 4

    with database.session() as session:
        stored = {player.slug: player for player in session.scalars(select(Player))}
    assert stored["luka-doncic"].display_name == "Luka Dončić"
    assert stored["jordan-miles-2"].school == "Villanova"
    assert stored["owen-fairbanks"].draft_year is None
    assert stored["owen-fairbanks"].nba_active is True


def test_reimport_counts_only_players_whose_fields_changed(tmp_path: Path, database: DatabaseResource) -> None:
    lines = [
        "Cooper Flagg,2025,F,Duke,false,",
        "Ace Bailey,2025,F,Rutgers,false,",
        "Dylan Harper,2025,G,Rutgers,false,",
    ]
    with database.session() as session:
        import_roster(session, read_roster(_csv(tmp_path, *lines)))

    changed = [
        lines[0].replace("false", "true"),
        lines[1],
        lines[2].replace(",G,", ",SG,"),
        "VJ Edgecombe,2025,G,Baylor,false,",
    ]
    with database.session() as session:
        result = import_roster(session, read_roster(_csv(tmp_path, *changed, name="changed.csv")))
    assert (result.created, result.updated) == (1, 2)

    with database.session() as session:
        stored = {player.slug: player for player in session.scalars(select(Player))}
    assert stored["cooper-flagg"].nba_active is True
    assert stored["dylan-harper"].position == "SG"
    assert len(stored) == 4


def test_file_with_one_bad_row_writes_nothing(tmp_path: Path, database: DatabaseResource) -> None:
    with database.session() as session:
        import_roster(session, read_roster(_csv(tmp_path, "Cooper Flagg,2025,F,Duke,false,")))
    before = _player_count(database)

    path = _csv(
        tmp_path,
        "Ace Bailey,2025,F,Rutgers,false,",
        "Dylan Harper,20x5,G,Rutgers,false,",
        "Cooper Flagg,2025,F,Duke,true,",
        name="bad.csv",
    )
    with pytest.raises(InvalidInput, match=r"bad\.csv row 3: draft_year"), database.session() as session:
        import_roster(session, read_roster(path))

    assert _player_count(database) == before == 1
    with database.session() as session:
        assert session.scalars(select(Player.nba_active)).one() is False


def test_import_of_the_demo_roster(demo_roster: Path, database: DatabaseResource) -> None:
    rows = read_roster(demo_roster)
    with database.session() as session:
        result = import_roster(session, rows)
    assert result.created == len(rows) == _player_count(database)
    assert 2025 in result.draft_years
    assert 2026 in result.draft_years


def test_a_roster_with_a_draft_year_column_gives_no_warning(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    read_roster(_csv(tmp_path, "Cooper Flagg,", header="name,draft_year"))
    assert not [w for w in recwarn if issubclass(w.category, UndraftedByOmission)]
