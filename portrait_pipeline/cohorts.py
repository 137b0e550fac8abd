"""Which players a run is about: cohorts, draft years, single players; one query module for CLI, assets, sensor."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from portrait_pipeline.audit.models import Player, PlayerImageAsset
from portrait_pipeline.errors import InvalidInput

UNDRAFTED = "undrafted"
Cohort = Literal["current_draft", "current_nba"]
COHORTS: tuple[Cohort, ...] = ("current_draft", "current_nba")


def default_current_draft_year(today: date | None = None) -> int:
    """The next June draft: this year's until the end of June, then next year's."""
    today = today or date.today()
    return today.year if today.month <= 6 else today.year + 1


def draft_year_key(draft_year: int | None) -> str:
    return UNDRAFTED if draft_year is None else str(draft_year)


def parse_draft_year_key(key: str) -> int | None:
    if key == UNDRAFTED:
        return None
    if not re.fullmatch(r"[0-9]{4}", key):
        raise InvalidInput(f"draft year partition {key!r}: expected a year like 2025 or {UNDRAFTED!r}")
    return int(key)


@dataclass(frozen=True)
class Selection:
    """Exactly one of the seed's selectors."""

    player_id: int | None = None
    player_slug: str | None = None
    cohort: Cohort | None = None
    draft_year: int | None = None
    all_players: bool = False

    def label(self, current_draft_year: int) -> str:
        if self.cohort == "current_draft":
            return f"current_draft_{current_draft_year}"
        if self.cohort:
            return self.cohort
        if self.draft_year is not None:
            return f"draft_{self.draft_year}"
        if self.player_id is not None or self.player_slug is not None:
            return "player"
        return "all"


def _query(selection: Selection, current_draft_year: int) -> Select[Player]:
    query = select(Player).order_by(Player.id)
    if selection.player_id is not None:
        return query.where(Player.id == selection.player_id)
    if selection.player_slug is not None:
        return query.where(Player.slug == selection.player_slug)
    if selection.cohort == "current_draft":
        return query.where(Player.draft_year == current_draft_year)
    if selection.cohort == "current_nba":
        return query.where(Player.nba_active.is_(True))
    if selection.draft_year is not None:
        return query.where(Player.draft_year == selection.draft_year)
    return query


def select_players(session: Session, selection: Selection, current_draft_year: int) -> list[Player]:
    """Players of the selection; a single-player selector that matches nobody is an error."""
    players = list(session.scalars(_query(selection, current_draft_year)))
    if not players and selection.player_id is not None:
        raise InvalidInput(f"--player-id {selection.player_id}: no such player")
    if not players and selection.player_slug is not None:
        raise InvalidInput(f"--player-slug {selection.player_slug}: no such player")
    return players


def players_in_draft_year(session: Session, key: str, player_ids: Sequence[int] = ()) -> list[Player]:
    """The players of one draft-year partition, optionally narrowed to some ids."""
    draft_year = parse_draft_year_key(key)
    column = Player.draft_year
    query = select(Player).where(column.is_(None) if draft_year is None else column == draft_year)
    if player_ids:
        query = query.where(Player.id.in_(player_ids))
    return list(session.scalars(query.order_by(Player.id)))


def players_with_current_image(session: Session, style: str, player_ids: Sequence[int]) -> set[int]:
    query = select(PlayerImageAsset.player_id).where(
        PlayerImageAsset.style == style,
        PlayerImageAsset.is_current.is_(True),
        PlayerImageAsset.player_id.in_(player_ids),
    )
    return set(session.scalars(query))


def current_styles(session: Session, player_ids: Sequence[int]) -> dict[int, set[str]]:
    """Player id → styles with a current image, in one query."""
    rows = session.execute(
        select(PlayerImageAsset.player_id, PlayerImageAsset.style).where(
            PlayerImageAsset.is_current.is_(True), PlayerImageAsset.player_id.in_(player_ids)
        )
    )
    styles: dict[int, set[str]] = {}
    for player_id, style in rows:
        styles.setdefault(player_id, set()).add(style)
    return styles
