"""The batch lane's Batch API jobs in the audit database: written before a run waits, read by every later run."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from portrait_pipeline.audit.models import BatchJobRecord, PlayerImageAsset, utcnow

CREATING = "CREATING"  # players committed, create request not (yet) answered


def reserve_job(
    db: Session,
    *,
    partition_key: str,
    style: str,
    snapshot_id: int,
    model: str,
    image_size: str,
    player_ids: Sequence[int | str],
    dagster_run_id: str | None,
) -> BatchJobRecord:
    """A job's players (ids, or its requests' keys: `request_key`), committed before its create request: from here
    on no run submits them again."""
    job = BatchJobRecord(
        name=f"(creating {uuid.uuid4().hex})",
        partition_key=partition_key,
        style=style,
        snapshot_id=snapshot_id,
        model=model,
        image_size=image_size,
        state=CREATING,
        player_ids=json.dumps(list(player_ids)),
        request_count=len(player_ids),
        dagster_run_id=dagster_run_id,
    )
    db.add(job)
    db.commit()
    return job


def display_name(job_id: int) -> str:
    """The job's display name at the API: the row id in it lets a later run find a job whose name was never saved."""
    return f"portrait-pipeline batch_jobs {job_id}"


def confirm_job(db: Session, job_id: int, name: str, input_file: str | None) -> None:
    """The API's name for the reserved job, committed as soon as the create answered."""
    job = db.get_one(BatchJobRecord, job_id)
    job.name, job.input_file, job.state, job.updated_at = name, input_file, "JOB_STATE_PENDING", utcnow()
    db.commit()


def drop_job(db: Session, job_id: int) -> None:
    db.delete(db.get_one(BatchJobRecord, job_id))
    db.commit()


def stale_creating(db: Session, partition_key: str, grace_s: float) -> list[BatchJobRecord]:
    cutoff = utcnow() - timedelta(seconds=grace_s)
    query = select(BatchJobRecord).where(
        BatchJobRecord.partition_key == partition_key,
        BatchJobRecord.state == CREATING,
        BatchJobRecord.updated_at <= cutoff,
    )
    return list(db.scalars(query))


def request_key(player_id: int, likeness_sha256: str | None = None) -> str:
    """A request's key in its job: the player's id, and the SHA-256 of the reference photo whose description its
    prompt carries (so the answer is recorded with that description, whatever was described since)."""
    return str(player_id) if likeness_sha256 is None else f"{player_id}:{likeness_sha256}"


def player_of(key: str) -> int:
    return int(key.partition(":")[0])


def likeness_of(key: str) -> str | None:
    return key.partition(":")[2] or None


def keys_of(job: BatchJobRecord) -> list[str]:
    """The job's request keys (`player_ids` holds them as JSON; rows of older runs hold bare player ids)."""
    return [str(key) for key in json.loads(job.player_ids)]


def players_of(job: BatchJobRecord) -> list[int]:
    return [player_of(key) for key in keys_of(job)]


def pending_jobs(db: Session, partition_key: str | None = None) -> list[BatchJobRecord]:
    """Jobs whose results have not been stored yet (oldest first): their players are in progress."""
    query = select(BatchJobRecord).where(BatchJobRecord.collected_at.is_(None)).order_by(BatchJobRecord.id)
    if partition_key is not None:
        query = query.where(BatchJobRecord.partition_key == partition_key)
    return list(db.scalars(query))


def pending_jobs_of_snapshot(db: Session, snapshot_id: int) -> list[BatchJobRecord]:
    query = select(BatchJobRecord).where(
        BatchJobRecord.snapshot_id == snapshot_id, BatchJobRecord.collected_at.is_(None)
    )
    return list(db.scalars(query))


def recent_jobs(db: Session, limit: int = 50) -> list[BatchJobRecord]:
    """Pending jobs and the latest collected ones, newest first (`batch list`)."""
    return list(db.scalars(select(BatchJobRecord).order_by(BatchJobRecord.id.desc()).limit(limit)))


def job_named(db: Session, name: str) -> BatchJobRecord | None:
    return db.scalar(select(BatchJobRecord).where(BatchJobRecord.name == name))


def players_in_pending_jobs(db: Session, style: str, player_ids: Sequence[int] | None = None) -> set[int]:
    """Players (of `player_ids`, or all) covered by a job of this style whose results are not stored yet."""
    covered: set[int] = set()
    for job in pending_jobs(db):
        if job.style == style:
            covered.update(players_of(job))
    return covered if player_ids is None else covered.intersection(player_ids)


def players_recorded(db: Session, snapshot_id: int) -> set[int]:
    """Players that already have a row in the snapshot: a collect that died half-way does not store them twice."""
    query = select(PlayerImageAsset.player_id).where(PlayerImageAsset.snapshot_id == snapshot_id)
    return set(db.scalars(query))


def statuses_recorded(db: Session, snapshot_id: int) -> set[str]:
    query = select(PlayerImageAsset.status).where(PlayerImageAsset.snapshot_id == snapshot_id).distinct()
    return set(db.scalars(query))


def set_state(db: Session, job_id: int, state: str, *, collected: bool = False) -> None:
    job = db.get_one(BatchJobRecord, job_id)
    job.state = state
    job.updated_at = utcnow()
    if collected:
        job.collected_at = utcnow()
    db.commit()


def release_collecting(engine: Engine, job_id: int, owner: str) -> None:
    """Give up the hold on a job whose answers were not all stored (the run was stopped): the next run takes it at
    once instead of waiting for the hold to run out."""
    statement = (
        update(BatchJobRecord)
        .where(BatchJobRecord.id == job_id, BatchJobRecord.collector == owner)
        .values(collector=None, collector_expires_at=None)
    )
    with engine.begin() as connection:
        connection.execute(statement)


def take_for_collecting(engine: Engine, job_id: int, owner: str, ttl_s: float) -> bool:
    """Whether `owner` may store the job's answers now: one atomic UPDATE, so of two runs only one wins; a
    collector that died frees the job when its time runs out (a live one calls this again to extend it)."""
    now = utcnow()
    free = BatchJobRecord.collector.is_(None) | (BatchJobRecord.collector == owner)
    statement = (
        update(BatchJobRecord)
        .where(BatchJobRecord.id == job_id, BatchJobRecord.collected_at.is_(None))
        .where(free | (BatchJobRecord.collector_expires_at < now))
        .values(collector=owner, collector_expires_at=now + timedelta(seconds=ttl_s))
    )
    with engine.begin() as connection:
        return connection.execute(statement).rowcount == 1
