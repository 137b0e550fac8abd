"""Which players a run is about: cohorts, draft years, single players; one query module for CLI, assets, sensor."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from portrait_pipeline.audit.models import Player
from portrait_pipeline.errors import InvalidInput

Cohort = Literal["current_draft", "current_nba"]
COHORTS: tuple[Cohort, ...] = ("current_draft", "current_nba")


def default_current_draft_year(today: date | None = None) -> int:
    """The next June draft: this year's until the end of June, then next year's."""
    today = today or date.today()
    return today.year if today.month <= 6 else today.year + 1


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
