"""image snapshot tables (the seed's audit trail)

Revision ID: a1b2c3d4e5f6
Revises: 0001_players
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "a1b2c3d4e5f6"
down_revision: str | None = "0001_players"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "player_image_snapshots",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_key", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("is_current", sa.Boolean(), nullable=False),
        sa.Column("style", sa.String(20), nullable=False),
        sa.Column("cohort", sa.String(40), nullable=False),
        sa.Column("draft_year", sa.Integer()),
        sa.Column("population_size", sa.Integer(), nullable=False),
        sa.Column("success_count", sa.Integer(), nullable=False),
        sa.Column("failure_count", sa.Integer(), nullable=False),
        sa.Column("skipped_count", sa.Integer(), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=False),
        sa.Column("system_prompt_version", sa.String(20), nullable=False),
        sa.Column("image_size", sa.String(8), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("estimated_cost_usd", sa.Numeric(10, 4), nullable=False),
        sa.Column("notes", sa.Text()),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("dagster_run_id", sa.String(64)),
        sa.Column("partition_key", sa.String(100)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("run_key", "version", name="uq_snapshot_run_key_version"),
    )
    op.create_index("ix_player_image_snapshots_run_key", "player_image_snapshots", ["run_key"])
    op.create_index("ix_player_image_snapshots_dagster_run_id", "player_image_snapshots", ["dagster_run_id"])
    op.create_index("ix_snapshot_scope", "player_image_snapshots", ["draft_year", "style", "is_current"])
    op.create_table(
        "player_image_assets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "snapshot_id",
            sa.Integer(),
            sa.ForeignKey("player_image_snapshots.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("player_id", sa.Integer(), sa.ForeignKey("players.id", ondelete="CASCADE"), nullable=False),
        sa.Column("style", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("is_current", sa.Boolean(), nullable=False),
        sa.Column("s3_key", sa.String(500)),
        sa.Column("s3_bucket", sa.String(200)),
        sa.Column("public_url", sa.Text()),
        sa.Column("user_prompt", sa.Text()),
        sa.Column("likeness_description", sa.Text()),
        sa.Column("used_likeness_ref", sa.Boolean(), nullable=False),
        sa.Column("reference_image_url", sa.Text()),
        sa.Column("reference_sha256", sa.String(64)),
        sa.Column("generation_time_sec", sa.Float()),
        sa.Column("error_message", sa.Text()),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("system_prompt_version", sa.String(20), nullable=False),
        sa.Column("content_sha256", sa.String(64)),
        sa.Column("width", sa.Integer()),
        sa.Column("height", sa.Integer()),
        sa.Column("bytes", sa.Integer()),
        sa.Column("prompt_tokens", sa.Integer()),
        sa.Column("output_tokens", sa.Integer()),
        sa.Column("total_tokens", sa.Integer()),
        sa.Column("cost_usd", sa.Numeric(10, 4), nullable=False),
        sa.Column("dagster_run_id", sa.String(64)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("snapshot_id", "player_id", name="uq_asset_snapshot_player"),
    )
    op.create_index("ix_player_image_assets_player_id", "player_image_assets", ["player_id"])
    op.create_index(
        "uq_asset_current_player_style",
        "player_image_assets",
        ["player_id", "style"],
        unique=True,
        sqlite_where=sa.text("is_current"),
        postgresql_where=sa.text("is_current"),
    )


def downgrade() -> None:
    op.drop_table("player_image_assets")
    op.drop_table("player_image_snapshots")
