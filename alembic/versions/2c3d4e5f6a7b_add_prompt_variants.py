"""prompt variants on snapshots and images; prompt_experiments: one experiment's sample, variants and report

Revision ID: 2c3d4e5f6a7b
Revises: 1b2c3d4e5f6a
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "2c3d4e5f6a7b"
down_revision: str | None = "1b2c3d4e5f6a"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("player_image_snapshots", "player_image_assets"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("prompt_variant", sa.String(40), nullable=False, server_default="default"))
    op.create_table(
        "prompt_experiments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("draft_year", sa.Integer(), nullable=True),
        sa.Column("style", sa.String(20), nullable=False),
        sa.Column("variants", sa.Text(), nullable=False),
        sa.Column("player_ids", sa.Text(), nullable=False),
        sa.Column("lane", sa.String(20), nullable=False),
        sa.Column("report", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("prompt_experiments")
    for table in ("player_image_assets", "player_image_snapshots"):
        op.execute(f"ALTER TABLE {table} DROP COLUMN prompt_variant")
