"""Claims on (player, style) while a run generates it, so overlapping runs pay once per player.

Each write is one short statement in its own transaction. The claim is a single INSERT ... ON CONFLICT DO UPDATE
that takes the row over only if it has expired (or is already ours): PostgreSQL makes a second claimant wait for
the first one's insert or takeover and then re-checks the condition on the new row, and SQLite runs one writer at
a time, so exactly one run wins on either database. Expiry uses the workers' clocks: hosts sharing a database
must keep them in step (NTP) to well within the TTL.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session

from portrait_pipeline.audit.db import dialect_insert
from portrait_pipeline.audit.models import GenerationLease, utcnow

# Long enough for a renewal to be late on a busy machine; short enough that a dead run's players are free again
# within minutes. Renewed every third of it while the run is alive.
DEFAULT_TTL_S = 120.0


def owner_name(dagster_run_id: str | None) -> str:
    """Who holds a claim, for the operator who finds it: the Dagster run (if any), host and process."""
    run = f"run {dagster_run_id} " if dagster_run_id else ""
    return f"{run}on {socket.gethostname()} pid {os.getpid()} ({uuid.uuid4().hex[:8]})"[:200]


def claim(
    engine: Engine, player_id: int, style: str, owner: str, ttl_s: float, dagster_run_id: str | None = None
) -> str | None:
    """Claim the player's portrait in this style for `owner`; None if claimed, else who holds it."""
    now = utcnow()
    values = dialect_insert(engine)(GenerationLease).values(
        player_id=player_id,
        style=style,
        owner=owner,
        dagster_run_id=dagster_run_id,
        acquired_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )
    statement = values.on_conflict_do_update(
        index_elements=[GenerationLease.player_id, GenerationLease.style],
        set_={
            "owner": values.excluded.owner,
            "dagster_run_id": values.excluded.dagster_run_id,
            "acquired_at": values.excluded.acquired_at,
            "expires_at": values.excluded.expires_at,
        },
        where=(GenerationLease.expires_at < now) | (GenerationLease.owner == owner),
    ).returning(GenerationLease.owner)
    with engine.begin() as connection:
        if connection.execute(statement).first() is not None:
            return None
        holder = connection.scalar(
            select(GenerationLease.owner).where(GenerationLease.player_id == player_id, GenerationLease.style == style)
        )
    return holder or "another run"


def renew(engine: Engine, owner: str, ttl_s: float) -> int:
    """Push back the expiry of every claim `owner` holds; how many it holds."""
    with engine.begin() as connection:
        result = connection.execute(
            update(GenerationLease)
            .where(GenerationLease.owner == owner)
            .values(expires_at=utcnow() + timedelta(seconds=ttl_s))
        )
    return result.rowcount


def release(engine: Engine, player_id: int, style: str, owner: str) -> None:
    """Drop our claim (a claim another run has since taken over stays theirs)."""
    with engine.begin() as connection:
        connection.execute(
            delete(GenerationLease).where(
                GenerationLease.player_id == player_id, GenerationLease.style == style, GenerationLease.owner == owner
            )
        )


def release_claims_of_ended_runs(db: Session, run_has_ended: Callable[[str], bool]) -> int:
    """Drop the claims of Dagster runs that have ended (killed outright, then marked failed or terminated), so the
    next run need not wait out their TTL; how many were dropped."""
    runs = db.scalars(select(GenerationLease.dagster_run_id).where(GenerationLease.dagster_run_id.is_not(None)))
    ended = [run for run in set(runs) if run and run_has_ended(run)]
    if not ended:
        return 0
    return db.connection().execute(delete(GenerationLease).where(GenerationLease.dagster_run_id.in_(ended))).rowcount
