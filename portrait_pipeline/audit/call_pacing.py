"""One rate of Gemini calls for every process that shares the database: the next free start time of each quota.

Runs the daemon launches at once (separate processes) would each keep GEMINI_REQUESTS_PER_MINUTE on their own and
together pass it. Each call instead reserves its start time in the quota's `call_pacing` row: the later of when it
may start and the row's next free time, which moves on by the caller's interval. That is one short upsert per call:
INSERT ... ON CONFLICT DO UPDATE ... RETURNING, as the claims in `leases.py`. PostgreSQL's upsert is atomic (the
update locks the existing row, a concurrent one waits for it and then sees its result; a concurrent first insert
turns into the update: https://www.postgresql.org/docs/current/sql-insert.html, "ON CONFLICT Clause"), and SQLite
runs one writer at a time (the statement writes first, so its read of the row is inside the write lock). Times are
time.time(): hosts sharing a database must keep their clocks in step (NTP), as for the leases.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, case
from sqlalchemy.exc import SQLAlchemyError

from portrait_pipeline.audit.db import describe_error, dialect_insert, where
from portrait_pipeline.audit.models import CallPacing, utcnow
from portrait_pipeline.generation.pacing import SlotStoreUnavailable


@dataclass(frozen=True)
class DatabaseSlotStore:
    """The `SlotStore` of one quota (`pacing.quota_id`, never the key) in the app's database; equal for the same
    engine and quota, so the runs of a process share one pacer over it."""

    engine: Engine = field(repr=False)
    quota: str

    def reserve(self, interval_s: float, not_before: float) -> float:
        """Reserve the next free start time, no earlier than `not_before`; the next one is `interval_s` later."""
        now = utcnow()
        values = dialect_insert(self.engine)(CallPacing).values(
            quota=self.quota, next_at=not_before + interval_s, updated_at=now
        )
        later = case((CallPacing.next_at > not_before, CallPacing.next_at), else_=not_before)
        statement = values.on_conflict_do_update(
            index_elements=[CallPacing.quota], set_={"next_at": later + interval_s, "updated_at": now}
        ).returning(CallPacing.next_at)
        try:
            with self.engine.begin() as connection:
                next_at = connection.execute(statement).scalar_one()
        except SQLAlchemyError as exc:
            raise SlotStoreUnavailable(f"call pacing in {where(self.engine)}: {describe_error(exc)}") from None
        return float(next_at) - interval_s
