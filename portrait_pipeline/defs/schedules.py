"""Schedules: a weekly sweep of the current draft class in draft season, and a monthly one of active NBA players."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

import dagster as dg
from sqlalchemy.orm import Session

from portrait_pipeline.audit.queries import draft_year_key
from portrait_pipeline.cohorts import Selection, select_players
from portrait_pipeline.defs.assets import player_portraits
from portrait_pipeline.defs.config import PortraitRunConfig
from portrait_pipeline.defs.partitions import draft_years, portrait_partition_key
from portrait_pipeline.defs.resources import DatabaseResource, PortraitSettings
from portrait_pipeline.naming import partition_label

# Mondays 06:00 UTC, May to July: the lottery, the combine, withdrawals and the June draft keep changing the class.
DRAFT_CLASS_BACKFILL_CRON = "0 6 * 5-7 1"
# 06:00 UTC on the first of each month: NBA rosters move slowly outside the draft.
NBA_REFRESH_CRON = "0 6 1 * *"


def players_by_draft_year(session: Session, selection: Selection, current_draft_year: int) -> dict[str, list[int]]:
    """The selection's player ids by draft-year partition key, through the CLI's own cohort query."""
    grouped: dict[str, list[int]] = defaultdict(list)
    for player in select_players(session, selection, current_draft_year):
        grouped[draft_year_key(player.draft_year)].append(player.id)
    return dict(sorted(grouped.items()))


def ensure_draft_years(instance: dg.DagsterInstance, keys: Sequence[str]) -> None:
    """Schedules cannot return dynamic partition requests as sensors do, so add the partitions before the runs."""
    known = set(draft_years.get_partition_keys(dynamic_partitions_store=instance))
    missing = [key for key in keys if key not in known]
    if missing:
        # The same request a sensor would return, applied here as the daemon applies those.
        request = draft_years.build_add_request(missing)
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)


def tick_run_request(
    schedule_name: str, tick: datetime, draft_year: str, style: str, config: PortraitRunConfig
) -> dg.RunRequest:
    """One run per partition per tick: the tick's time in the run key lets the next tick run it again."""
    return dg.RunRequest(
        run_key=f"{schedule_name}:{partition_label(draft_year, style)}:{tick.isoformat()}",
        partition_key=portrait_partition_key(draft_year, style),
        run_config=config.run_config(),
        tags={"portrait/launched_by": schedule_name},
    )


@dg.schedule(
    target=player_portraits,
    cron_schedule=DRAFT_CLASS_BACKFILL_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Weekly in draft season: missing portraits of the current draft class, in every automated style.",
)
def draft_class_backfill(
    context: dg.ScheduleEvaluationContext, database: DatabaseResource, settings: PortraitSettings
) -> list[dg.RunRequest] | dg.SkipReason:
    """Catch the class members the sensor missed (failed runs, images deleted) while the class still changes."""
    year = settings.current_draft_year
    selection = Selection(cohort="current_draft")
    with database.session() as session:
        by_year = players_by_draft_year(session, selection, year)
    if not by_year:
        return dg.SkipReason(f"no players in the {year} draft class: import the roster first")
    ensure_draft_years(context.instance, list(by_year))
    config = PortraitRunConfig(missing_only=True, cohort=selection.label(year), lane=settings.schedule_lane)
    return [
        tick_run_request("draft_class_backfill", context.scheduled_execution_time, key, style, config)
        for key in by_year
        for style in settings.automated_styles()
    ]


@dg.schedule(
    target=player_portraits,
    cron_schedule=NBA_REFRESH_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Monthly: missing portraits of active NBA players, one run per draft year and automated style.",
)
def nba_refresh(
    context: dg.ScheduleEvaluationContext, database: DatabaseResource, settings: PortraitSettings
) -> list[dg.RunRequest] | dg.SkipReason:
    """Keep active players covered; `player_ids` keeps retired players of the same draft year out of the run."""
    selection = Selection(cohort="current_nba")
    with database.session() as session:
        by_year = players_by_draft_year(session, selection, settings.current_draft_year)
    if not by_year:
        return dg.SkipReason("no players are marked nba_active")
    ensure_draft_years(context.instance, list(by_year))
    label = selection.label(settings.current_draft_year)
    return [
        tick_run_request(
            "nba_refresh",
            context.scheduled_execution_time,
            key,
            style,
            PortraitRunConfig(missing_only=True, player_ids=ids, cohort=label, lane=settings.schedule_lane),
        )
        for key, ids in by_year.items()
        for style in settings.automated_styles()
    ]
