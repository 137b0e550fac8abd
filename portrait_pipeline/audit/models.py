"""Typed SQLAlchemy models: the roster, and the audit trail of every generation (the seed's schema)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
REVIEW_STATUSES = (PENDING, APPROVED, REJECTED)
DEFAULT_VARIANT = "default"  # the prompt as prompts.py has it; experiments add named variants
SCORED, NOT_SCORED = "scored", "not_scored"  # a quality score, or the reason there is none


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """A moment in UTC, aware: naive values are taken as UTC (SQLite stores them so), aware ones converted."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps that come back aware and in UTC from either database: SQLite hands back naive values,
    PostgreSQL aware ones in the session's time zone. Every read of a timestamp can then compare and print it."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


class Base(DeclarativeBase):
    pass


class Player(Base):
    """The seed's PlayerMaster: one row per person, prospect or pro."""

    __tablename__ = "players"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(120), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    position: Mapped[str | None] = mapped_column(String(40))
    school: Mapped[str | None] = mapped_column(String(200))
    draft_year: Mapped[int | None] = mapped_column(Integer, index=True)
    nba_active: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    reference_image_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"Player(id={self.id}, slug={self.slug!r})"


class PlayerImageSnapshot(Base):
    """One batch run for a (draft year, style) partition: the prompts it used and what it produced."""

    __tablename__ = "player_image_snapshots"
    __table_args__ = (
        UniqueConstraint("run_key", "version", name="uq_snapshot_run_key_version"),
        Index("ix_snapshot_scope", "draft_year", "style", "is_current"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_key: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    is_current: Mapped[bool] = mapped_column(Boolean, default=False)
    style: Mapped[str] = mapped_column(String(20))
    cohort: Mapped[str] = mapped_column(String(40))
    draft_year: Mapped[int | None] = mapped_column(Integer)
    population_size: Mapped[int] = mapped_column(Integer, default=0)
    success_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_count: Mapped[int] = mapped_column(Integer, default=0)
    skipped_count: Mapped[int] = mapped_column(Integer, default=0)
    system_prompt: Mapped[str] = mapped_column(Text)
    system_prompt_version: Mapped[str] = mapped_column(String(20))
    image_size: Mapped[str] = mapped_column(String(8))
    model: Mapped[str] = mapped_column(String(100))
    estimated_cost_usd: Mapped[Decimal] = mapped_column(Numeric(10, 4), default=Decimal("0"))
    notes: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="running")
    dagster_run_id: Mapped[str | None] = mapped_column(String(64), index=True)
    partition_key: Mapped[str | None] = mapped_column(String(100))
    prompt_variant: Mapped[str] = mapped_column(String(40), default=DEFAULT_VARIANT, server_default=DEFAULT_VARIANT)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    assets: Mapped[list[PlayerImageAsset]] = relationship(back_populates="snapshot")


class PlayerImageAsset(Base):
    """One player's generation inside a snapshot: the prompt, the likeness used, and the stored image."""

    __tablename__ = "player_image_assets"
    __table_args__ = (
        UniqueConstraint("snapshot_id", "player_id", name="uq_asset_snapshot_player"),
        # At most one current image per player and style, enforced by the database itself.
        Index(
            "uq_asset_current_player_style",
            "player_id",
            "style",
            unique=True,
            sqlite_where=text("is_current"),
            postgresql_where=text("is_current"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("player_image_snapshots.id", ondelete="CASCADE"))
    player_id: Mapped[int] = mapped_column(ForeignKey("players.id", ondelete="CASCADE"), index=True)
    style: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    is_current: Mapped[bool] = mapped_column(Boolean, default=False)
    s3_key: Mapped[str | None] = mapped_column(String(500))
    s3_bucket: Mapped[str | None] = mapped_column(String(200))
    public_url: Mapped[str | None] = mapped_column(Text)
    user_prompt: Mapped[str | None] = mapped_column(Text)
    likeness_description: Mapped[str | None] = mapped_column(Text)
    used_likeness_ref: Mapped[bool] = mapped_column(Boolean, default=False)
    reference_image_url: Mapped[str | None] = mapped_column(Text)
    reference_sha256: Mapped[str | None] = mapped_column(String(64))
    generation_time_sec: Mapped[float | None] = mapped_column(Float)
    error_message: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(100))
    system_prompt_version: Mapped[str] = mapped_column(String(20))
    prompt_variant: Mapped[str] = mapped_column(String(40), default=DEFAULT_VARIANT, server_default=DEFAULT_VARIANT)
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    bytes: Mapped[int | None] = mapped_column(Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(10, 4), default=Decimal("0"))
    dagster_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The review desk: a new image waits as `pending` (PORTRAIT_REQUIRE_REVIEW) until a person approves or rejects
    # it; without review it is `approved` on arrival. `guidance` is the reviewer's correction for the next prompt.
    review_status: Mapped[str] = mapped_column(String(20), default=APPROVED, server_default=APPROVED)
    reviewed_by: Mapped[str | None] = mapped_column(String(200))
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    review_reason: Mapped[str | None] = mapped_column(Text)
    guidance: Mapped[str | None] = mapped_column(Text)
    replaces_asset_id: Mapped[int | None] = mapped_column(
        ForeignKey("player_image_assets.id", ondelete="SET NULL", name="fk_asset_replaces")
    )

    snapshot: Mapped[PlayerImageSnapshot] = relationship(back_populates="assets")
    player: Mapped[Player] = relationship()


class PlayerLikeness(Base):
    """A neutral description of a reference photo, kept per (player, reference content)."""

    __tablename__ = "player_likeness"
    __table_args__ = (UniqueConstraint("player_id", "reference_sha256", name="uq_likeness_player_reference"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    player_id: Mapped[int] = mapped_column(ForeignKey("players.id", ondelete="CASCADE"), index=True)
    reference_url: Mapped[str] = mapped_column(Text)
    reference_sha256: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(100))
    prompt_version: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class GenerationLease(Base):
    """A run's claim on one player's portrait in one style while it generates it: overlapping runs (sensor,
    schedule, a person) skip a claimed player instead of paying for it twice. The primary key makes the claim
    unique; `expires_at` frees the claims of an owner that died (its live runs renew theirs)."""

    __tablename__ = "generation_leases"

    player_id: Mapped[int] = mapped_column(ForeignKey("players.id", ondelete="CASCADE"), primary_key=True)
    style: Mapped[str] = mapped_column(String(20), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    dagster_run_id: Mapped[str | None] = mapped_column(String(64))  # a run Dagster knows has ended frees its claims
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class BatchJobRecord(Base):
    """A Batch API job of the batch lane, committed before the run waits on it: a rerun, a redeploy or a second
    run finds it here and collects it instead of paying for its players again. `collected_at` is None while its
    results have not been stored (its players count as in progress)."""

    __tablename__ = "batch_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)  # "batches/..."
    partition_key: Mapped[str] = mapped_column(String(100), index=True)
    style: Mapped[str] = mapped_column(String(20))
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("player_image_snapshots.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(100))
    image_size: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(40))  # the API's JOB_STATE_*
    player_ids: Mapped[str] = mapped_column(Text)  # JSON list of the players its requests cover
    request_count: Mapped[int] = mapped_column(Integer)
    input_file: Mapped[str | None] = mapped_column(String(200))  # "files/..." for a JSONL job
    dagster_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    collected_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The run storing its answers right now, until when: two runs never store the same job at once.
    collector: Mapped[str | None] = mapped_column(String(200))
    collector_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class CallPacing(Base):
    """The next free start time (time.time()) for Gemini calls of one quota, shared by every process: runs the
    daemon launches at once take their start times from this row, so together they keep one rate. `quota` is a
    digest that tells quotas apart (see generation/pacing.py), never a key."""

    __tablename__ = "call_pacing"

    quota: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class ImageQualityScore(Base):
    """A judge model's scoring of one stored image against the rubric (status `scored`), or why it was not scored
    (status `not_scored`, `reason`: offline renderer, judge error, safety block): never a made-up score.
    `criteria` is a JSON list of {"name", "passed", "reason"}; `passed` is the score against the threshold then."""

    __tablename__ = "image_quality_scores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("player_image_assets.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20))
    score: Mapped[int | None] = mapped_column(Integer)  # 0-100
    passed: Mapped[bool | None] = mapped_column(Boolean)
    criteria: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    judge_model: Mapped[str | None] = mapped_column(String(100))
    rubric_version: Mapped[str] = mapped_column(String(20))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(12, 6), default=Decimal("0"), server_default="0")
    dagster_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PromptExperiment(Base):
    """A prompt experiment: the same sample of players generated under each named variant (JSON lists), and the
    last report (JSON) computed from the audit rows."""

    __tablename__ = "prompt_experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    draft_year: Mapped[int | None] = mapped_column(Integer)
    style: Mapped[str] = mapped_column(String(20))
    variants: Mapped[str] = mapped_column(Text)
    player_ids: Mapped[str] = mapped_column(Text)
    lane: Mapped[str] = mapped_column(String(20))
    report: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
