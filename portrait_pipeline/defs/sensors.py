"""The sensors: new prospects (player changes since a cursor, portraits where some are missing) and the batch
collector (finished Batch API jobs whose run is gone)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import dagster as dg
from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.orm import Session

from portrait_pipeline.audit import batch_jobs
from portrait_pipeline.audit.models import BatchJobRecord, Player, PlayerImageAsset, as_utc
from portrait_pipeline.audit.queries import draft_year_key, in_draft_years, is_current, is_pending_review
from portrait_pipeline.defs.assets import player_portraits
from portrait_pipeline.defs.config import PortraitRunConfig
from portrait_pipeline.defs.partitions import draft_years, portrait_partition_key, split_partition_key
from portrait_pipeline.defs.resources import DatabaseResource, GeminiResource, PortraitSettings
from portrait_pipeline.defs.runs import UNFINISHED, fail_runs_of_dead_workers
from portrait_pipeline.errors import GenerationFailed, InvalidInput
from portrait_pipeline.generation.gemini import poll_batch
from portrait_pipeline.model_registry import Lane
from portrait_pipeline.naming import partition_label
from portrait_pipeline.styles import Style

SENSOR_RUN_KEY_PREFIX = "new_prospects"


@dataclass(frozen=True)
class ChangeCursor:
    """The last player change already handled; changes are read in (updated_at, id) order."""

    updated_at: datetime
    player_id: int

    def to_json(self) -> str:
        return json.dumps({"updated_at": self.updated_at.isoformat(), "id": self.player_id})

    @classmethod
    def from_json(cls, value: str | None) -> ChangeCursor | None:
        """None for a sensor that never ran; a cursor edited into something else is an error, not a rescan."""
        if not value:
            return None
        try:
            data = json.loads(value)
            return cls(updated_at=as_utc(datetime.fromisoformat(data["updated_at"])), player_id=int(data["id"]))
        except (ValueError, KeyError, TypeError):
            raise InvalidInput(
                f'sensor cursor {value!r}: expected {{"updated_at": "<ISO time>", "id": <player id>}}; '
                "clear the cursor to rescan every player"
            ) from None


@dataclass(frozen=True)
class PartitionNeed:
    """A (draft year, style) partition touched by a change that still has players without a current image."""

    draft_year_key: str
    style: Style
    missing: int
    with_reference: bool
    changed_through: datetime

    @property
    def run_key(self) -> str:
        """The same change always gives the same key, so Dagster launches its run once."""
        partition = partition_label(self.draft_year_key, self.style)
        return f"{SENSOR_RUN_KEY_PREFIX}:{partition}:{self.changed_through.isoformat()}"


@dataclass(frozen=True)
class PendingPartitions:
    """What one sensor evaluation found: draft years touched, partitions to fill, and the new cursor."""

    draft_year_keys: list[str]
    needs: list[PartitionNeed]
    cursor: ChangeCursor | None


def _after(cursor: ChangeCursor) -> ColumnElement[bool]:
    # Spelled out rather than a row-value comparison so both SQLite and PostgreSQL can use an (updated_at, id) index.
    return or_(
        Player.updated_at > cursor.updated_at,
        and_(Player.updated_at == cursor.updated_at, Player.id > cursor.player_id),
    )


def _through(cursor: ChangeCursor) -> ColumnElement[bool]:
    return or_(
        Player.updated_at < cursor.updated_at,
        and_(Player.updated_at == cursor.updated_at, Player.id <= cursor.player_id),
    )


def latest_change(session: Session, since: ChangeCursor | None) -> ChangeCursor | None:
    """The newest player change after `since`, or None when nothing changed."""
    query = select(Player.updated_at, Player.id).order_by(Player.updated_at.desc(), Player.id.desc()).limit(1)
    if since is not None:
        query = query.where(_after(since))
    row = session.execute(query).first()
    return None if row is None else ChangeCursor(updated_at=row.updated_at, player_id=row.id)


def changed_draft_years(session: Session, since: ChangeCursor | None, through: ChangeCursor) -> dict[str, datetime]:
    """Each draft year with changes in (since, through], and the time of its latest change."""
    query = select(Player.draft_year, func.max(Player.updated_at)).where(_through(through)).group_by(Player.draft_year)
    if since is not None:
        query = query.where(_after(since))
    return {draft_year_key(year): latest for year, latest in session.execute(query)}


def missing_by_draft_year(session: Session, keys: Sequence[str], style: Style) -> dict[str, tuple[int, bool]]:
    """Per draft year: how many players lack a current image in `style` (and have none pending review nor in a
    pending batch job), and whether any of them has a reference."""
    if not keys:
        return {}
    has_current = exists().where(PlayerImageAsset.player_id == Player.id, is_current(style) | is_pending_review(style))
    query = (
        select(Player.draft_year, func.count(), func.count(Player.reference_image_url))
        .where(in_draft_years(Player.draft_year, keys), ~has_current)
        .group_by(Player.draft_year)
    )
    in_progress = batch_jobs.players_in_pending_jobs(session, style)  # a batch job will store their images
    if in_progress:
        query = query.where(Player.id.not_in(sorted(in_progress)))
    return {draft_year_key(year): (missing, refs > 0) for year, missing, refs in session.execute(query)}


def pending_partitions(session: Session, since: ChangeCursor | None, styles: Sequence[Style]) -> PendingPartitions:
    """Partitions that changes after `since` leave with players lacking a portrait; one aggregate query per style."""
    # The upper bound is read first and every later query stops at it, so a row committed meanwhile waits for
    # the next evaluation instead of slipping under the new cursor unseen.
    through = latest_change(session, since)
    if through is None:
        return PendingPartitions(draft_year_keys=[], needs=[], cursor=since)
    changed = changed_draft_years(session, since, through)
    keys = sorted(changed)
    needs = [
        PartitionNeed(key, style, missing, with_reference, changed[key])
        for style in styles
        for key, (missing, with_reference) in missing_by_draft_year(session, keys, style).items()
    ]
    needs.sort(key=lambda need: (need.draft_year_key, styles.index(need.style)))
    return PendingPartitions(draft_year_keys=keys, needs=needs, cursor=through)


def run_request(need: PartitionNeed, lane: Lane = "standard") -> dg.RunRequest:
    """Missing-only, so a run that starts late or twice only fills the gaps still open."""
    config = PortraitRunConfig(missing_only=True, fetch_likeness=need.with_reference)
    if lane != "standard" and not need.with_reference:  # only what differs; likeness runs on the standard lane
        config = PortraitRunConfig(missing_only=True, fetch_likeness=need.with_reference, lane=lane)
    return dg.RunRequest(
        run_key=need.run_key,
        partition_key=portrait_partition_key(need.draft_year_key, need.style),
        run_config=config.run_config(),
        tags={"portrait/launched_by": "new_prospects_sensor"},
    )


@dg.sensor(
    target=player_portraits,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Portraits for new or changed players: one missing-only run per partition that lacks some.",
)
def new_prospects_sensor(
    context: dg.SensorEvaluationContext, database: DatabaseResource, settings: PortraitSettings
) -> dg.SensorResult:
    """Fill portrait gaps as the roster changes, without rescanning players it has already seen."""
    for run_id in fail_runs_of_dead_workers(context.instance):
        context.log.warning(f"run {run_id}: its worker died without ending it; marked failed")
    since = ChangeCursor.from_json(context.cursor)
    with database.session() as session:
        pending = pending_partitions(session, since, settings.automated_styles())
    if pending.cursor is None or pending.cursor == since:
        return dg.SensorResult(skip_reason="no player changed since the last evaluation", cursor=context.cursor)
    known = set(draft_years.get_partition_keys(dynamic_partitions_store=context.instance))
    new_years = [key for key in pending.draft_year_keys if key not in known]
    if pending.needs:
        missing = sum(need.missing for need in pending.needs)
        context.log.info(f"{len(pending.needs)} partitions have {missing} players without a current portrait")
    return dg.SensorResult(
        run_requests=[run_request(need, settings.sensor_lane) for need in pending.needs],
        skip_reason=None if pending.needs else "every changed player already has a current portrait",
        dynamic_partitions_requests=[draft_years.build_add_request(new_years)] if new_years else [],
        cursor=pending.cursor.to_json(),
    )


COLLECT_RUN_KEY_PREFIX = "batch_collect"


def live_partitions(instance: dg.DagsterInstance) -> set[str]:
    """Partitions with an unfinished run: such a run collects its partition's pending batch jobs itself."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED))
    return {run.tags["dagster/partition"] for run in runs if "dagster/partition" in run.tags}


def collect_request(job: BatchJobRecord) -> dg.RunRequest:
    """A batch-lane run of the job's players: they are all in the job (in progress), so it submits nothing and
    collects every pending job of the partition. The job's name is the run key: Dagster launches it once."""
    draft_year_key, style = split_partition_key(job.partition_key)
    config = PortraitRunConfig(missing_only=True, player_ids=batch_jobs.players_of(job), lane="batch")
    return dg.RunRequest(
        run_key=f"{COLLECT_RUN_KEY_PREFIX}:{job.name}",
        partition_key=portrait_partition_key(draft_year_key, style),
        run_config=config.run_config(),
        tags={"portrait/launched_by": "batch_collector_sensor", "portrait/batch_job": job.name},
    )


@dg.sensor(
    target=player_portraits,
    minimum_interval_seconds=600,  # the batch lane's longest poll interval: a job takes minutes to hours
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Collects finished Batch API jobs whose run is gone (it died, or was stopped): one run per job.",
)
def batch_collector_sensor(
    context: dg.SensorEvaluationContext, database: DatabaseResource, gemini: GeminiResource
) -> dg.SensorResult:
    """A batch job is paid for when it ends: if no run waits on it any more, launch the run that stores it."""
    for run_id in fail_runs_of_dead_workers(context.instance):
        context.log.warning(f"run {run_id}: its worker died without ending it; marked failed")
    with database.session() as session:
        pending = [job for job in batch_jobs.pending_jobs(session) if job.state != batch_jobs.CREATING]
        session.expunge_all()
    live = live_partitions(context.instance)
    orphans = [job for job in pending if job.partition_key not in live]
    if not orphans:
        return dg.SensorResult(skip_reason="every pending batch job has a run waiting on it (or there is none)")
    if not gemini.uses_gemini:
        return dg.SensorResult(skip_reason=f"{len(orphans)} batch job(s) without a run, and no GEMINI_API_KEY")
    client = gemini.client()
    finished = []
    for job in orphans:
        try:  # a batches.get is not billed; a job's answers are only read by the run that stores them
            done = poll_batch(client, job.name).done
        except GenerationFailed as exc:
            context.log.warning(f"batch job {job.name}: could not be polled: {exc}")
            continue
        if done:
            finished.append(job)
    return dg.SensorResult(
        run_requests=[collect_request(job) for job in finished],
        skip_reason=None if finished else f"{len(orphans)} batch job(s) without a run are still running at the API",
    )
